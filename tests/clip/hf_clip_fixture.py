"""A random-weight Hugging Face CLIPModel directory for tests (the construction of
tests/clip/clip_test.py's `hf_dir`, with the text length and seed as arguments).

Load it with `importlib.util.spec_from_file_location` (tests are not a package); needs
torch and transformers (the caller skips without them):

  model, path = hf_clip_fixture.write_clip_dir(tmp_path / "clip", max_len=128)
"""

import pathlib

BOS, EOS, PAD = 96, 97, 0
IMAGE_SIZE = 30
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not the OpenAI constants: read from disk


def hf_model(max_len: int = 16, seed: int = 0, noise: float = 0.05, eos_token_id: int = EOS):
  """transformers.CLIPModel (eval) with odd sizes and every parameter perturbed."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  cfg = transformers.CLIPConfig(
      text_config=dict(
          vocab_size=99,
          hidden_size=40,
          num_attention_heads=5,
          num_hidden_layers=2,
          intermediate_size=72,
          max_position_embeddings=max_len,
          bos_token_id=BOS,
          eos_token_id=eos_token_id,
          pad_token_id=PAD,
          hidden_act="gelu",
      ),
      vision_config=dict(
          hidden_size=36,
          num_attention_heads=3,
          num_hidden_layers=2,
          intermediate_size=60,
          image_size=IMAGE_SIZE,
          patch_size=6,
          hidden_act="quick_gelu",
      ),
      projection_dim=24,
  )
  torch.manual_seed(seed)
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * noise)
  return model


def tokenizer():
  """A letter-level CLIP BPE tokenizer (a few merges); other characters are unknown."""
  import transformers  # pylint: disable=import-outside-toplevel

  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab = {c: i + 1 for i, c in enumerate(letters)}
  vocab.update({c + "</w>": i + 27 for i, c in enumerate(letters)})
  merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>")]
  for i, (a, b) in enumerate(merges):
    vocab[a + b] = 53 + i
  vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
  return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def write_clip_dir(path, max_len: int = 16, seed: int = 0):
  """(transformers model, `path` holding its save_pretrained + tokenizer + preprocessor)."""
  import transformers  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  model = hf_model(max_len=max_len, seed=seed)
  model.save_pretrained(path)
  tokenizer().save_pretrained(path)
  transformers.CLIPImageProcessorPil(
      size={"shortest_edge": IMAGE_SIZE},
      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
      image_mean=list(MEAN),
      image_std=list(STD),
  ).save_pretrained(path)
  return model, path
