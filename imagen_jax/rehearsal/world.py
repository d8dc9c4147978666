"""What a user downloads before a pod run, made locally with random content, in the real
formats: a COCO captions dataset (`captions_<split>2014.json` + `<split>2014/*.jpg`), a Hugging
Face T5 encoder directory (transformers' `save_pretrained`: config.json + model.safetensors)
with a SentencePiece tokenizer trained on the captions (`spiece.model`), and pytorch-fid's
Inception weights file (a `.pth` state dict with pytorch-fid's key names).

Needs transformers and torch (the test requirements), imported lazily.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from imagen_jax.data import shapes

_NEEDS = (
    "the rehearsal writes a Hugging Face T5 and pytorch-fid weights with transformers and "
    "torch: pip install -r requirements-test.txt"
)

# A T5 v1.1-style encoder small enough for CPU; d_model = the tiny stage configs' text_dim.
T5_CONFIG = dict(
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
)


def write_coco(
    root: str | pathlib.Path,
    split: str,
    num_images: int,
    *,
    size: int = 72,
    captions_per_image: int = 2,
    seed: int = 0,
    corrupt: int = 0,
    missing: int = 0,
) -> tuple[str, str]:
  """COCO 2014-style captions of shapes-world renders; returns (annotations, image dir).

  `corrupt` images are truncated JPEGs and `missing` are listed but absent (the kinds of bad
  record a real download has), both among the first images.
  """
  root = pathlib.Path(root)
  image_dir = root / f"{split}2014"
  image_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng([seed, len(split)])
  images, annotations = [], []
  for i in range(num_images):
    scene = shapes.sample_scene(rng, "all", max_objects=1)
    image_id = 100_000 * (seed + 1) + i
    name = f"COCO_{split}2014_{image_id:012d}.jpg"
    images.append({"id": image_id, "file_name": name, "height": size, "width": size})
    for j in range(captions_per_image):
      text = shapes.caption(scene) if j == 0 else f"a picture of {shapes.caption(scene)}"
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": text})
    if i < missing:
      continue
    path = image_dir / name
    Image.fromarray(shapes.render(scene, size)).save(path, quality=92)
    if missing <= i < missing + corrupt:
      path.write_bytes(path.read_bytes()[:200])  # a truncated download
  ann = root / "annotations" / f"captions_{split}2014.json"
  ann.parent.mkdir(parents=True, exist_ok=True)
  ann.write_text(
      json.dumps(
          {"info": {"description": "rehearsal"}, "images": images, "annotations": annotations}
      )
  )
  return str(ann), str(image_dir)


def captions_of(annotations: str | pathlib.Path) -> list[str]:
  return [a["caption"] for a in json.loads(pathlib.Path(annotations).read_text())["annotations"]]


def write_t5(
    directory: str | pathlib.Path, captions: list[str], *, vocab_size: int = 128, seed: int = 0
) -> str:
  """A random-weight T5 encoder saved by transformers, with a SentencePiece tokenizer trained
  on `captions` (T5's ids: pad 0, </s> 1, unk 2)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(_NEEDS) from e
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions),
      model_prefix=str(directory / "spiece"),
      vocab_size=vocab_size,
      model_type="unigram",
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      hard_vocab_limit=False,
      minloglevel=2,
  )
  (directory / "spiece.vocab").unlink(missing_ok=True)
  torch.manual_seed(seed)
  model = transformers.T5EncoderModel(
      transformers.T5Config(vocab_size=vocab_size, **T5_CONFIG)
  ).eval()
  model.save_pretrained(str(directory), safe_serialization=True)
  return str(directory)


def write_inception_pth(path: str | pathlib.Path, seed: int = 0) -> str:
  """Random FID Inception weights as pytorch-fid's `.pth` state dict (its key names and
  OIHW kernels), read back by the project's own loader in the FID phase."""
  import jax  # pylint: disable=import-outside-toplevel

  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(_NEEDS) from e
  from imagen_jax.evaluation import inception  # pylint: disable=import-outside-toplevel

  leaf_names = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
  state = {}
  for key_path, value in jax.tree_util.tree_flatten_with_path(inception.init_params(seed))[0]:
    *modules, leaf = [k.key for k in key_path]
    if leaf == "kernel":
      name, value = "weight", np.asarray(value).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    else:
      name = leaf_names[leaf]
    state[".".join(modules + [name])] = torch.from_numpy(np.ascontiguousarray(value))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save(state, path)
  return str(path)
