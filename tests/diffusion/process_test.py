"""eps / v / x0 conversions, the loss and noise-conditioning augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion
from imagen_jax.diffusion import process


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_round_trip(prediction):
  rng = jax.random.PRNGKey(1)
  x0 = jax.random.uniform(rng, (3, 8, 8, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
  schedule = diffusion.get_schedule("cosine")
  t = jnp.array([0.05, 0.5, 0.9])
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = diffusion.q_sample(x0, t, noise, schedule)
  pred = diffusion.target(x0, noise, alpha, sigma, prediction)
  x0_hat, eps_hat = diffusion.x0_eps_from_prediction(pred, x_t, alpha, sigma, prediction)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
  np.testing.assert_allclose(eps_hat, noise, atol=2e-4)
  back = process.prediction_from_x0(x0, x_t, alpha, sigma, prediction)
  np.testing.assert_allclose(back, pred, atol=2e-4)


def test_v_definition_float64():
  a, s = 0.6, 0.8
  x0, eps = np.float64(0.3), np.float64(-1.2)
  v = diffusion.target(jnp.array([x0]), jnp.array([eps]), a, s, "v")
  np.testing.assert_allclose(v, a * eps - s * x0, rtol=1e-6)


def test_loss_zero_for_perfect_denoiser_and_min_snr_weights():
  schedule = diffusion.get_schedule("cosine")
  x0 = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 4, 3))
  rng = jax.random.PRNGKey(3)
  # Reproduce the loss's own noise draw to build an oracle denoiser.
  _, noise_rng = jax.random.split(rng)
  noise = jax.random.normal(noise_rng, x0.shape)
  oracle = lambda x_t, t: noise
  loss, aux = diffusion.diffusion_loss(oracle, x0, rng, schedule=schedule)
  np.testing.assert_allclose(loss, 0.0, atol=1e-10)
  zero = lambda x_t, t: jnp.zeros_like(x_t)
  loss, aux = diffusion.diffusion_loss(
      zero, x0, rng, schedule=schedule, weighting="min_snr", min_snr_gamma=5.0
  )
  snr = np.exp(np.asarray(schedule.log_snr(aux["t"]), np.float64))
  expected = np.minimum(snr, 5.0) / snr * np.asarray(aux["mse"])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # The three min-SNR weights agree as weights on the x0 error.
  log_snr = jnp.array([-3.0, 0.0, 3.0])
  snr = np.exp(np.asarray(log_snr, np.float64))
  w_eps = diffusion.loss_weight(log_snr, "eps", "min_snr") * snr
  w_v = diffusion.loss_weight(log_snr, "v", "min_snr") * (snr + 1)
  w_x0 = diffusion.loss_weight(log_snr, "x0", "min_snr")
  np.testing.assert_allclose(w_eps, w_x0, rtol=1e-5)
  np.testing.assert_allclose(w_v, w_x0, rtol=1e-5)


def test_bad_names():
  schedule = diffusion.get_schedule("cosine")
  x0 = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="eps, v, x0"):
    diffusion.diffusion_loss(
        lambda x, t: x, x0, jax.random.PRNGKey(0), schedule=schedule, prediction="score"
    )
  with pytest.raises(ValueError, match="none, min_snr"):
    diffusion.loss_weight(jnp.zeros(2), "eps", "p2")


def test_augment_lowres():
  schedule = diffusion.get_schedule("cosine")
  low = jnp.full((3, 16, 16, 3), 0.5)
  rng = jax.random.PRNGKey(0)
  out, aug_t = diffusion.augment_lowres(low, rng, schedule=schedule, aug_range=(0.0, 0.5))
  assert out.shape == low.shape and aug_t.shape == (3,)
  assert np.all((aug_t >= 0) & (aug_t <= 0.5))
  fixed, aug_t = diffusion.augment_lowres(low, rng, schedule=schedule, aug_level=0.3)
  np.testing.assert_allclose(aug_t, 0.3)
  alpha, sigma = schedule.alpha_sigma(0.3)
  np.testing.assert_allclose(fixed.mean(), 0.5 * alpha, atol=0.02)
  np.testing.assert_allclose(jnp.std(fixed - 0.5 * alpha), sigma, rtol=0.05)
  clean, _ = diffusion.augment_lowres(low, rng, schedule=schedule, aug_level=0.0)
  np.testing.assert_array_equal(clean, low)
  with pytest.raises(ValueError, match="aug_range"):
    diffusion.augment_lowres(low, rng, schedule=schedule, aug_range=(0.5, 0.2))
