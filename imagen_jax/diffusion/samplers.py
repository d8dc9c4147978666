"""Samplers over any pure ``denoise_fn(x_t, t) -> prediction``.

Every sampler walks a decreasing grid of N evaluation times t_0 > ... > t_{N-1}
(``time_grid``: see time_grid.py; by default uniform in t, t_k = 1 - k / N, and for
edm_heun EDM's rho = 7 grid in sigma = sigma_t / alpha_t; "log_snr" is uniform in
log-SNR). Steps k < N-1 move x from t_k to t_{k+1}; the last evaluation (at t_{N-1})
returns its x0 estimate, i.e. the final step goes to zero noise (the "lower order final" /
set_alpha_to_one convention). Every x0 estimate is thresholded before it is used.
``num_steps`` = N is the number of network evaluations, except for edm_heun (2N - 1).

* ``ddpm``: ancestral sampling from the posterior q(x_s | x_t, x0_hat) with
  c = -expm1(log_snr_t - log_snr_s): mean alpha_s ((1 - c) x_t / alpha_t +
  c x0_hat), variance c sigma_s^2 (Kingma et al. 2021, VDM).
* ``ddim``: deterministic (eta = 0): x_s = alpha_s x0_hat + sigma_s eps_hat,
  eps_hat recomputed from the (thresholded) x0_hat.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022), multistep second order in
  lambda = log(alpha / sigma), first order on its first step.
* ``edm_heun``: Karras et al. 2022 (EDM), Heun's method on the probability-flow ODE in
  sigma (edm.py), on EDM's rho = 7 grid by default; N steps, 2N - 1 evaluations.

The grid matters at small N. On Gaussian data N(0.3, 0.2^2) with its exact denoiser,
dpmpp_2m at N = 25 loses 19% (linear schedule) / 5% (cosine) of the std on the
``uniform_t`` grid, whose last evaluation at t = 1/N still blurs; on ``log_snr`` it is
within 1.5% (benchmarks/sampler_grid.py prints the table).
"""

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import edm
from imagen_jax.diffusion import guidance
from imagen_jax.diffusion import process
from imagen_jax.diffusion import schedules
from imagen_jax.diffusion import time_grid as time_grid_lib

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "edm_heun")


def _check_sampler(sampler):
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; allowed values: {', '.join(SAMPLERS)}")


def sample(
    denoise_fn,
    shape,
    rng,
    *,
    schedule,
    sampler="ddpm",
    num_steps=256,
    prediction="eps",
    threshold="none",
    percentile=guidance.DEFAULT_PERCENTILE,
    max_value=None,
    x_init=None,
    time_grid=None,
):
  """Draws samples x0 of the given shape.

  Args:
    denoise_fn: pure ``denoise_fn(x_t, t) -> prediction``; t has shape [B].
    shape: output shape [B, ...].
    rng: PRNG key (the initial noise and, for ddpm, each step's noise via
      ``fold_in(rng, k)``).
    schedule: a ``Schedule``.
    sampler: "ddpm", "ddim", "dpmpp_2m" or "edm_heun".
    num_steps: N >= 1: network evaluations (edm_heun: Heun steps, 2N - 1 evaluations).
    prediction: what denoise_fn predicts: "eps", "v" or "x0".
    threshold: "none", "static" or "dynamic" (applied to every x0 estimate).
    percentile: the dynamic-thresholding percentile.
    max_value: optional cap of the dynamic threshold (DeepFloyd IF).
    x_init: optional initial noise of ``shape`` (else drawn from rng).
    time_grid: "log_snr", "karras" or "uniform_t" (time_grid.py); None: the sampler's
      default ("karras" for edm_heun, else "uniform_t").
  Returns:
    x0 samples, float32, of ``shape``.
  """
  _check_sampler(sampler)
  process.check_prediction(prediction)
  if threshold not in guidance.THRESHOLDS:
    raise ValueError(
        f"Unknown threshold {threshold!r}; allowed values: {', '.join(guidance.THRESHOLDS)}"
    )
  num_steps = int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1")
  if time_grid is None:
    time_grid = time_grid_lib.default_time_grid(sampler)
  ts = time_grid_lib.times(schedule, num_steps, time_grid)
  batch = shape[0]
  init_rng, step_rng = jax.random.split(rng)
  if x_init is None:
    x = jax.random.normal(init_rng, shape, jnp.float32)
  else:
    x = jnp.asarray(x_init, jnp.float32)
    if x.shape != tuple(shape):
      raise ValueError(f"x_init has shape {x.shape}, expected {tuple(shape)}")

  def estimate(x, t):
    """(x0_hat, eps_hat, log_snr, alpha, sigma) at scalar time t."""
    log_snr = schedule.log_snr(t)
    alpha, sigma = schedules.alpha_sigma_from_log_snr(log_snr)
    pred = denoise_fn(x, jnp.full((batch,), t, jnp.float32))
    x0, _ = process.x0_eps_from_prediction(pred.astype(jnp.float32), x, alpha, sigma, prediction)
    x0 = guidance.apply_threshold(x0, threshold, percentile, max_value)
    eps = (x - alpha * x0) / sigma
    return x0, eps, log_snr, alpha, sigma

  def ddpm_step(k, x):
    t, s = ts[k], ts[k + 1]
    x0, _, log_snr_t, alpha_t, _ = estimate(x, t)
    log_snr_s = schedule.log_snr(s)
    alpha_s, sigma_s = schedules.alpha_sigma_from_log_snr(log_snr_s)
    c = -jnp.expm1(log_snr_t - log_snr_s)
    mean = alpha_s * ((1.0 - c) * x / alpha_t + c * x0)
    noise = jax.random.normal(jax.random.fold_in(step_rng, k), x.shape)
    return mean + jnp.sqrt(c) * sigma_s * noise

  def ddim_step(k, x):
    s = ts[k + 1]
    x0, eps, _, _, _ = estimate(x, ts[k])
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    return alpha_s * x0 + sigma_s * eps

  def dpmpp_step(k, carry):
    x, x0_prev, h_prev = carry
    t, s = ts[k], ts[k + 1]
    x0, _, log_snr_t, _, sigma_t = estimate(x, t)
    log_snr_s = schedule.log_snr(s)
    alpha_s, sigma_s = schedules.alpha_sigma_from_log_snr(log_snr_s)
    h = 0.5 * (log_snr_s - log_snr_t)  # step in lambda = log(alpha / sigma)
    r = h_prev / h
    d_second = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    d = jnp.where(k == 0, x0, d_second)
    x_s = (sigma_s / sigma_t) * x - alpha_s * jnp.expm1(-h) * d
    return x_s, x0, h

  if sampler == "edm_heun":
    return edm.heun(estimate, schedule, x, ts)
  if sampler == "ddpm":
    x = jax.lax.fori_loop(0, num_steps - 1, ddpm_step, x)
  elif sampler == "ddim":
    x = jax.lax.fori_loop(0, num_steps - 1, ddim_step, x)
  else:
    carry = (x, jnp.zeros_like(x), jnp.ones((), jnp.float32))
    x, _, _ = jax.lax.fori_loop(0, num_steps - 1, dpmpp_step, carry)
  x0, _, _, _, _ = estimate(x, ts[-1])
  return x0
