"""SDEdit, ``diffusion.sample(init=, start_t=)``, against closed forms.

1. The grid: N evaluations over [0, s] (uniform_t: t_k = s (1 - k / N); the sigma grids start
   at sigma(s)); s = 1 is the ordinary grid, and from init = 0 the ordinary sample itself.
2. The data distribution is kept: x ~ N(MU, SIGMA) (gaussian_data.py, 10,000 draws, whose own
   KL to the population is 0.002), edited at s = 0.5 with the exact denoiser, is still
   N(MU, SIGMA). Measured KL(N(sample mean, cov) || N(MU, SIGMA)), cosine: ddim@25 0.039,
   ddpm@50 0.033 (log-SNR grid; exact float64 propagation 0.038, 0.037), dpmpp_2m@25 0.013,
   edm_heun@12 (karras) 0.007; tolerance 0.08. The default uniform-t grid blurs (its last
   evaluation at t = s / N): ddim@25 0.57, ddpm@50 0.32, dpmpp_2m@25 0.47. A denoiser of 1.5x
   the covariance gives 0.17.
3. A fixed x (scalar data N(0.3, 0.2^2)): x_s = alpha x + sigma eps, then
   * the probability-flow ODE (ddim, dpmpp_2m, edm_heun) maps x_s to
     mu + s0 (x_s - alpha mu) / sqrt(v), v = alpha^2 s0^2 + sigma^2, so the output is
     N(mu + s0 alpha (x - mu) / sqrt(v), s0^2 sigma^2 / v);
   * the reverse SDE (ddpm) draws from the posterior p(x0 | x_s) = N(mu + alpha s0^2 / v
     (x_s - alpha mu), s0^2 sigma^2 / v), so the output is N(mu + alpha^2 s0^2 / v (x - mu),
     s0^2 sigma^2 / v (1 + alpha^2 s0^2 / v)).
   Small s keeps the output close to x: at s = 0.05 (cosine, sigma 0.08) the output std is
   0.08 (ODE) / 0.11 (SDE) around x pulled 10-20% of the way to mu. Measured (4,000 samples
   per x, x in {-0.2, 0.3, 0.9}): mean errors <= 1.6% of s0, std errors <= 2.6%; tolerance
   3% and 6%, while the ODE and SDE forms differ by 12% in std at s = 0.2.
"""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion
from imagen_jax.diffusion import time_grid

_SPEC = importlib.util.spec_from_file_location(
    "gaussian_data", pathlib.Path(__file__).parent / "gaussian_data.py"
)
g = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(g)

COSINE = diffusion.get_schedule("cosine")
MU0, S0 = 0.3, 0.2


def scalar_denoiser(schedule, mu=MU0, s=S0):
  def denoise_fn(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x_t - alpha * mu)
    return (x_t - alpha * x0) / sigma

  return denoise_fn


def _calls(sampler, **kw):
  schedule = diffusion.get_schedule("linear")
  calls, fn = [], scalar_denoiser(schedule)

  def counting(x_t, t):
    calls.append(float(t[0]))
    return fn(x_t, t)

  with jax.disable_jit():  # fori_loop runs its body in Python: one call per evaluation
    diffusion.sample(
        counting, (2, 1), jax.random.PRNGKey(0), schedule=schedule, sampler=sampler, **kw
    )
  return schedule, np.asarray(calls)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_n_evaluations_over_zero_to_start_t(sampler):
  init = jnp.full((2, 1), 0.5)
  _, ordinary = _calls(sampler, num_steps=4)
  _, full = _calls(sampler, num_steps=4, init=init, start_t=1.0)
  np.testing.assert_array_equal(full, ordinary)
  schedule, half = _calls(sampler, num_steps=4, init=init, start_t=0.5)
  assert len(half) == len(ordinary)
  ts = np.unique(half)[::-1]
  grid = time_grid.default_time_grid(sampler)
  if grid != "uniform_t":  # a sigma grid: from sigma(0.5) down to the grid's sigma_min
    np.testing.assert_allclose(ts[0], 0.5, rtol=1e-4)
    sigma = np.exp(-0.5 * np.asarray(schedule.log_snr(ts)))
    floor = time_grid.TRIMMED_SIGMA_MIN if grid == "trimmed_log_snr" else time_grid.SIGMA_MIN
    np.testing.assert_allclose(sigma[-1], floor, rtol=1e-3)
  else:
    np.testing.assert_allclose(half, 0.5 * (1 - np.arange(4) / 4), rtol=1e-6)


@pytest.mark.parametrize("grid", diffusion.TIME_GRIDS)
@pytest.mark.parametrize("name", diffusion.SCHEDULES)
def test_time_grids_t_max(grid, name):
  schedule = diffusion.get_schedule(name)
  ts = time_grid.times(schedule, 7, grid)
  np.testing.assert_array_equal(time_grid.times(schedule, 7, grid, t_max=1.0), ts)
  short = np.asarray(time_grid.times(schedule, 7, grid, t_max=0.3))
  assert np.all(np.diff(short) < 0) and short[0] <= 0.3 + 1e-6, short
  if grid == "uniform_t":
    np.testing.assert_allclose(short, 0.3 * (1 - np.arange(7) / 7), rtol=1e-6)
  else:  # same sigma_min, sigma_max lowered to sigma(0.3)
    np.testing.assert_allclose(short[0], 0.3, rtol=1e-4)
    np.testing.assert_allclose(short[-1], np.asarray(ts)[-1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_start_t_one_from_zero_is_ordinary_sampling(sampler):
  """From init = 0 at s = 1, x_s = sigma(t_0) x_init: uniform_t's t_0 = 1 has sigma = 1 in
  float32 (cosine), so ddpm/ddim return the ordinary sample bit for bit; the sigma grids
  (dpmpp_2m's trimmed_log_snr, edm_heun's karras) start at sigma_VE = 80, where
  sigma = 0.99992."""
  fn = scalar_denoiser(COSINE)
  x_init = jax.random.normal(jax.random.PRNGKey(3), (64, 1))
  kw = dict(schedule=COSINE, sampler=sampler, num_steps=8, x_init=x_init)
  ordinary = diffusion.sample(fn, (64, 1), jax.random.PRNGKey(0), **kw)
  edited = diffusion.sample(
      fn, (64, 1), jax.random.PRNGKey(0), init=jnp.zeros((64, 1)), start_t=1.0, **kw
  )
  if time_grid.default_time_grid(sampler) != "uniform_t":
    np.testing.assert_allclose(edited, ordinary, rtol=1e-3, atol=1e-4)
  else:
    np.testing.assert_array_equal(edited, ordinary)


def _edit_data(sampler, num_steps, grid, sigma_data=g.SIGMA, n=10000):
  x = np.random.default_rng(1).multivariate_normal(g.MU, g.SIGMA, n).astype(np.float32)
  run = functools.partial(
      diffusion.sample,
      g.denoiser(COSINE, sigma_data=sigma_data),
      (n,) + g.SHAPE,
      schedule=COSINE,
      sampler=sampler,
      num_steps=num_steps,
      time_grid=grid,
      init=x.reshape((n,) + g.SHAPE),
      start_t=0.5,
  )
  return g.moments(jax.jit(run)(jax.random.PRNGKey(0)), np.arange(g.D))


@pytest.mark.parametrize(
    "sampler,num_steps,grid",
    [("ddim", 25, "log_snr"), ("ddpm", 50, "log_snr"), ("dpmpp_2m", 25, "log_snr"),
     ("edm_heun", 12, "karras")],
)  # fmt: skip
def test_editing_data_keeps_the_data_distribution(sampler, num_steps, grid):
  mean, cov = _edit_data(sampler, num_steps, grid)
  kl = g.kl(mean, cov, g.MU, g.SIGMA)
  print(f"{sampler}@{num_steps} ({grid}): KL to the data {kl:.4f}")
  assert kl < 0.08, kl
  if sampler in ("ddim", "ddpm"):  # and the samples follow the exact float64 propagation
    m, c = g.propagate(
        sampler, COSINE, num_steps, inpaint=False, start_t=0.5, init=(g.MU, g.SIGMA), time_grid=grid
    )
    assert g.kl(mean, cov, m, c) < 0.01


def test_a_wrong_denoiser_fails_the_data_check():
  mean, cov = _edit_data("ddim", 25, "log_snr", sigma_data=1.5 * g.SIGMA)
  assert g.kl(mean, cov, g.MU, g.SIGMA) > 0.12


def closed_form(x, t, sde):
  """Mean and std of the edit of a fixed x at the grid's first time t (docstring, 3.)."""
  alpha, sigma = (float(v) for v in COSINE.alpha_sigma(t))
  v = alpha**2 * S0**2 + sigma**2
  if sde:
    gain = alpha**2 * S0**2 / v
    return MU0 + gain * (x - MU0), np.sqrt(S0**2 * sigma**2 / v * (1 + gain))
  return MU0 + S0 * alpha * (x - MU0) / np.sqrt(v), S0 * sigma / np.sqrt(v)


@pytest.mark.parametrize(
    "sampler,num_steps,start_t",
    [("ddim", 25, 0.05), ("dpmpp_2m", 25, 0.3), ("ddpm", 100, 0.2), ("edm_heun", 12, 0.5)],
)
def test_editing_a_fixed_input_follows_the_closed_form(sampler, num_steps, start_t):
  xs, per = np.array([-0.2, 0.3, 0.9]), 4000
  init = np.repeat(xs, per)[:, None].astype(np.float32)
  run = functools.partial(
      diffusion.sample,
      scalar_denoiser(COSINE),
      init.shape,
      schedule=COSINE,
      sampler=sampler,
      num_steps=num_steps,
      init=init,
      start_t=start_t,
  )
  out = np.asarray(jax.jit(run)(jax.random.PRNGKey(0)), np.float64).reshape(3, per)
  t0 = time_grid.times(COSINE, num_steps, time_grid.default_time_grid(sampler), t_max=start_t)[0]
  mean, std = closed_form(xs, t0, sde=sampler == "ddpm")
  mean_err = np.abs(out.mean(1) - mean) / S0
  std_err = np.abs(out.std(1) / std - 1)
  print(f"{sampler}@{num_steps} s={start_t}: mean {mean_err.max():.4f}, std {std_err.max():.3f}")
  assert np.all(mean_err < 0.03) and np.all(std_err < 0.06), (mean_err, std_err)
  other_mean, other_std = closed_form(xs, t0, sde=sampler != "ddpm")
  if start_t >= 0.2:  # the check tells the ODE's edit from the SDE's
    assert np.any(np.abs(out.std(1) / other_std - 1) > 0.06) or np.any(
        np.abs(out.mean(1) - other_mean) / S0 > 0.03
    )
  # The distance to the input (0.08-0.10 at s = 0.05, 0.4-0.5 at s = 0.5 for x = -0.2, 0.9).
  rms = np.sqrt(((out - xs[:, None]) ** 2).mean(1))
  np.testing.assert_allclose(rms, np.sqrt((mean - xs) ** 2 + std**2), rtol=0.05)


def test_bad_sdedit_arguments():
  run = functools.partial(
      diffusion.sample, lambda x, t: x, (2, 4, 4, 3), jax.random.PRNGKey(0), schedule=COSINE
  )
  init = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match=r"init has shape \(2, 4, 4, 1\).*\(2, 4, 4, 3\)"):
    run(init=jnp.zeros((2, 4, 4, 1)), start_t=0.5)
  for bad in (0.0, -0.5, 1.5, float("nan")):
    with pytest.raises(ValueError, match=rf"start_t={bad!r} must be in \(0, 1\]"):
      run(init=init, start_t=bad)
  with pytest.raises(ValueError, match="start_t='half' must be a number"):
    run(init=init, start_t="half")
  with pytest.raises(ValueError, match="init needs start_t too.*start_t=None"):
    run(init=init)
  with pytest.raises(ValueError, match="start_t needs init too.*init=None"):
    run(start_t=0.5)
