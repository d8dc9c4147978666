"""Schedules and the forward process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_variance_preserving_and_monotone(name):
  schedule = diffusion.get_schedule(name)
  t = jnp.linspace(0.0, 1.0, 1001)
  alpha, sigma = schedule.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  log_snr = np.asarray(schedule.log_snr(t))
  assert np.all(np.isfinite(log_snr))
  assert np.all(np.diff(log_snr) <= 0)
  # Strictly decreasing away from the clipped ends.
  inner = log_snr[(log_snr > -20) & (log_snr < 20)]
  assert np.all(np.diff(inner) < 0)
  assert alpha[0] > 0.99 and sigma[-1] > 0.99


def test_endpoints_match_closed_forms():
  cos = diffusion.get_schedule("cosine")
  s = 0.008
  expected_0 = -np.log(np.cos(np.pi / 2 * s / (1 + s)) ** -2 - 1)
  np.testing.assert_allclose(cos.log_snr(0.0), expected_0, rtol=1e-5)
  np.testing.assert_allclose(cos.log_snr(1.0), -20.0)
  lin = diffusion.get_schedule("linear")
  np.testing.assert_allclose(lin.log_snr(0.0), 20.0)
  np.testing.assert_allclose(lin.log_snr(1.0), -np.log(np.expm1(10.05)), rtol=1e-5)
  # Continuous linear schedule == DDPM's discrete linear betas (1e-4..0.02),
  # up to log(1 - beta) ~ -beta - beta^2/2: sum of beta^2/2 is 0.07 at T.
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  alpha_bar = np.cumprod(1 - betas)
  for k in [99, 499, 999]:
    t = (k + 1) / 1000
    ref = np.log(alpha_bar[k] / (1 - alpha_bar[k]))
    np.testing.assert_allclose(lin.log_snr(t), ref, atol=0.1)


def test_q_sample_statistics():
  schedule = diffusion.get_schedule("cosine")
  rng = jax.random.PRNGKey(0)
  x0 = jnp.full((4, 20000), 0.7)
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  noise = jax.random.normal(rng, x0.shape)
  x_t = diffusion.q_sample(x0, t, noise, schedule)
  alpha, sigma = schedule.alpha_sigma(t)
  np.testing.assert_allclose(x_t.mean(1), 0.7 * alpha, atol=0.02)
  np.testing.assert_allclose(x_t.std(1), sigma, rtol=0.03)


def test_unknown_schedule_names_allowed():
  with pytest.raises(ValueError, match="cosine, linear"):
    diffusion.get_schedule("quadratic")
  with pytest.raises(ValueError, match="beta_0"):
    diffusion.get_schedule("linear", s=0.1)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_shift_adds_to_log_snr_and_the_inverse_follows(name):
  plain = diffusion.get_schedule(name)
  shifted = diffusion.get_schedule(name, shift=2.0 * np.log(4.0))
  t = jnp.linspace(0.05, 0.95, 19)
  # float64 closed form of the shifted cosine: log_snr(t) = -log(tan^2(angle)) + shift.
  if name == "cosine":
    angle = 0.5 * np.pi * (np.asarray(t, np.float64) + 0.008) / 1.008
    ref = -2.0 * np.log(np.tan(angle)) + 2.0 * np.log(4.0)
    np.testing.assert_allclose(shifted.log_snr(t), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(shifted.log_snr(t), plain.log_snr(t) + 2.0 * np.log(4.0), atol=1e-5)
  np.testing.assert_allclose(shifted.t_from_log_snr(shifted.log_snr(t)), t, atol=1e-5)
  with pytest.raises(ValueError, match="shift=inf"):
    diffusion.get_schedule(name, shift=float("inf"))
