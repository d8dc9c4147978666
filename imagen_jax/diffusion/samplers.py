"""Samplers over any pure ``denoise_fn(x_t, t) -> prediction``.

Every sampler walks a decreasing grid of N evaluation times t_0 > ... > t_{N-1}
(``time_grid``: see time_grid.py; by default uniform in t, t_k = 1 - k / N, for ddpm and
ddim, uniform in log-SNR down to sigma 0.03 for dpmpp_2m ("trimmed_log_snr"), and for
edm_heun EDM's rho = 7 grid in
sigma = sigma_t / alpha_t ("karras")). Steps k < N-1 move x from t_k to t_{k+1}; the last evaluation (at t_{N-1})
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

Conditioning on an image (both combine):
* inpainting, ``known=, mask=, resample=R``: RePaint (Lugmayr et al. 2022), inpaint.py.
  Every step, the last evaluation included, is wrapped: known pixels of x_t replaced by
  the known image noised to t, the step, and R - 1 repeats after a jump back to t. N steps
  take R N evaluations (edm_heun R (2N - 1)). RePaint is biased; resampling reduces the bias
  until it plateaus (tests/diffusion/inpaint_test.py gives the figures).
* SDEdit (Meng et al. 2022), ``init=, start_t=s``: init noised to the grid's first time
  (x = alpha init + sigma eps), then the sampler's grid over [0, s] instead of [0, 1]
  (time_grid.times(t_max=s)) with the same N evaluations. s = 1 is the ordinary grid.

The grid matters at small N. On Gaussian data N(0.3, 0.2^2) with its exact denoiser,
dpmpp_2m at N = 25 loses 19% (linear schedule) / 5% (cosine) of the std on the
``uniform_t`` grid, whose last evaluation at t = 1/N still blurs; on ``log_snr`` it is
within 1.5% (benchmarks/sampler_grid.py prints the table).
"""

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import edm
from imagen_jax.diffusion import guidance
from imagen_jax.diffusion import inpaint
from imagen_jax.diffusion import process
from imagen_jax.diffusion import schedules
from imagen_jax.diffusion import time_grid as time_grid_lib

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "edm_heun")


def _check_sampler(sampler):
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; allowed values: {', '.join(SAMPLERS)}")


def _check_sdedit(init, start_t, shape):
  """Validates SDEdit's (init, start_t); returns (init float32 or None, start_t float)."""
  if init is None and start_t is None:
    return None, 1.0
  if init is None or start_t is None:
    given, missing = ("init", "start_t") if start_t is None else ("start_t", "init")
    raise ValueError(f"{given} needs {missing} too (SDEdit takes both); {missing}=None")
  try:
    value = float(start_t)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(f"start_t={start_t!r} must be a number in (0, 1]") from e
  if not 0.0 < value <= 1.0:
    raise ValueError(f"start_t={start_t!r} must be in (0, 1]")
  init = jnp.asarray(init, jnp.float32)
  if init.shape != tuple(shape):
    raise ValueError(f"init has shape {init.shape}, expected the sample shape {tuple(shape)}")
  return init, value


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
    known=None,
    mask=None,
    resample=1,
    init=None,
    start_t=None,
):
  """Draws samples x0 of the given shape.

  Args:
    denoise_fn: pure ``denoise_fn(x_t, t) -> prediction``; t has shape [B].
    shape: output shape [B, ...].
    rng: PRNG key (the initial noise and, for ddpm, each step's noise via
      ``fold_in(rng, k)``).
    schedule: a ``Schedule``.
    sampler: "ddpm", "ddim", "dpmpp_2m" or "edm_heun".
    num_steps: N >= 1: network evaluations (edm_heun: Heun steps, 2N - 1 evaluations), over
      [0, start_t] with SDEdit; RePaint's resample multiplies them by R.
    prediction: what denoise_fn predicts: "eps", "v" or "x0".
    threshold: "none", "static" or "dynamic" (applied to every x0 estimate).
    percentile: the dynamic-thresholding percentile.
    max_value: optional cap of the dynamic threshold (DeepFloyd IF).
    x_init: optional initial noise of ``shape`` (else drawn from rng); with init, the noise
      that init is noised with.
    time_grid: "log_snr", "karras" or "uniform_t" (time_grid.py); None: the sampler's
      default ("karras" for edm_heun, else "uniform_t").
    known: inpainting (RePaint, inpaint.py): the known image, broadcastable to ``shape``;
      returned unchanged (as float32) where mask is True. Needs mask.
    mask: boolean or 0/1, broadcastable to ``shape`` (e.g. [B, H, W, 1]): True where a pixel
      is known and kept. Before every step the known pixels of x_t are replaced by known
      noised to t with fresh noise; the other pixels are sampled.
    resample: R >= 1 (int): each step is done R times, with a jump back to its start time
      (x_t ~ q(x_t | x_s)) before each repeat, which harmonises the unknown pixels with the
      known ones. Needs known and mask. The jump back is stochastic, so R > 1 makes ddim,
      dpmpp_2m and edm_heun stochastic; dpmpp_2m takes a first-order step after each jump
      back and keeps its history otherwise (inpaint.py says why).
    init: SDEdit (Meng et al. 2022): an image of ``shape`` to edit, noised to the grid's
      first time t_0 (~ start_t) as alpha init + sigma x_init; the grid is the sampler's over
      [0, start_t]. Needs start_t.
    start_t: SDEdit's start time in (0, 1]: small keeps the output close to init; 1 is the
      ordinary grid (from almost pure noise). Needs init. With known/mask too, resample > 1
      makes the unknown pixels forget init (tests/diffusion/inpaint_test.py).
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
  known, mask = inpaint.check_known_mask(known, mask, shape)
  resample = inpaint.check_resample(resample, mask is not None)
  init, start_t = _check_sdedit(init, start_t, shape)
  if time_grid is None:
    time_grid = time_grid_lib.default_time_grid(sampler)
  ts = time_grid_lib.times(schedule, num_steps, time_grid, t_max=start_t)
  batch = shape[0]
  init_rng, step_rng = jax.random.split(rng)
  if x_init is None:
    x = jax.random.normal(init_rng, shape, jnp.float32)
  else:
    x = jnp.asarray(x_init, jnp.float32)
    if x.shape != tuple(shape):
      raise ValueError(f"x_init has shape {x.shape}, expected {tuple(shape)}")
  if init is not None:
    alpha_0, sigma_0 = schedule.alpha_sigma(ts[0])
    x = alpha_0 * init + sigma_0 * x

  def estimate(x, t):
    """(x0_hat, eps_hat, log_snr, alpha, sigma) at scalar time t."""
    log_snr = schedule.log_snr(t)
    alpha, sigma = schedules.alpha_sigma_from_log_snr(log_snr)
    pred = denoise_fn(x, jnp.full((batch,), t, jnp.float32))
    x0, _ = process.x0_eps_from_prediction(pred.astype(jnp.float32), x, alpha, sigma, prediction)
    x0 = guidance.apply_threshold(x0, threshold, percentile, max_value)
    eps = (x - alpha * x0) / sigma
    return x0, eps, log_snr, alpha, sigma

  # Steps move state = (x, *history) from ts[k] to ts[k + 1]; restart: a first-order step.
  def ddpm_step(k, state, key, restart):
    del restart
    (x,) = state
    t, s = ts[k], ts[k + 1]
    x0, _, log_snr_t, alpha_t, _ = estimate(x, t)
    log_snr_s = schedule.log_snr(s)
    alpha_s, sigma_s = schedules.alpha_sigma_from_log_snr(log_snr_s)
    c = -jnp.expm1(log_snr_t - log_snr_s)
    mean = alpha_s * ((1.0 - c) * x / alpha_t + c * x0)
    noise = jax.random.normal(key, x.shape)
    return (mean + jnp.sqrt(c) * sigma_s * noise,)

  def ddim_step(k, state, key, restart):
    del key, restart
    s = ts[k + 1]
    x0, eps, _, _, _ = estimate(state[0], ts[k])
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    return (alpha_s * x0 + sigma_s * eps,)

  def dpmpp_step(k, state, key, restart):
    del key
    x, x0_prev, h_prev = state
    t, s = ts[k], ts[k + 1]
    x0, _, log_snr_t, _, sigma_t = estimate(x, t)
    log_snr_s = schedule.log_snr(s)
    alpha_s, sigma_s = schedules.alpha_sigma_from_log_snr(log_snr_s)
    h = 0.5 * (log_snr_s - log_snr_t)  # step in lambda = log(alpha / sigma)
    r = h_prev / h
    d_second = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    d = jnp.where((k == 0) | restart, x0, d_second)
    x_s = (sigma_s / sigma_t) * x - alpha_s * jnp.expm1(-h) * d
    return x_s, x0, h

  def heun_step(k, state, key, restart):
    del key, restart
    return (edm.vp_heun_step(estimate, schedule, state[0], ts[k], ts[k + 1]),)

  def final_step(k, state, key, restart):
    """The last evaluation, at ts[N - 1]: its x0 estimate (the step to zero noise)."""
    del key, restart
    return (estimate(state[0], ts[k])[0],) + tuple(state[1:])

  step = {"ddpm": ddpm_step, "ddim": ddim_step, "dpmpp_2m": dpmpp_step, "edm_heun": heun_step}
  step = step[sampler]
  state = (x, jnp.zeros_like(x), jnp.ones((), jnp.float32)) if sampler == "dpmpp_2m" else (x,)
  if mask is not None:
    return _repaint(step, final_step, state, ts, schedule, step_rng, known, mask, resample)
  if sampler == "edm_heun":
    return edm.heun(estimate, schedule, x, ts)
  state = jax.lax.fori_loop(
      0, num_steps - 1, lambda k, st: step(k, st, jax.random.fold_in(step_rng, k), False), state
  )
  return final_step(num_steps - 1, state, None, False)[0]


def _repaint(step, final_step, state, ts, schedule, rng, known, mask, resample):
  """The sampler's steps, then its last evaluation, each wrapped by RePaint (inpaint.py)."""
  kw = dict(known=known, mask=mask, resample=resample)

  def body(k, state):
    log_snr_t, log_snr_s = schedule.log_snr(ts[k]), schedule.log_snr(ts[k + 1])
    key = jax.random.fold_in(rng, k)
    return inpaint.repaint_step(step, k, state, key, log_snr_t=log_snr_t, log_snr_s=log_snr_s, **kw)

  last = ts.shape[0] - 1
  state = jax.lax.fori_loop(0, last, body, state)
  state = inpaint.repaint_step(
      final_step,
      last,
      state,
      jax.random.fold_in(rng, last),
      log_snr_t=schedule.log_snr(ts[last]),
      log_snr_s=jnp.inf,
      **kw,
  )
  return jnp.where(mask, known, state[0])
