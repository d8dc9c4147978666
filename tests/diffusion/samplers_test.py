"""Samplers against the closed-form optimal denoiser of Gaussian data.

For data x0 ~ N(mu, s^2) (per dimension) and x_t = alpha x0 + sigma eps, the
optimal (posterior-mean) denoiser is
  E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu),
from which the optimal eps and v predictions follow. Every sampler driven by
it must reproduce mu and s. Tolerance: 3% of s for both. With 80,000 samples
the Monte-Carlo standard error is 0.35% of s for the mean and 0.25% for the
std, and the measured discretisation error at the step counts used here, on the default
uniform-t grid, is <= 1.2% (cosine: ddpm@500 0.4%, ddim@200 0.6%, dpmpp_2m@50 0.4%;
linear: ddpm@500 1.0%, ddim@200 1.2%, dpmpp_2m@50 0.3%); on the log-SNR grid (mean, std)
<= 1.1% (cosine: ddpm@500 0.2%, 0.6%; ddim@200 0.8%, 0.9%; dpmpp_2m@50 0.8%, 0.4%;
linear: ddpm@500 0.1%, 0.6%; ddim@200 0.8%, 1.1%; dpmpp_2m@50 0.8%, 0.6%), so 3% leaves
room for both while a denoiser with a 1.5x wrong variance (50% error) fails. edm_heun:
edm_test.py; the grids and the step-count goals: time_grid_test.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion

MU, S = 0.3, 0.5
SHAPE = (20000, 4)
STEPS = {"ddpm": 500, "ddim": 200, "dpmpp_2m": 50}


def gaussian_denoiser(schedule, prediction, mu=MU, s=S):
  def denoise_fn(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x_t - alpha * mu)
    eps = (x_t - alpha * x0) / sigma
    return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]

  return denoise_fn


def draw(schedule_name, sampler, steps, prediction, **denoiser_kw):
  schedule = diffusion.get_schedule(schedule_name)
  fn = gaussian_denoiser(schedule, prediction, **denoiser_kw)
  run = jax.jit(
      functools.partial(
          diffusion.sample,
          fn,
          SHAPE,
          schedule=schedule,
          sampler=sampler,
          num_steps=steps,
          prediction=prediction,
      )
  )
  return np.asarray(run(jax.random.PRNGKey(0)), np.float64)


def errors(x):
  return abs(x.mean() - MU) / S, abs(x.std() - S) / S


CASES = [("cosine", smp, pred) for smp in STEPS for pred in ("eps", "v", "x0")] + [
    ("linear", smp, "eps") for smp in STEPS
]


@pytest.mark.parametrize("schedule_name,sampler,prediction", CASES)
def test_reproduces_gaussian_data(schedule_name, sampler, prediction):
  x = draw(schedule_name, sampler, STEPS[sampler], prediction)
  mean_err, std_err = errors(x)
  assert mean_err < 0.03, (mean_err, std_err)
  assert std_err < 0.03, (mean_err, std_err)


@pytest.mark.parametrize(
    "sampler,few,many", [("ddpm", 50, 500), ("ddim", 20, 200), ("dpmpp_2m", 8, 50)]
)
def test_error_shrinks_with_steps(sampler, few, many):
  _, coarse = errors(draw("linear", sampler, few, "eps"))
  _, fine = errors(draw("linear", sampler, many, "eps"))
  assert fine < coarse, (coarse, fine)


@pytest.mark.parametrize("sampler", list(STEPS))
def test_wrong_denoiser_fails_the_check(sampler):
  x = draw("cosine", sampler, STEPS[sampler], "eps", s=1.5 * S)
  assert errors(x)[1] > 0.2
  x = draw("cosine", sampler, STEPS[sampler], "eps", mu=MU + 0.2)
  assert errors(x)[0] > 0.2


def test_thresholding_inside_the_loop_and_determinism():
  schedule = diffusion.get_schedule("cosine")
  # Data far outside [-1, 1]: thresholded samples must still land inside.
  fn = gaussian_denoiser(schedule, "eps", mu=2.0, s=1.0)
  kw = dict(schedule=schedule, sampler="ddim", num_steps=20)
  for mode in ("static", "dynamic"):
    x = diffusion.sample(fn, (4, 64), jax.random.PRNGKey(0), threshold=mode, **kw)
    assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-5
  a = diffusion.sample(
      fn, (4, 64), jax.random.PRNGKey(5), sampler="ddpm", schedule=schedule, num_steps=10
  )
  b = diffusion.sample(
      fn, (4, 64), jax.random.PRNGKey(5), sampler="ddpm", schedule=schedule, num_steps=10
  )
  np.testing.assert_array_equal(a, b)


def test_bad_arguments():
  schedule = diffusion.get_schedule("cosine")
  fn = lambda x, t: x
  with pytest.raises(ValueError, match="ddpm, ddim, dpmpp_2m, edm_heun"):
    diffusion.sample(fn, (1, 2), jax.random.PRNGKey(0), schedule=schedule, sampler="euler")
  with pytest.raises(ValueError, match="eps, v, x0"):
    diffusion.sample(fn, (1, 2), jax.random.PRNGKey(0), schedule=schedule, prediction="noise")
  with pytest.raises(ValueError, match="none, static, dynamic"):
    diffusion.sample(fn, (1, 2), jax.random.PRNGKey(0), schedule=schedule, threshold="clip")
  with pytest.raises(ValueError, match="num_steps"):
    diffusion.sample(fn, (1, 2), jax.random.PRNGKey(0), schedule=schedule, num_steps=0)
