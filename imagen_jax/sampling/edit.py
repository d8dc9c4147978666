"""Image editing in the cascade: inpainting (RePaint) and SDEdit of the base stage.

`Edit(image, mask=None, strength=None, resample=1)` conditions the base stage (stage 0) of
`CascadeSampler.sample(..., edit=)` on an image; the SR stages then upsample the edited
base as usual. `diffusion.sample` (samplers.py, inpaint.py) does the work:

* inpainting, `mask` given: RePaint (Lugmayr et al. 2022). `mask` is True where a pixel of
  `image` is known and kept; those pixels come back exactly (to the uint8 step), the others
  are sampled to fit them. `resample` R >= 1 repeats every step R times with a jump back,
  which harmonises the sampled pixels with the kept ones (R times the network evaluations).
* SDEdit, `strength` s in (0, 1]: the image noised to time s, then sampled from there
  (Meng et al. 2022). Small s stays close to the image; s = 1 starts from almost pure noise
  (the image weighs alpha_1 ~ 5e-5 there on the default schedules), which is nearly, but
  not bitwise, ordinary sampling.
* both: the sampled pixels start from the noised image instead of pure noise.

Images are uint8 [H, W, 3] (one for every prompt) or [N, H, W, 3] (one per prompt), at the
base stage's resolution; they enter the sampler as floats in [-1, 1] (u / 127.5 - 1).
Masks are bool [H, W] or [N, H, W] (0/1 integers too). The image and mask are arguments of
the jitted sampler, so one compilation serves every image and mask; `strength` and
`resample` shape the sampling loop and are compiled in.

Host-side loaders for files: `load_image(path, resolution)` (PNG/JPEG, any mode, converted
to RGB) and `load_mask(path, resolution)` (PNG, grey levels >= 128 = white = keep, darker =
generate). Both refuse a file whose size is not `resolution` x `resolution` unless called
with `resize=True` (LANCZOS for images, nearest for masks); scripts/sample.py does not
resize, so what is kept is exactly what the user drew. Paths may be local or `gs://`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from imagen_jax.storage import paths

MASK_THRESHOLD = 128  # load_mask: grey levels >= this (white) are kept


@dataclasses.dataclass(frozen=True, eq=False)
class Edit:
  """What stage 0 of the cascade edits, and how (module docstring).

  image: uint8 [H, W, 3] or [N, H, W, 3] (N = the number of prompts).
  mask: None (no inpainting) or bool [H, W] / [N, H, W]: True = keep the image's pixel.
  strength: None (no SDEdit) or SDEdit's start time in (0, 1].
  resample: RePaint's repeats per step, an int >= 1 (> 1 only with a mask).
  paste: True (default) replaces the known pixels at every step (RePaint); False, only for a
    stage trained to inpaint (GLIDE-style, `configs/shapes.py:stage=inpaint`), leaves every
    pixel to the network, which sees the known ones as its extra input.
  """

  image: Any
  mask: Any = None
  strength: float | None = None
  resample: int = 1
  paste: bool = True

  def __post_init__(self):
    image = np.asarray(self.image)
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
      raise ValueError(
          f"Edit.image must be uint8 [H, W, 3] or [N, H, W, 3]; got {image.dtype} "
          f"{list(image.shape)}"
      )
    object.__setattr__(self, "image", image)
    if self.mask is not None:
      object.__setattr__(self, "mask", _check_mask(np.asarray(self.mask), image.shape[-3:-1]))
    if self.strength is not None:
      try:
        strength = float(self.strength)
      except (TypeError, ValueError):
        strength = math.nan
      if isinstance(self.strength, bool) or not 0.0 < strength <= 1.0:
        raise ValueError(f"Edit.strength={self.strength!r} must be a number in (0, 1]")
      object.__setattr__(self, "strength", strength)
    resample = self.resample
    if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) or resample < 1:
      raise ValueError(f"Edit.resample={resample!r} must be an integer >= 1")
    object.__setattr__(self, "resample", int(resample))
    if self.resample > 1 and self.mask is None:
      raise ValueError(f"Edit.resample={self.resample} needs a mask (it resamples inpainting)")
    if not isinstance(self.paste, (bool, np.bool_)):
      raise ValueError(f"Edit.paste={self.paste!r} must be True or False")
    if not self.paste and self.mask is None:
      raise ValueError("Edit.paste=False needs a mask (it is an inpainting option)")
    if self.mask is None and self.strength is None:
      raise ValueError(
          "Edit needs a mask (inpainting) or a strength (SDEdit); with neither the image "
          "would be ignored"
      )

  @property
  def static_key(self) -> tuple:
    """What the jitted sampler is compiled for: (inpainting, strength, resample, paste)."""
    return (self.mask is not None, self.strength, self.resample, bool(self.paste))

  def arrays(self, resolution: int, num_prompts: int, where: str = "stage 0"):
    """(image float32 [num_prompts, r, r, 3] in [-1, 1], mask bool [num_prompts, r, r, 1]
    or None), each given image/mask repeated for every prompt when there is one."""
    r = int(resolution)
    size = tuple(self.image.shape[-3:-1])
    if size != (r, r):
      raise ValueError(
          f"Edit.image is {size[1]}x{size[0]} but {where} samples {r}x{r} images; give an "
          f"image of {r}x{r} (load_image(..., resize=True) resizes one)"
      )
    image = _per_prompt("image", self.image, 4, num_prompts)
    image = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    mask = None
    if self.mask is not None:
      mask = _per_prompt("mask", self.mask, 3, num_prompts)[..., None]
    return image, mask

  def record(self) -> dict:
    """A JSON-able summary (for samples.json)."""
    return {
        "images": 1 if self.image.ndim == 3 else int(self.image.shape[0]),
        "inpaint": self.mask is not None,
        "kept_fraction": None if self.mask is None else float(np.mean(self.mask)),
        "strength": self.strength,
        "resample": self.resample,
    }


def _check_mask(mask: np.ndarray, size: tuple) -> np.ndarray:
  """The mask as bool [H, W] / [N, H, W]; ValueError unless it matches the image's size and
  keeps some but not all pixels of every image."""
  if mask.ndim not in (2, 3):
    raise ValueError(f"Edit.mask must be bool [H, W] or [N, H, W]; got shape {list(mask.shape)}")
  if tuple(mask.shape[-2:]) != tuple(size):
    raise ValueError(
        f"Edit.mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {size[1]}x{size[0]}; "
        "they must be the same size (the stage's resolution)"
    )
  if mask.dtype != bool:
    if not np.issubdtype(mask.dtype, np.number) or not np.all((mask == 0) | (mask == 1)):
      bad = np.unique(mask[(mask != 0) & (mask != 1)])[:3].tolist() if mask.size else []
      raise ValueError(f"Edit.mask must be boolean or 0/1; it holds {mask.dtype} values {bad}")
    mask = mask.astype(bool)
  per_image = mask.reshape(-1, mask.shape[-2] * mask.shape[-1])
  for k, m in enumerate(per_image):
    which = "" if mask.ndim == 2 else f" {k}"
    if m.all():
      raise ValueError(f"Edit.mask{which} keeps every pixel: nothing to inpaint")
    if not m.any():
      raise ValueError(
          f"Edit.mask{which} keeps no pixel (all False); for SDEdit alone give no mask"
      )
  return mask


def _per_prompt(name: str, value: np.ndarray, ndim: int, num_prompts: int) -> np.ndarray:
  """`value` [..] (one for all) or [N, ..] (N = num_prompts or 1) as [num_prompts, ..]."""
  if value.ndim == ndim - 1:
    value = value[None]
  if value.shape[0] not in (1, num_prompts):
    raise ValueError(
        f"Edit.{name} has {value.shape[0]} images for {num_prompts} prompts; give 1 (for "
        f"every prompt) or {num_prompts} (one per prompt)"
    )
  return np.broadcast_to(value, (num_prompts,) + value.shape[1:])


def _open(path, kind: str):
  """The PIL image at `path` (local or gs://); clear errors naming it."""
  p = paths.path(path)
  if not p.exists():
    raise FileNotFoundError(f"{kind} {str(path)!r} does not exist")
  try:
    img = Image.open(io.BytesIO(p.read_bytes()))
    img.load()
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"{kind} {str(path)!r} is not a readable image: {e}") from e
  return img


def _sized(img, path, kind: str, resolution: int, resize: bool, resample):
  r = int(resolution)
  if img.size == (r, r):
    return img
  if not resize:
    raise ValueError(
        f"{kind} {str(path)!r} is {img.size[0]}x{img.size[1]}, but the base stage samples "
        f"{r}x{r}; resize it to {r}x{r} first"
    )
  return img.resize((r, r), resample=resample)


def load_image(path, resolution: int, *, resize: bool = False) -> np.ndarray:
  """uint8 [r, r, 3] RGB from a PNG/JPEG (any PIL-readable file, any mode; alpha dropped).

  ValueError if it is not `resolution` x `resolution` (unless `resize`, LANCZOS) or not an
  image; FileNotFoundError if missing.
  """
  img = _open(path, "image").convert("RGB")
  img = _sized(img, path, "image", resolution, resize, Image.Resampling.LANCZOS)
  return np.asarray(img, np.uint8)


def load_mask(path, resolution: int, *, resize: bool = False) -> np.ndarray:
  """bool [r, r] from a PNG (converted to grey): True (keep the image's pixel) where the
  grey level is >= 128 (white), False (generate) where darker (black).

  ValueError if it is not `resolution` x `resolution` (unless `resize`, nearest) or not an
  image; FileNotFoundError if missing. The mask's content is checked by `Edit`.
  """
  img = _open(path, "mask").convert("L")
  img = _sized(img, path, "mask", resolution, resize, Image.Resampling.NEAREST)
  return np.asarray(img) >= MASK_THRESHOLD


def from_files(image_path, resolution: int, *, mask_path=None, strength=None, resample=1):
  """`Edit` of the image file (and mask file) at `resolution` (load_image, load_mask)."""
  image = load_image(image_path, resolution)
  mask = None if mask_path is None else load_mask(mask_path, resolution)
  return Edit(image, mask, strength=strength, resample=resample)
