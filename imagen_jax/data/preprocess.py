"""Image decoding and per-stage preprocessing (resize, crop, low-res input).

Decoding turns any file PIL reads into uint8 [H, W, 3]: grayscale, palette,
16-bit, CMYK and images with alpha (composited over white) are converted; a
corrupt or truncated file raises `BadExampleError`, which the input pipeline
counts and skips.

`StagePreprocess` maps a decoded image to a cascade stage's training pair:

1. resize so the short side is `resolution` and crop a square ("centre": the
   middle; "random": a uniformly placed square along the long side) in one
   antialiased resampling step (PIL's box filter = area averaging when
   downsampling, bicubic when upsampling; `resize_method` picks another);
2. optionally (`crop_size`, e.g. 256 for the 256->1024 stage) a random
   `crop_size` square of that full-resolution image: the stage trains on
   crops and samples at full size, as Imagen's super-resolution stages do;
3. optionally a horizontal flip (off by default: captions say left/right);
4. for super-resolution stages, `lowres` = the (cropped) target downsampled
   by resolution / lowres_resolution with area averaging, so the pair is
   consistent by construction.
"""

import dataclasses
import io
import os
from typing import Optional, Union

import numpy as np
from PIL import Image

CROPS = ("centre", "random")
RESIZE_METHODS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class BadExampleError(Exception):
  """An example that cannot be used (corrupt image, ...); it is skipped."""


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == "RGB":
    return img
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    arr = np.asarray(img, np.float64)
    scale = 255.0 / 65535.0 if arr.max(initial=0) > 255 else 1.0
    arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")
  return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(data: Union[bytes, str, os.PathLike], name: str = "",
                 min_side: Optional[int] = None) -> np.ndarray:
  """Decodes an encoded image (bytes or a path) to uint8 [H, W, 3].

  With `min_side`, a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8:
  the decoder averages DCT blocks) as long as both sides stay >= min_side,
  which is several times faster when the stage resolution is small.
  """
  name = name or (str(data) if not isinstance(data, bytes) else "<bytes>")
  try:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as img:
      if min_side and img.format == "JPEG":
        img.draft(img.mode if img.mode != "CMYK" else None,
                  (min_side, min_side))
      img.load()  # raises on truncated data
      rgb = _to_rgb(img)
      out = np.asarray(rgb, np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          EOFError) as e:
    raise BadExampleError(f"{name}: cannot decode image ({e})") from e
  if out.ndim != 3 or out.shape[-1] != 3 or min(out.shape[:2]) < 1:
    raise BadExampleError(f"{name}: bad decoded shape {out.shape}")
  return out


def to_rgb_array(image: np.ndarray, name: str = "") -> np.ndarray:
  """Already decoded arrays ([H, W], [H, W, 1|3|4], any int/float) to RGB."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
    raise BadExampleError(f"{name}: unsupported image shape {arr.shape}")
  if arr.dtype != np.uint8:
    if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
      arr = arr * 255.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  elif arr.shape[-1] == 4:
    alpha = arr[..., 3:].astype(np.float32) / 255.0
    arr = np.rint(arr[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
  return arr


def resize(image: np.ndarray, height: int, width: int,
           method: str = "area", box=None) -> np.ndarray:
  """Antialiased resize of uint8 [H, W, 3] (optionally of a source `box`)."""
  if image.shape[:2] == (height, width) and box is None:
    return image
  src_h, src_w = image.shape[:2]
  if box is not None:
    src_w, src_h = box[2] - box[0], box[3] - box[1]
  resample = RESIZE_METHODS[method]
  if method == "area" and (height > src_h or width > src_w):
    resample = Image.Resampling.BICUBIC  # box filter upsamples blockily
  out = Image.fromarray(image).resize((width, height), resample, box=box)
  return np.asarray(out, np.uint8)


@dataclasses.dataclass(frozen=True)
class StagePreprocess:
  """Turns a decoded image into one stage's `image` (and `lowres`)."""
  resolution: int
  lowres_resolution: Optional[int] = None
  crop: str = "centre"
  crop_size: Optional[int] = None
  random_flip: bool = False
  resize_method: str = "area"

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
    if self.resize_method not in RESIZE_METHODS:
      raise ValueError(f"resize_method must be one of {tuple(RESIZE_METHODS)}"
                       f", got {self.resize_method!r}")
    if self.crop_size is not None and not 0 < self.crop_size <= self.resolution:
      raise ValueError(f"crop_size {self.crop_size} must be in "
                       f"(0, resolution={self.resolution}]")
    if self.lowres_resolution is not None:
      if not 0 < self.lowres_resolution < self.resolution:
        raise ValueError(f"lowres_resolution {self.lowres_resolution} must be "
                         f"below resolution {self.resolution}")
      if self.output_lowres_size * self.resolution != (
          self.output_size * self.lowres_resolution):
        raise ValueError(
            f"crop_size {self.crop_size} x lowres_resolution "
            f"{self.lowres_resolution} / resolution {self.resolution} is not "
            "an integer")

  @property
  def output_size(self) -> int:
    return self.crop_size or self.resolution

  @property
  def output_lowres_size(self) -> Optional[int]:
    if self.lowres_resolution is None:
      return None
    return self.output_size * self.lowres_resolution // self.resolution

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict:
    h, w = image.shape[:2]
    side = min(h, w)
    if self.crop == "centre":
      top, left = (h - side) // 2, (w - side) // 2
    else:
      top = int(rng.integers(h - side + 1))
      left = int(rng.integers(w - side + 1))
    box = None if (h, w) == (side, side) else (left, top, left + side,
                                               top + side)
    res = self.resolution
    out = resize(image, res, res, self.resize_method, box=box)
    if self.crop_size is not None and self.crop_size < res:
      y = int(rng.integers(res - self.crop_size + 1))
      x = int(rng.integers(res - self.crop_size + 1))
      out = out[y:y + self.crop_size, x:x + self.crop_size]
    if self.random_flip and rng.random() < 0.5:
      out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    result = {"image": out}
    if self.lowres_resolution is not None:
      size = self.output_lowres_size
      result["lowres"] = resize(out, size, size, self.resize_method)
    return result
