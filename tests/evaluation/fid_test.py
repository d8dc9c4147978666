"""Fréchet distance against a float64 scipy reference, its identities, and FID on images."""

import numpy as np
import pytest
from scipy import linalg

from imagen_jax.data import shapes
from imagen_jax.evaluation import fid
from imagen_jax.evaluation import inception


def _reference_fid(mu1, s1, mu2, s2):
  """pytorch-fid's formula: scipy.linalg.sqrtm of the (non-symmetric) product, float64."""
  covmean = linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  d = mu1 - mu2
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_stats(rng, d, n):
  x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d)
  return fid.statistics(x)


def test_statistics_float64():
  x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
  mu, sigma = fid.statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


@pytest.mark.parametrize("d", [8, 64, 256])
def test_matches_scipy_sqrtm_reference(d):
  rng = np.random.default_rng(d)
  mu1, s1 = _random_stats(rng, d, 4 * d)
  mu2, s2 = _random_stats(rng, d, 4 * d)
  got, want = fid.frechet_distance(mu1, s1, mu2, s2), _reference_fid(mu1, s1, mu2, s2)
  assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)


def test_identities():
  rng = np.random.default_rng(1)
  mu1, s1 = _random_stats(rng, 32, 100)
  mu2, s2 = _random_stats(rng, 32, 100)
  scale = np.trace(s1)
  assert fid.frechet_distance(mu1, s1, mu1, s1) < 1e-9 * scale
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
      fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-10
  )
  shift = rng.normal(size=32)
  assert fid.frechet_distance(mu1 + shift, s1, mu1, s1) == pytest.approx(
      float(shift @ shift), rel=1e-8
  )


def test_rank_deficient_covariances_stay_real_and_zero_on_self():
  # Fewer samples than dimensions, as in a small FID run: singular covariances.
  rng = np.random.default_rng(2)
  mu, s = fid.statistics(rng.normal(size=(10, 200)))
  assert fid.frechet_distance(mu, s, mu, s) < 1e-9 * np.trace(s)


def test_from_features_equals_covariance_form():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(30, 100)) @ rng.normal(size=(100, 100))
  b = rng.normal(size=(20, 100)) @ rng.normal(size=(100, 100)) + 0.5
  want = fid.frechet_distance(*fid.statistics(a), *fid.statistics(b))
  # Rank-deficient covariances: the covariance form carries ~sqrt(eps) round-off from the
  # null-space eigenvalues, hence 1e-6 rather than 1e-9.
  assert fid.frechet_distance_from_features(a, b) == pytest.approx(want, rel=1e-6)
  assert fid.frechet_distance_from_features(a, a) < 1e-9 * want
  big1, big2 = rng.normal(size=(150, 100)), rng.normal(size=(120, 100)) + 0.1
  # Both larger than the dimension: the covariance form itself.
  assert fid.frechet_distance_from_features(big1, big2) == fid.frechet_distance(
      *fid.statistics(big1), *fid.statistics(big2)
  )
  # Only one small set: the feature form, still equal.
  assert fid.frechet_distance_from_features(big1, b) == pytest.approx(
      fid.frechet_distance(*fid.statistics(big1), *fid.statistics(b)), rel=1e-6
  )


def test_bad_statistics():
  with pytest.raises(ValueError, match="do not match"):
    fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="NaN"):
    fid.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="at least 2"):
    fid.statistics(np.zeros((1, 4)))


def test_statistics_file_round_trip(tmp_path):
  mu, sigma = fid.statistics(np.random.default_rng(0).normal(size=(5, 3)))
  path = str(tmp_path / "s.npz")
  fid.save_statistics(path, mu, sigma, 5, {"hash": "abc"})
  mu2, sigma2, n, meta = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  assert n == 5 and meta == {"hash": "abc"}


# --- FID of images, with random Inception weights (no real weights here) ----------------


@pytest.fixture(scope="module")
def extractor(small_extractor):
  return small_extractor


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return np.stack(
      [shapes.render(shapes.sample_scene(rng, "all", max_objects=3), 64) for _ in range(24)]
  )


def test_self_fid_is_zero_and_noise_raises_it(extractor, images):
  # 24 samples < 2048 dims: the exact feature form (checked above) instead of two 2048^2 eighs.
  clean = extractor(images)
  mu, sigma = fid.statistics(clean)
  rng = np.random.default_rng(1)
  values = [fid.frechet_distance_from_features(clean, clean)]
  for noise in (8, 24, 64):
    noisy = np.clip(images + rng.normal(0, noise, images.shape), 0, 255).astype(np.uint8)
    values.append(fid.frechet_distance_from_features(extractor(noisy), clean))
  print(
      "FID (random Inception, 75px) vs Gaussian noise std 0/8/24/64:", [f"{v:.4g}" for v in values]
  )
  assert values[0] < 1e-6 * np.trace(sigma)
  assert all(a < b for a, b in zip(values, values[1:])), values


def test_images_must_be_uint8(extractor, images):
  with pytest.raises(TypeError, match="must be uint8"):
    extractor(images.astype(np.float32) / 127.5 - 1)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    extractor(images[..., :1])


def test_clean_resize_is_pil_bicubic_on_float_channels():
  img = np.random.default_rng(0).integers(0, 256, (1, 40, 30, 3)).astype(np.uint8)
  out = inception.clean_resize(img, 75)
  assert out.shape == (1, 75, 75, 3) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255
  # Already the right size: unchanged (no resampling round trip).
  same = np.random.default_rng(1).integers(0, 256, (1, 75, 75, 3)).astype(np.uint8)
  np.testing.assert_array_equal(inception.clean_resize(same, 75), same.astype(np.float32))
