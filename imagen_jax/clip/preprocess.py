"""CLIP image preprocessing in jax.numpy: resize, centre crop, normalise (jittable and
differentiable, so CLIP guidance can take gradients through it).

It follows transformers' ``CLIPImageProcessor``: bicubic resize of the shortest side to
``size["shortest_edge"]`` (the long side to ``int(size * long / short)``), a centre crop to
``crop_size`` (top/left offsets rounded down), rescale to [0, 1], normalise with
``image_mean``/``image_std``. Settings come from ``preprocessor_config.json`` when the
directory has one, else the OpenAI constants and ``image_size``.

Differences from the reference (PIL/torchvision on uint8 images), all small:
* resizing uses ``jax.image.resize(method="bicubic", antialias=True)``: the same Keys cubic
  (a = -0.5) with the kernel widened by the downscale factor as PIL, but computed in float
  with no rounding to uint8 after the resize (PIL rounds, up to 0.5/255 per pixel), and
  clipped to [0, 1] rather than to [0, 255] after rounding;
* float inputs in [-1, 1] are mapped to [0, 1] by ``(x + 1) / 2`` and never quantised.
An image already at the crop size is passed through exactly (no resampling). The measured
pixel difference on a random image is in docs/clip.md.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

PREPROCESSOR_FILE = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """``shortest_edge`` (aspect kept) or ``resize_to`` (exact (h, w)) - one is set - then a
  centre crop to ``crop_size`` (h, w) and normalisation."""

  crop_size: tuple[int, int]
  shortest_edge: int | None = None
  resize_to: tuple[int, int] | None = None
  mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  std: tuple[float, float, float] = OPENAI_CLIP_STD

  @classmethod
  def default(cls, image_size: int) -> "PreprocessConfig":
    return cls(crop_size=(image_size, image_size), shortest_edge=image_size)

  @classmethod
  def from_directory(cls, directory: pathlib.Path, image_size: int) -> "PreprocessConfig":
    """From ``preprocessor_config.json`` if present, else `default`. The crop must give the
    model's ``image_size``."""
    path = pathlib.Path(directory) / PREPROCESSOR_FILE
    if not path.is_file():
      return cls.default(image_size)
    try:
      cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: cannot read the preprocessor config: {e}") from e
    crop = _hw(cfg.get("crop_size", image_size), path, "crop_size")
    if not cfg.get("do_center_crop", True):
      crop = (image_size, image_size)
    if crop != (image_size, image_size):
      raise ValueError(
          f"{path}: crop_size {list(crop)} does not give the model's image_size {image_size}"
      )
    size = cfg.get("size", {"shortest_edge": image_size})
    kw = {}
    if isinstance(size, dict) and "shortest_edge" in size:
      kw["shortest_edge"] = int(size["shortest_edge"])
    elif isinstance(size, int):
      kw["shortest_edge"] = size
    else:
      kw["resize_to"] = _hw(size, path, "size")
    mean = tuple(float(m) for m in cfg.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(float(s) for s in cfg.get("image_std", OPENAI_CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
      raise ValueError(f"{path}: image_mean/image_std must have 3 entries, got {mean}, {std}")
    return cls(crop_size=crop, mean=mean, std=std, **kw)

  def resized_shape(self, height: int, width: int) -> tuple[int, int]:
    """The (h, w) after the resize step, as transformers computes it."""
    if self.resize_to is not None:
      return self.resize_to
    s = self.shortest_edge
    if width <= height:
      return int(s * height / width), s
    return s, int(s * width / height)


def _hw(size, path, name) -> tuple[int, int]:
  if isinstance(size, int):
    return (size, size)
  if isinstance(size, dict) and "height" in size and "width" in size:
    return (int(size["height"]), int(size["width"]))
  if isinstance(size, (list, tuple)) and len(size) == 2:
    return (int(size[0]), int(size[1]))
  raise ValueError(f"{path}: cannot read {name}={size!r} (expected an int or height/width)")


def to_unit_range(images) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float in [-1, 1] (the project's convention) ->
  [0, 1]."""
  if isinstance(images, np.ndarray) and images.dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255.0
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
  return (images.astype(jnp.float32) + 1.0) / 2.0


def preprocess(images, config: PreprocessConfig) -> jax.Array:
  """Images uint8 [B, H, W, 3] or float [-1, 1] -> normalised pixel_values float32
  [B, crop_h, crop_w, 3]. Pure and differentiable (for float input); shapes are static."""
  x = to_unit_range(images)
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(x.shape)}")
  b, h, w, c = x.shape
  nh, nw = config.resized_shape(h, w)
  if (nh, nw) != (h, w):
    x = jax.image.resize(x, (b, nh, nw, c), method="bicubic", antialias=True)
    x = jnp.clip(x, 0.0, 1.0)
  ch, cw = config.crop_size
  if nh < ch or nw < cw:
    raise ValueError(
        f"images of shape {h}x{w} resize to {nh}x{nw}, smaller than the crop {ch}x{cw}"
    )
  top, left = (nh - ch) // 2, (nw - cw) // 2
  x = x[:, top : top + ch, left : left + cw, :]
  mean = jnp.asarray(config.mean, jnp.float32)
  std = jnp.asarray(config.std, jnp.float32)
  return (x - mean) / std
