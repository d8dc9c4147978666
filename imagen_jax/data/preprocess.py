"""Image decoding and per-stage preprocessing (resize, crop, low-res input).

Decoding turns any file PIL reads into uint8 [H, W, 3]: grayscale, palette,
16-bit, CMYK and images with alpha (composited over white) are converted; a
corrupt or truncated file raises `BadExampleError`, which the input pipeline
counts and skips. Decoding never blocks or explodes:

* a local path is opened only when it is a regular file (`open_regular_file`:
  a FIFO, device or socket named like an image would block or never end);
* the decoded size, pixels x max(bytes a pixel as decoded, 3 for the RGB
  result), is read from the header (after the reduced-scale JPEG draft) and an
  image above `max_decoded_mb` (config.input.max_decoded_mb, default 256 MB)
  raises `ImageTooLargeError` before any pixel is decoded: a 140 kB zlib-bomb
  PNG of 12000x12000 would otherwise take GBs;
* 16-bit and 32-bit images are scaled to uint8 strip by strip, straight into
  the RGB result, with no full-size float copy.

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
import math
import os
import stat
from typing import BinaryIO

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


class ImageTooLargeError(BadExampleError):
  """An image whose decoded size is above the limit (`max_decoded_mb`)."""


class NotRegularFileError(OSError):
  """A path that is a FIFO, device, socket or folder, not a regular file."""


DEFAULT_MAX_DECODED_MB = 256
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _check_regular(mode: int, path) -> None:
  if not stat.S_ISREG(mode):
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a file")
    raise NotRegularFileError(
        f"{os.fspath(path)}: not a regular file ({kind}); only regular files are read"
    )


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
  """`open(path, "rb")` for a local regular file; `NotRegularFileError` (an OSError) for
  a FIFO, device or socket, which would block the reader or never end. Checked before
  opening and again on the open descriptor (opened non-blocking, so a FIFO swapped in
  meanwhile cannot block either)."""
  _check_regular(os.stat(path).st_mode, path)
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
  try:
    _check_regular(os.fstat(fd).st_mode, path)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def check_max_decoded_mb(value) -> float | None:
  """The decoded-size limit in MB (10^6 bytes), None for none; ValueError naming a bad one."""
  if value is None:
    return None
  try:
    limit = float(value)
  except (TypeError, ValueError):
    limit = float("nan")
  if not (math.isfinite(limit) and limit > 0):
    raise ValueError(
        f"max_decoded_mb={value!r} must be a positive number of MB (or None for no limit)"
    )
  return limit


# Bytes a pixel takes once PIL has decoded it, by mode.
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
}


def decoded_bytes(img: Image.Image) -> int:
  """What decoding `img` (not yet loaded) costs: pixels x max(bytes a pixel as decoded,
  3 for the RGB result)."""
  per_pixel = _MODE_BYTES.get(img.mode, 4 * len(img.getbands()))
  return img.size[0] * img.size[1] * max(per_pixel, 3)


_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_STRIP_PIXELS = 1 << 20


def _int_to_rgb_array(img: Image.Image) -> np.ndarray:
  """16/32-bit grayscale to uint8 RGB: values scaled by 255/65535 when any is above 255
  (else kept), rounded, clipped; a strip of rows at a time, into the result."""
  w, h = img.size
  lo, hi = img.getextrema()
  del lo
  scale = 255.0 / 65535.0 if hi > 255 else 1.0
  out = np.empty((h, w, 3), np.uint8)
  rows = max(1, _STRIP_PIXELS // max(w, 1))
  for top in range(0, h, rows):
    strip = np.asarray(img.crop((0, top, w, min(h, top + rows))), np.float64)
    strip = np.clip(np.rint(strip * scale), 0, 255).astype(np.uint8)
    out[top : top + strip.shape[0]] = strip[..., None]
  return out


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == "RGB":
    return img
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(
    data: bytes | str | os.PathLike | BinaryIO,
    name: str = "",
    min_side: int | None = None,
    max_decoded_mb: float | None = DEFAULT_MAX_DECODED_MB,
) -> np.ndarray:
  """Decodes an encoded image (bytes, a local path or a binary file) to uint8 [H, W, 3].

  With `min_side`, a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8:
  the decoder averages DCT blocks) as long as both sides stay >= min_side,
  which is several times faster when the stage resolution is small. An image
  whose decoded size (`decoded_bytes`, after that reduction) is above
  `max_decoded_mb` raises `ImageTooLargeError` before it is decoded; a path
  that is not a regular file raises `BadExampleError` without being opened.
  """
  limit = check_max_decoded_mb(max_decoded_mb)
  if isinstance(data, bytes):
    name = name or "<bytes>"
  elif isinstance(data, (str, os.PathLike)):
    name = name or os.fspath(data)
  else:
    name = name or str(getattr(data, "name", "<file>"))
  own = None
  try:
    if isinstance(data, bytes):
      src = io.BytesIO(data)
    elif isinstance(data, (str, os.PathLike)):
      src = own = open_regular_file(data)
    else:
      src = data
    with Image.open(src) as img:
      if min_side and img.format == "JPEG":
        img.draft(img.mode if img.mode != "CMYK" else None, (min_side, min_side))
      size = decoded_bytes(img)
      if limit is not None and size > limit * 1e6:
        raise ImageTooLargeError(
            f"{name}: {img.size[0]}x{img.size[1]} {img.mode} decodes to "
            f"{size / 1e6:.1f} MB, above the limit config.input.max_decoded_mb="
            f"{limit:g} (not decoded)"
        )
      img.load()  # raises on truncated data
      if img.mode in _INT_MODES:
        out = _int_to_rgb_array(img)
      else:
        out = np.asarray(_to_rgb(img), np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
    raise BadExampleError(f"{name}: cannot decode image ({e})") from e
  finally:
    if own is not None:
      own.close()
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


def resize(
    image: np.ndarray, height: int, width: int, method: str = "area", box=None
) -> np.ndarray:
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
  lowres_resolution: int | None = None
  crop: str = "centre"
  crop_size: int | None = None
  random_flip: bool = False
  resize_method: str = "area"

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
    if self.resize_method not in RESIZE_METHODS:
      raise ValueError(
          f"resize_method must be one of {tuple(RESIZE_METHODS)}, got {self.resize_method!r}"
      )
    if self.crop_size is not None and not 0 < self.crop_size <= self.resolution:
      raise ValueError(f"crop_size {self.crop_size} must be in (0, resolution={self.resolution}]")
    if self.lowres_resolution is not None:
      if not 0 < self.lowres_resolution < self.resolution:
        raise ValueError(
            f"lowres_resolution {self.lowres_resolution} must be "
            f"below resolution {self.resolution}"
        )
      if self.output_lowres_size * self.resolution != (self.output_size * self.lowres_resolution):
        raise ValueError(
            f"crop_size {self.crop_size} x lowres_resolution "
            f"{self.lowres_resolution} / resolution {self.resolution} is not "
            "an integer"
        )

  @property
  def output_size(self) -> int:
    return self.crop_size or self.resolution

  @property
  def output_lowres_size(self) -> int | None:
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
    box = None if (h, w) == (side, side) else (left, top, left + side, top + side)
    res = self.resolution
    out = resize(image, res, res, self.resize_method, box=box)
    if self.crop_size is not None and self.crop_size < res:
      y = int(rng.integers(res - self.crop_size + 1))
      x = int(rng.integers(res - self.crop_size + 1))
      out = out[y : y + self.crop_size, x : x + self.crop_size]
    if self.random_flip and rng.random() < 0.5:
      out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    result = {"image": out}
    if self.lowres_resolution is not None:
      size = self.output_lowres_size
      result["lowres"] = resize(out, size, size, self.resize_method)
    return result
