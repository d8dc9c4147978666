"""RePaint inpainting, ``diffusion.sample(known=, mask=, resample=)``, against closed forms.

Data: the correlated Gaussian of gaussian_data.py (8 coordinates, 2 x 2 pixels x 2 channels,
correlations up to 0.9 x 0.8), its exact denoiser, 4 coordinates (2 pixels) known 0.4-1.6
stds off the mean. The unknown ones should follow the exact conditional N(m, C) (float64);
the error is KL(N(sample mean, sample cov) || N(m, C)), 5,000 samples (Monte-Carlo bias
~0.0014). With ddim and ddpm every RePaint operation is affine plus Gaussian noise, so the
algorithm's own output distribution is also exact (``gaussian_data.propagate``): the samples
match it to KL <= 0.003 (tolerance 0.01) at R = 1 and R = 20, i.e. the implementation is
RePaint, and its remaining error is the method's.

RePaint is biased (the known pixels are re-noised independently of the unknown ones), and
resampling reduces the bias until it plateaus; exact KL to the conditional, ddim@25 (ddpm@25)
on the log-SNR grid, R = 1, 2, 5, 10, 20, 50:
  linear: 16.9, 4.9, 0.74, 0.25, 0.10, 0.06 (6.4, 1.5, 0.37, 0.19, 0.13, 0.13)
  cosine: 15.8, 4.4, 0.70, 0.32, 0.26, 0.28 (5.8, 1.4, 0.38, 0.27, 0.27, 0.31)
The plateau is set by the last noise level: cosine's smallest sigma is 0.0125 (its
log_snr(0) = 8.77), linear's 0.002; at ddim@100, R = 50 linear reaches KL 0.02. The default
uniform-t grid plateaus higher (cosine ddim@50: 12.7, 3.3, 0.76, 0.54, 0.49, 0.48; linear
ddim@25 at 9.2, its last evaluation at t = 0.04). At R = 20 the unknown means are within
0.3 conditional stds, the stds within +10% (they were 2-3 stds and +50% off at R = 1).
Measured here (linear, R = 1 -> 20): ddim@25 17.2 -> 0.11, ddpm@25 6.6 -> 0.15, dpmpp_2m@25
14.1 -> 0.10, edm_heun@16 (karras) 24.4 -> 0.21; tolerance KL < 0.3 at R = 20 and 20x less
than at R = 1. dpmpp_2m takes a first-order step after each jump back (inpaint.py); keeping
its 2M history instead measured KL 1.96 at R = 10 and 267 at R = 20 (cosine, log-SNR grid):
the extrapolation across a jump is unstable.
"""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion
from imagen_jax.diffusion import inpaint
from imagen_jax.diffusion import time_grid

_SPEC = importlib.util.spec_from_file_location(
    "gaussian_data", pathlib.Path(__file__).parent / "gaussian_data.py"
)
g = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(g)

SCHEDULE = diffusion.get_schedule("linear")
N = 5000
COND_MEAN, COND_COV = g.conditional()
U = np.ix_(g.UNKNOWN, g.UNKNOWN)
GRID = {"ddim": "log_snr", "ddpm": "log_snr", "dpmpp_2m": "log_snr", "edm_heun": "karras"}
STEPS = {"ddim": 25, "ddpm": 25, "dpmpp_2m": 25, "edm_heun": 16}


def inpainted(sampler, resample, **kw):
  """5,000 inpainted samples [N, 8], float64; checks the known coordinates are exact."""
  run = functools.partial(
      diffusion.sample,
      g.denoiser(SCHEDULE),
      (N,) + g.SHAPE,
      schedule=SCHEDULE,
      sampler=sampler,
      num_steps=STEPS[sampler],
      time_grid=GRID[sampler],
      known=g.known_image(N),
      mask=g.MASK,
      resample=resample,
      **kw,
  )
  x = np.asarray(jax.jit(run)(jax.random.PRNGKey(0))).reshape(N, g.D)
  np.testing.assert_array_equal(x[:, g.KNOWN], np.broadcast_to(np.float32(g.X_K), (N, 4)))
  return x.astype(np.float64)


def kl_to_conditional(mean, cov):
  return g.kl(mean, cov, COND_MEAN, COND_COV)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_follow_repaints_exact_gaussian_output(sampler):
  """The samples follow the float64 propagation of RePaint; resampling cuts its bias."""
  exact = {
      r: g.propagate(sampler, SCHEDULE, STEPS[sampler], resample=r, time_grid=GRID[sampler])
      for r in (1, 20)
  }
  x = inpainted(sampler, 20)
  mean, cov = g.moments(x)
  m20, c20 = exact[20][0][g.UNKNOWN], exact[20][1][U]
  m1, c1 = exact[1][0][g.UNKNOWN], exact[1][1][U]
  assert g.kl(mean, cov, m20, c20) < 0.01
  assert g.kl(mean, cov, m1, c1) > 1.0  # the check tells R = 20 from R = 1
  kl_1, kl_20 = kl_to_conditional(m1, c1), kl_to_conditional(m20, c20)
  print(f"{sampler}: exact KL to the conditional R=1 {kl_1:.3f}, R=20 {kl_20:.3f}")
  assert kl_20 < 0.3 and kl_1 > 20 * kl_20, (kl_1, kl_20)
  assert kl_to_conditional(mean, cov) < 0.3


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "edm_heun"])
def test_resampling_approaches_the_gaussian_conditional(sampler):
  kl_1 = kl_to_conditional(*g.moments(inpainted(sampler, 1)))
  kl_20 = kl_to_conditional(*g.moments(inpainted(sampler, 20)))
  print(f"{sampler}: KL to the conditional R=1 {kl_1:.3f}, R=20 {kl_20:.3f}")
  assert kl_20 < 0.3 and kl_1 > 20 * kl_20, (kl_1, kl_20)


def test_combined_with_sdedit():
  """Inpainting an image-to-image edit, init drawn from the conditional.

  start_t = 0.3, R = 20: the samples follow RePaint's exact output (KL 0.073 to the
  conditional; R = 1: 9.8). Resampling also forgets init in the unknown pixels: their
  correlation with init, at start_t = 0.05, is 0.53-0.60 at R = 1, 0.29-0.39 at R = 2,
  0.05-0.10 at R = 5, ~0 at R = 20 (and at start_t = 0.3 already 0.1 at R = 1: linear's
  sigma^2 there is 0.6).
  """
  rng = np.random.default_rng(2)
  init = np.tile(g.known_image(1).reshape(1, g.D), (N, 1))
  init[:, g.UNKNOWN] = rng.multivariate_normal(COND_MEAN, COND_COV, N)
  init_mean, init_cov = np.zeros(g.D), np.zeros((g.D, g.D))
  init_mean[g.KNOWN], init_mean[g.UNKNOWN], init_cov[U] = g.X_K, COND_MEAN, COND_COV
  x = inpainted("ddim", 20, init=init.reshape((N,) + g.SHAPE), start_t=0.3)
  mean, cov = g.moments(x)
  m, c = g.propagate(
      "ddim",
      SCHEDULE,
      25,
      resample=20,
      start_t=0.3,
      init=(init_mean, init_cov),
      time_grid="log_snr",
  )
  assert g.kl(mean, cov, m[g.UNKNOWN], c[U]) < 0.01
  assert kl_to_conditional(mean, cov) < 0.15
  x = inpainted("ddim", 1, init=init.reshape((N,) + g.SHAPE), start_t=0.05)
  corr = [np.corrcoef(x[:, i], init[:, i])[0, 1] for i in g.UNKNOWN]
  assert min(corr) > 0.4, corr  # a small start_t keeps the input's draw


def test_renoise_is_the_forward_transition():
  """x_s ~ q(x_s | x0) jumped back to t is distributed as q(x_t | x0), from s = 0 too."""
  x0, n = 0.7, 200_000
  log_snr_s, log_snr_t = SCHEDULE.log_snr(0.3), SCHEDULE.log_snr(0.45)
  alpha_t, sigma_t = diffusion.alpha_sigma_from_log_snr(log_snr_t)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  for x_s, l_s in (
      (
          diffusion.q_sample(jnp.full((n,), x0), 0.3, jax.random.normal(k1, (n,)), SCHEDULE),
          log_snr_s,
      ),
      (jnp.full((n,), x0), jnp.inf),
  ):
    x_t = np.asarray(inpaint.renoise(x_s, l_s, log_snr_t, jax.random.normal(k2, (n,))))
    np.testing.assert_allclose(x_t.mean(), alpha_t * x0, atol=4 * sigma_t / np.sqrt(n))
    np.testing.assert_allclose(x_t.std(), sigma_t, rtol=0.01)


@pytest.mark.parametrize("sampler,evals_per_step", [("ddim", 1), ("dpmpp_2m", 1), ("edm_heun", 2)])
def test_every_step_is_repeated_resample_times(sampler, evals_per_step):
  calls = []
  fn = g.denoiser(SCHEDULE)

  def counting(x_t, t):
    calls.append(float(t[0]))
    return fn(x_t, t)

  kw = dict(schedule=SCHEDULE, sampler=sampler, num_steps=3, known=g.known_image(2), mask=g.MASK)
  with jax.disable_jit():  # fori_loop runs its body in Python: one call per evaluation
    diffusion.sample(counting, (2,) + g.SHAPE, jax.random.PRNGKey(0), resample=3, **kw)
  ts = np.asarray(time_grid.times(SCHEDULE, 3, time_grid.default_time_grid(sampler)))
  steps = [list(ts[k : k + evals_per_step]) for k in range(2)] + [[ts[2]]]
  np.testing.assert_allclose(calls, [t for step in steps for t in 3 * step], rtol=1e-6)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_known_pixels_come_back_unchanged(sampler):
  """NHWC images, an int 0/1 mask [B, H, W, 1], thresholding on: known pixels are exact."""
  shape = (2, 4, 4, 3)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  known = jax.random.uniform(k1, shape, minval=-1.0, maxval=1.0)
  mask = np.asarray(jax.random.bernoulli(k2, 0.5, shape[:3] + (1,)), np.int32)
  fn = lambda x, t: 0.5 * x  # any denoiser
  kw = dict(schedule=SCHEDULE, sampler=sampler, num_steps=3, threshold="dynamic")
  with jax.disable_jit():
    x = diffusion.sample(fn, shape, jax.random.PRNGKey(0), known=known, mask=mask, resample=2, **kw)
    full = diffusion.sample(fn, shape, jax.random.PRNGKey(0), known=known, mask=True, **kw)
  keep = np.broadcast_to(mask.astype(bool), shape)
  np.testing.assert_array_equal(np.asarray(x)[keep], np.asarray(known)[keep])
  assert np.all(np.asarray(x)[~keep] != np.asarray(known)[~keep])
  assert np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1.0)
  np.testing.assert_array_equal(full, known)


def test_bad_inpainting_arguments():
  fn = lambda x, t: x
  run = functools.partial(diffusion.sample, fn, (2, 4, 4, 3), jax.random.PRNGKey(0))
  run = functools.partial(run, schedule=SCHEDULE, num_steps=2)
  known, mask = jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 1), bool)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 4, 3, 1\).*\(2, 4, 4, 3\)"):
    run(known=known, mask=jnp.ones((2, 4, 3, 1), bool))
  with pytest.raises(ValueError, match=r"mask has shape \(3, 4, 4, 1\)"):
    run(known=known, mask=jnp.ones((3, 4, 4, 1), bool))
  with pytest.raises(ValueError, match=r"known has shape \(2, 8, 8, 3\)"):
    run(known=jnp.zeros((2, 8, 8, 3)), mask=mask)
  with pytest.raises(ValueError, match="known needs mask too.*mask=None"):
    run(known=known)
  with pytest.raises(ValueError, match="mask needs known too.*known=None"):
    run(mask=mask)
  with pytest.raises(ValueError, match=r"boolean or 0/1.*\[0.5\]"):
    run(known=known, mask=jnp.full((2, 4, 4, 1), 0.5))
  for bad in (0, -2):
    with pytest.raises(ValueError, match=f"resample={bad} must be >= 1"):
      run(known=known, mask=mask, resample=bad)
  for bad in (1.5, 2.0, "2", True, None):
    with pytest.raises(ValueError, match=f"resample={bad!r} must be an integer"):
      run(known=known, mask=mask, resample=bad)
  with pytest.raises(ValueError, match="resample=3 needs known and mask"):
    run(resample=3)
