"""Tests for image decoding and per-stage preprocessing, including the decoded-size limit
on a real zlib-bomb PNG and the 16-bit conversion's memory (peak RSS in a subprocess)."""

import io
import pathlib
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import preprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("LA", "PNG"),
    ],
)
def test_decode_converts_modes(mode, fmt):
  img = Image.new(mode, (7, 5))
  out = preprocess.decode_image(_encode(img, fmt), "x")
  assert out.shape == (5, 7, 3) and out.dtype == np.uint8


def test_decode_transparent_over_white():
  img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
  out = preprocess.decode_image(_encode(img, "PNG"))
  assert (out == 255).all()


def test_decode_bad_data():
  good = _encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG")
  with pytest.raises(preprocess.BadExampleError, match="img.png"):
    preprocess.decode_image(good[: len(good) // 2], "img.png")
  with pytest.raises(preprocess.BadExampleError):
    preprocess.decode_image(b"not an image at all", "junk")


def test_to_rgb_array():
  assert preprocess.to_rgb_array(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
  assert preprocess.to_rgb_array(np.zeros((3, 4, 1))).shape == (3, 4, 3)
  rgba = np.zeros((2, 2, 4), np.uint8)
  assert (preprocess.to_rgb_array(rgba) == 255).all()  # transparent: white


def test_stage_shapes_and_lowres_consistency():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
  stage = preprocess.StagePreprocess(resolution=32, lowres_resolution=8)
  out = stage(img, np.random.default_rng(1))
  assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
  assert out["lowres"].shape == (8, 8, 3)
  # Low-res input = the target averaged over 4x4 blocks (area downsampling).
  pooled = out["image"].astype(np.float32).reshape(8, 4, 8, 4, 3).mean((1, 3))
  assert np.abs(pooled - out["lowres"]).max() <= 1.0
  # Centre crop is deterministic; random crop depends only on the rng.
  np.testing.assert_array_equal(out["image"], stage(img, np.random.default_rng(2))["image"])
  rand = preprocess.StagePreprocess(resolution=32, crop="random")
  a = rand(img, np.random.default_rng(5))["image"]
  np.testing.assert_array_equal(a, rand(img, np.random.default_rng(5))["image"])
  assert any((rand(img, np.random.default_rng(s))["image"] != a).any() for s in range(6, 12))


def test_random_sub_crops_for_the_last_sr_stage():
  img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  stage = preprocess.StagePreprocess(resolution=64, lowres_resolution=16, crop_size=16)
  out = stage(img, np.random.default_rng(0))
  assert out["image"].shape == (16, 16, 3) and out["lowres"].shape == (4, 4, 3)
  # The crop is a window of the full-resolution image.
  windows = np.lib.stride_tricks.sliding_window_view(img, (16, 16, 3))
  assert (windows == out["image"]).all(axis=(-3, -2, -1)).any()


def test_no_flip_by_default():
  img = np.zeros((8, 8, 3), np.uint8)
  img[:, :4] = 255
  stage = preprocess.StagePreprocess(resolution=8)
  for s in range(10):
    np.testing.assert_array_equal(stage(img, np.random.default_rng(s))["image"], img)


def test_invalid_stage_arguments():
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=32, crop="middle")
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=32, lowres_resolution=64)
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=64, lowres_resolution=16, crop_size=10)


def test_decode_jpeg_at_reduced_scale():
  data = _encode(Image.new("RGB", (640, 480), (0, 90, 200)), "JPEG")
  full = preprocess.decode_image(data)
  small = preprocess.decode_image(data, min_side=64)
  assert full.shape == (480, 640, 3)
  assert min(small.shape[:2]) >= 64 and small.shape[0] < 480
  assert np.abs(small.astype(int).mean((0, 1)) - full.mean((0, 1))).max() < 3


def _png_chunk(tag: bytes, data: bytes) -> bytes:
  return (
      struct.pack(">I", len(data))
      + tag
      + data
      + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
  )


def write_png(path, width, height, bit_depth, row: bytes) -> int:
  """A grayscale PNG of `height` copies of `row` (unfiltered), written in a stream; returns
  its size. An all-zero 8-bit 12000x12000 one is the 140 kB zlib bomb of issue #19."""
  comp = zlib.compressobj(9)
  line = b"\x00" + row
  idat = b"".join(comp.compress(line) for _ in range(height)) + comp.flush()
  data = (
      b"\x89PNG\r\n\x1a\n"
      + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
      + _png_chunk(b"IDAT", idat)
      + _png_chunk(b"IEND", b"")
  )
  pathlib.Path(path).write_bytes(data)
  return len(data)


def zlib_bomb(path, side=12000) -> int:
  return write_png(path, side, side, 8, bytes(side))


def gradient16(path, side) -> int:
  """A 16-bit grayscale PNG whose rows are a 0..65535 ramp."""
  ramp = np.linspace(0, 65535, side).astype(">u2").tobytes()
  return write_png(path, side, side, 16, ramp)


# The peak RSS of this process's memory image in MB (VmHWM: not getrusage's ru_maxrss,
# which a child started from a large parent inherits through fork and exec).
_PEAK_MB = """
def peak_mb():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
"""


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
  """`code` in a fresh interpreter (its own peak RSS, `peak_mb()`)."""
  if not pathlib.Path("/proc/self/status").exists():
    pytest.skip("needs Linux's /proc/self/status for the peak RSS")
  proc = subprocess.run(
      [sys.executable, "-c", _PEAK_MB + textwrap.dedent(code)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def test_zlib_bomb_refused_from_its_header(tmp_path):
  bomb = tmp_path / "bomb.png"
  size = zlib_bomb(bomb)
  assert size < 200_000  # 140 kB on disk, 144 Mpx: under PIL's own bomb limit
  with Image.open(bomb) as img:
    assert img.size == (12000, 12000) and img.size[0] * img.size[1] < (Image.MAX_IMAGE_PIXELS * 2)
  proc = _run(f"""
    from imagen_jax.data import preprocess
    data = open({str(bomb)!r}, "rb").read()
    before = peak_mb()
    try:
      preprocess.decode_image(data, "bomb.png", min_side=64)
      print("DECODED")
    except preprocess.BadExampleError as e:
      print("REFUSED", e)
    print("GROWTH_MB", peak_mb() - before)
  """)
  assert "REFUSED bomb.png: 12000x12000" in proc.stdout, proc.stdout
  assert "max_decoded_mb=256" in proc.stdout, proc.stdout
  growth = float(proc.stdout.split("GROWTH_MB")[1])
  assert growth < 32, proc.stdout  # refused before any pixel is decoded


def test_decoded_size_limit_is_pixels_times_bytes(tmp_path):
  # L decodes to RGB: 3 bytes a pixel; a 16-bit RGBA one would count 8.
  path = tmp_path / "x.png"
  Image.new("L", (600, 600)).save(path)
  raw = path.read_bytes()
  with pytest.raises(preprocess.ImageTooLargeError, match=r"600x600 L .*1\.1 MB.*=1"):
    preprocess.decode_image(raw, "x.png", max_decoded_mb=1)
  assert preprocess.decode_image(raw, "x.png", max_decoded_mb=1.1).shape == (600, 600, 3)
  assert preprocess.decode_image(raw, "x.png", max_decoded_mb=None).shape == (600, 600, 3)
  with pytest.raises(ValueError, match="max_decoded_mb=0"):
    preprocess.decode_image(raw, "x.png", max_decoded_mb=0)


def test_16bit_png_converted_exactly_without_a_float_copy(tmp_path):
  small = tmp_path / "small16.png"
  gradient16(small, 300)
  ramp = np.linspace(0, 65535, 300).astype(np.uint16)
  want = np.clip(np.rint(ramp * (255.0 / 65535.0)), 0, 255)
  out = preprocess.decode_image(small.read_bytes(), "small16.png")
  assert out.dtype == np.uint8 and out.shape == (300, 300, 3)
  np.testing.assert_array_equal(out[7, :, 1], want.astype(np.uint8))
  # 6000^2 16-bit: 72 MB as decoded by PIL, 108 MB as RGB (+180 MB measured). The old
  # float64 conversion peaked at +650..880 MB here (several 288 MB float copies).
  big = tmp_path / "big16.png"
  gradient16(big, 6000)
  proc = _run(
      f"""
    from imagen_jax.data import preprocess
    data = open({str(big)!r}, "rb").read()
    before = peak_mb()
    out = preprocess.decode_image(data, "big16.png")
    growth = peak_mb() - before
    print("RESULT", out.shape, int(out[0, 0, 0]), int(out[0, -1, 2]), "GROWTH_MB", growth)
  """,
      timeout=120,
  )
  assert "RESULT (6000, 6000, 3) 0 255" in proc.stdout, proc.stdout
  growth = float(proc.stdout.split("GROWTH_MB")[1])
  assert growth < 300, proc.stdout
