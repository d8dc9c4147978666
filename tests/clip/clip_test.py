"""imagen_jax.clip against transformers' PyTorch CLIPModel on random weights (odd sizes).

Every tower parameter is perturbed away from transformers' init (biases and layer norms
nonzero), so the check covers all of them. float32 on CPU: max |ours - transformers| is
about 1e-6 (docs/clip.md); the bound is 1e-4.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.clip import ClipConfig
from imagen_jax.clip import load_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-4
BOS, EOS, PAD = 96, 97, 0  # id 98 is an ordinary token above EOS
MAX_LEN = 16
IMAGE_SIZE = 30
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not the OpenAI constants: read from disk


_SPEC = importlib.util.spec_from_file_location(
    "hf_clip_fixture", pathlib.Path(__file__).with_name("hf_clip_fixture.py")
)
hf_clip_fixture = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hf_clip_fixture)


def _hf_model(eos_token_id=EOS, seed=0):
  return hf_clip_fixture.hf_model(max_len=MAX_LEN, seed=seed, eos_token_id=eos_token_id)


def _tokenizer():
  letters = "abcdefghijklmnopqrstuvwxyz"
  vocab = {c: i + 1 for i, c in enumerate(letters)}
  vocab.update({c + "</w>": i + 27 for i, c in enumerate(letters)})
  merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>")]
  for i, (a, b) in enumerate(merges):
    vocab[a + b] = 53 + i
  vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
  return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """(transformers model, its save_pretrained directory with tokenizer and preprocessor)."""
  path = tmp_path_factory.mktemp("clip")
  model = _hf_model()
  model.save_pretrained(path)
  _tokenizer().save_pretrained(path)
  transformers.CLIPImageProcessorPil(
      size={"shortest_edge": IMAGE_SIZE},
      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
      image_mean=list(MEAN),
      image_std=list(STD),
  ).save_pretrained(path)
  return model, path


@pytest.fixture(scope="module")
def clip(hf_dir):
  return load_clip(hf_dir[1])


def _ref_image(model, px):
  with torch.no_grad():
    out = model.get_image_features(pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2)))
  return out.pooler_output.numpy()


def _ref_text(model, ids, mask):
  with torch.no_grad():
    out = model.get_text_features(
        input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
        attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
    )
  return out.pooler_output.numpy()


def _ids(rng, lengths, eos=EOS, pad=PAD):
  ids = rng.integers(1, BOS, (len(lengths), MAX_LEN))
  mask = np.zeros(ids.shape, bool)
  for row, n in enumerate(lengths):
    ids[row, 0], ids[row, n - 1], ids[row, n:] = BOS, eos, pad
    mask[row, :n] = True
  return ids, mask


def _normalized(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_image_and_text_features_match_transformers(hf_dir, clip):
  model, _ = hf_dir
  rng = np.random.default_rng(0)
  px = rng.standard_normal((3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  np.testing.assert_allclose(clip.image_features(px), _ref_image(model, px), rtol=0, atol=TOL)
  ids, mask = _ids(rng, [4, 9, MAX_LEN])
  ids[0, 6] = EOS  # a second EOS after padding starts: pooling takes the first one
  ids[1, 9:] = EOS  # padding with the EOS id (CLIP's own tokenizer pads with it)
  ids[2, 5] = 98  # above EOS: argmax pooling would land here
  np.testing.assert_allclose(
      clip.text_features(ids, mask), _ref_text(model, ids, mask), rtol=0, atol=TOL
  )
  # Shorter sequences use the first positions; logit_scale and the config.
  np.testing.assert_allclose(
      clip.text_features(ids[:, :9], mask[:, :9]),
      _ref_text(model, ids[:, :9], mask[:, :9]),
      rtol=0,
      atol=TOL,
  )
  assert clip.logit_scale == pytest.approx(model.logit_scale.detach().item(), abs=1e-6)
  assert (clip.projection_dim, clip.image_size) == (24, IMAGE_SIZE)
  assert clip.config.text_hidden_act == "gelu" and clip.config.vision_heads == 3
  assert clip.text_features(ids, mask).shape == (3, 24)


def test_legacy_eos_token_id_2_pools_at_argmax(tmp_path):
  model = _hf_model(eos_token_id=2, seed=1)
  model.save_pretrained(tmp_path)
  clip = load_clip(tmp_path)
  assert clip.config.legacy_eos_pooling
  rng = np.random.default_rng(1)
  ids, mask = _ids(rng, [5, 12, MAX_LEN], eos=98)
  ids[0, 1] = 2  # the first id equal to eos_token_id is not where argmax pools
  ids[1, 0] = ids[1, 11] = 3  # no BOS/EOS: the maximum is the largest random id
  ids[2, 3] = 98  # ties go to the first maximum
  np.testing.assert_allclose(
      clip.text_features(ids, mask), _ref_text(model, ids, mask), rtol=0, atol=TOL
  )


@pytest.mark.parametrize("layout", ["pytorch_model.bin", "sharded_safetensors"])
def test_other_weight_layouts(hf_dir, tmp_path, layout):
  model, src = hf_dir
  (tmp_path / "config.json").write_text((src / "config.json").read_text())
  if layout == "pytorch_model.bin":
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  else:
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
  clip = load_clip(tmp_path)
  px = np.random.default_rng(2).standard_normal((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  np.testing.assert_allclose(clip.image_features(px), _ref_image(model, px), rtol=0, atol=TOL)


class _Payload:
  """Unpickling this would create a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_with_objects_is_refused_unloaded(hf_dir, tmp_path):
  (tmp_path / "config.json").write_text((hf_dir[1] / "config.json").read_text())
  marker = tmp_path / "unpickled"
  torch.save(
      {"logit_scale": torch.zeros(()), "x": _Payload(str(marker))}, tmp_path / "pytorch_model.bin"
  )
  with pytest.raises(ValueError, match="weights_only=True"):
    load_clip(tmp_path)
  assert not marker.exists()


def test_directory_errors(hf_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no such CLIP directory"):
    load_clip(tmp_path / "absent")
  t5 = transformers.T5EncoderModel(
      transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
  )
  t5.save_pretrained(tmp_path / "t5")
  with pytest.raises(ValueError, match=r"model_type 't5'.*CLIPModel directory"):
    load_clip(tmp_path / "t5")
  vision = transformers.CLIPVisionModel(hf_dir[0].config.vision_config)
  vision.save_pretrained(tmp_path / "vision")
  with pytest.raises(ValueError, match=r"CLIPVisionModel directory.*lacks the text tower"):
    load_clip(tmp_path / "vision")
  workdir = tmp_path / "workdir"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"seed": 0}))
  # A project workdir goes to the noise-aware CLIP's reader (tests/clip/noisy_clip_test.py).
  with pytest.raises(FileNotFoundError, match="workdir' has no finished checkpoint"):
    load_clip(workdir)
  with pytest.raises(ValueError, match="hidden_act='silu'"):
    ClipConfig.from_hf_dict({"model_type": "clip", "text_config": {"hidden_act": "silu"}})


def test_missing_tensors_are_named(hf_dir, tmp_path):
  model, src = hf_dir
  (tmp_path / "config.json").write_text((src / "config.json").read_text())
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  del state["text_projection.weight"], state["vision_model.encoder.layers.1.mlp.fc2.bias"]
  safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"lack 2 .*'text_projection.weight'.*fc2.bias"):
    load_clip(tmp_path)


def test_encode_texts_matches_transformers_tokenization(hf_dir, clip):
  model, path = hf_dir
  texts = ["the cat", "A cat, the  CAT!", ""]
  tok = transformers.AutoTokenizer.from_pretrained(path)
  ref = tok(texts, padding="max_length", max_length=MAX_LEN, return_tensors="np")
  ids, mask = clip.tokenize(texts)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  want = _normalized(_ref_text(model, ref["input_ids"], ref["attention_mask"]))
  np.testing.assert_allclose(clip.encode_texts(texts), want, rtol=0, atol=TOL)
  with pytest.raises(ValueError, match=r"caption 1 \('the cat the cat.*longer than the encoder"):
    clip.encode_texts(["ok", "the cat " * 10])


def test_encode_images(hf_dir, clip):
  model, path = hf_dir
  rng = np.random.default_rng(3)
  img = rng.integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  px = ((img / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32)
  want = _normalized(_ref_image(model, px))
  np.testing.assert_allclose(clip.encode_images(img), want, rtol=0, atol=TOL)
  # Float images in [-1, 1] are the same pixels (eager: no resize at this size).
  np.testing.assert_allclose(
      clip.preprocess_fn(img.astype(np.float32) / 127.5 - 1.0), px, rtol=0, atol=1e-5
  )
  # A larger, non-square image: shortest side resized, centre crop, vs transformers' PIL
  # backend (which rounds to uint8 after resizing): measured 1.25/255 at most.
  big = rng.integers(0, 256, (1, 47, 61, 3), dtype=np.uint8)
  processor = transformers.AutoImageProcessor.from_pretrained(path, backend="pil")
  ref_px = processor(images=list(big), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  ours_px = np.asarray(jax.jit(clip.preprocess_fn)(big))
  assert ours_px.shape == ref_px.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert np.abs((ours_px - ref_px) * np.asarray(STD)).max() < 2 / 255
  cos = np.sum(_normalized(clip.image_features(ours_px)) * _normalized(_ref_image(model, ref_px)))
  assert cos > 0.999

  # Pure functions: gradients w.r.t. pixels for guidance.
  text = clip.encode_texts(["the cat"])

  def score(x):
    return jnp.sum(clip.encode_images_fn(clip.params, x) * text)

  grad = jax.jit(jax.grad(score))(jnp.asarray(big, jnp.float32) / 127.5 - 1.0)
  assert grad.shape == big.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 0
