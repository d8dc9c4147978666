"""Tests for image decoding and per-stage preprocessing."""
import io

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import preprocess


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "PNG"), ("L", "PNG"),
                                      ("RGBA", "PNG"), ("P", "PNG"),
                                      ("CMYK", "JPEG"), ("I;16", "PNG"),
                                      ("LA", "PNG")])
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
    preprocess.decode_image(good[:len(good) // 2], "img.png")
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
  np.testing.assert_array_equal(
      out["image"], stage(img, np.random.default_rng(2))["image"])
  rand = preprocess.StagePreprocess(resolution=32, crop="random")
  a = rand(img, np.random.default_rng(5))["image"]
  np.testing.assert_array_equal(a, rand(img, np.random.default_rng(5))["image"])
  assert any((rand(img, np.random.default_rng(s))["image"] != a).any()
             for s in range(6, 12))


def test_random_sub_crops_for_the_last_sr_stage():
  img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  stage = preprocess.StagePreprocess(resolution=64, lowres_resolution=16,
                                     crop_size=16)
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
    np.testing.assert_array_equal(stage(img, np.random.default_rng(s))["image"],
                                  img)


def test_invalid_stage_arguments():
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=32, crop="middle")
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=32, lowres_resolution=64)
  with pytest.raises(ValueError):
    preprocess.StagePreprocess(resolution=64, lowres_resolution=16,
                               crop_size=10)


def test_decode_jpeg_at_reduced_scale():
  data = _encode(Image.new("RGB", (640, 480), (0, 90, 200)), "JPEG")
  full = preprocess.decode_image(data)
  small = preprocess.decode_image(data, min_side=64)
  assert full.shape == (480, 640, 3)
  assert min(small.shape[:2]) >= 64 and small.shape[0] < 480
  assert np.abs(small.astype(int).mean((0, 1)) - full.mean((0, 1))).max() < 3
