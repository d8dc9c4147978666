"""Each image is decoded before it is stored: kept byte for byte, or re-encoded.

The dataset's image feature is `tfds.features.Image()` (3 channels, uint8),
given the encoded bytes: TFDS stores bytes as they are (no TensorFlow, no
recompression; `encoding_format` is only used when TFDS itself encodes an
array, which needs TensorFlow) and readers decode them to [H, W, 3] with PIL,
OpenCV or TensorFlow. So what is stored must decode to 3-channel uint8 RGB in
all three:

* an RGB JPEG, or an 8-bit RGB PNG, that decodes completely is stored as is
  (its original bytes: no second compression loss);
* anything else that decodes (grayscale, CMYK, palette, alpha, 16-bit, WebP,
  GIF, ...) is converted to RGB the way the training pipeline converts it
  (`preprocess.decode_image`: alpha over white, 16-bit scaled) and
  re-encoded: JPEG (quality 95) when the source was lossy (JPEG, WebP, MPO),
  PNG otherwise;
* with `max_side`, an image whose longer side is above it is resized
  (aspect kept; area averaging, the pipeline's own downsampling) and
  re-encoded the same way, e.g. `max_side=256` for a 64x64 base stage.

An image that does not decode (truncated, corrupt, not an image) raises
`preprocess.BadExampleError`; one whose decoded size is above `max_decoded_mb`
(read from its header, as in training) raises `preprocess.ImageTooLargeError`
before it is decoded. EXIF orientation is not applied, as in training from
files.
"""

import io

import numpy as np
from PIL import Image

from imagen_jax.data import preprocess

JPEG_QUALITY = 95
_LOSSY = ("JPEG", "MPO", "WEBP")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _stored_as_is(img: Image.Image) -> bool:
  if img.mode != "RGB" or not img.tile:
    return False
  if img.format == "JPEG":
    return True
  return img.format == "PNG" and img.tile[0].args == "RGB"  # 8 bits


def for_storage(
    data: bytes,
    name: str,
    max_side: int | None = None,
    max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
) -> tuple[bytes, bool]:
  """(bytes to store, whether they were re-encoded); see the module docstring."""
  limit = preprocess.check_max_decoded_mb(max_decoded_mb)
  try:
    with Image.open(io.BytesIO(data)) as img:
      fmt = img.format
      fits = not max_side or max(img.size) <= max_side
      if fits and _stored_as_is(img):
        if fmt == "JPEG":
          img.draft("RGB", (1, 1))  # a reduced-scale decode still reads it all
        elif limit is not None and preprocess.decoded_bytes(img) > limit * 1e6:
          raise preprocess.ImageTooLargeError(
              f"{name}: {img.size[0]}x{img.size[1]} {img.mode} decodes to "
              f"{preprocess.decoded_bytes(img) / 1e6:.1f} MB, above --max_decoded_mb="
              f"{limit:g} (not decoded)"
          )
        img.load()  # raises on truncated or corrupt data
        return data, False
  except _DECODE_ERRORS as e:
    raise preprocess.BadExampleError(f"{name}: cannot decode image ({e})") from e
  image = preprocess.decode_image(data, name, max_decoded_mb=limit)
  h, w = image.shape[:2]
  if max_side and max(h, w) > max_side:
    scale = max_side / max(h, w)
    image = preprocess.resize(image, max(1, round(h * scale)), max(1, round(w * scale)), "area")
  out = io.BytesIO()
  if fmt in _LOSSY:
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="JPEG", quality=JPEG_QUALITY)
  else:
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
  return out.getvalue(), True
