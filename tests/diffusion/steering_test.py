"""Classifier and similarity guidance, against closed forms.

The data is a 1-D Gaussian mixture, class y = component: x0 | y ~ N(mu_y, s_y^2).
Under a VP schedule x_t | y ~ N(alpha mu_y, v_y) with v_y = alpha^2 s_y^2 + sigma^2,
so the exact unconditional denoiser and the exact class posterior p(y | x_t) are
closed forms. The same code (``xp`` = numpy or jax.numpy) gives float64 references.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion

MU = np.array([-2.0, 0.5, 2.5])
S = np.array([0.3, 0.5, 0.2])
PI = np.array([0.3, 0.5, 0.2])
PREDICTIONS = ("eps", "v", "x0")


def _log_joint(x, alpha, sigma, xp):
  """log pi_k + log N(x; alpha mu_k, v_k): [B, K] for x [B, 1], alpha, sigma [B]."""
  alpha, sigma = alpha[:, None], sigma[:, None]
  m, v = alpha * MU, alpha**2 * S**2 + sigma**2
  return xp.log(PI) - 0.5 * (x - m) ** 2 / v - 0.5 * xp.log(2 * np.pi * v), m, v


def _logsumexp(a, xp):
  top = xp.max(a, axis=-1, keepdims=True)
  return top + xp.log(xp.sum(xp.exp(a - top), axis=-1, keepdims=True))


def _mixture_x0_eps(x, alpha, sigma, xp):
  """Exact E[x0 | x_t] and E[eps | x_t] = -sigma grad log p(x_t) of the mixture."""
  lj, m, v = _log_joint(x, alpha, sigma, xp)
  r = xp.exp(lj - _logsumexp(lj, xp))  # p(k | x_t)
  a, s = alpha[:, None], sigma[:, None]
  x0 = xp.sum(r * (MU + a * S**2 / v * (x - m)), axis=-1, keepdims=True)
  eps = s * xp.sum(r * (x - m) / v, axis=-1, keepdims=True)
  return x0, eps


def _class_x0_eps(x, y, alpha, sigma):
  """Exact E[x0 | x_t, y] and E[eps | x_t, y] (numpy float64)."""
  a, s = alpha[:, None], sigma[:, None]
  mu, s2 = MU[y][:, None], S[y][:, None] ** 2
  v = a**2 * s2 + s**2
  return mu + a * s2 / v * (x - a * mu), s * (x - a * mu) / v


def _as_prediction(x0, eps, alpha, sigma, prediction):
  a, s = alpha[:, None], sigma[:, None]
  return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]


def _denoiser(schedule, prediction):
  def denoise_fn(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)
    x0, eps = _mixture_x0_eps(x_t, alpha, sigma, jnp)
    return _as_prediction(x0, eps, alpha, sigma, prediction)

  return denoise_fn


def _log_prob(schedule, y):
  """x_t, t -> log p(y | x_t) [B] of the mixture."""

  def log_prob_fn(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)
    lj, _, _ = _log_joint(x_t, alpha, sigma, jnp)
    return (jnp.take_along_axis(lj, y[:, None], axis=1) - _logsumexp(lj, jnp))[:, 0]

  return log_prob_fn


def _grid(schedule, n_x=41, seed=0):
  """x in [-4, 4], every class, t in [0.02, 0.98]: ([B, 1] x, [B] y, [B] t)."""
  x = np.repeat(np.linspace(-4.0, 4.0, n_x), len(MU))[:, None]
  y = np.tile(np.arange(len(MU)), n_x)
  t = np.random.default_rng(seed).uniform(0.02, 0.98, size=len(y))
  alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(t))
  return x, y, t, alpha, sigma


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_guided_equals_exact_class_conditional_pointwise(name, prediction):
  # Unconditional mixture + grad log p(y | x_t) (scale 1) is the exact prediction of x_t | y,
  # whose eps sigma (x - alpha mu_y) / v_y is written independently, in float64.
  schedule = diffusion.get_schedule(name)
  x, y, t, alpha, sigma = _grid(schedule)
  guided = diffusion.classifier_guidance(
      _denoiser(schedule, prediction),
      _log_prob(schedule, jnp.asarray(y)),
      scale=1.0,
      schedule=schedule,
      prediction=prediction,
  )
  got = np.asarray(guided(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)))
  want = _as_prediction(*_class_x0_eps(x, y, alpha, sigma), alpha, sigma, prediction)
  # float32 vs float64: predictions are O(1-10) (x0 ~ sigma^2 / alpha at t = 0.98).
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  # And the guidance really moved the prediction (the classes differ from the mixture).
  unguided = np.asarray(_denoiser(schedule, prediction)(jnp.asarray(x), jnp.asarray(t)))
  assert np.max(np.abs(unguided - want)) > 0.1


def _sample_classes(prediction, *, n, sampler, num_steps, scale=1.0, seed=0):
  """n samples per class from the exact mixture denoiser + classifier guidance (cosine)."""
  schedule = diffusion.get_schedule("cosine")
  y = jnp.repeat(jnp.arange(len(MU)), n)
  guided = diffusion.classifier_guidance(
      _denoiser(schedule, prediction),
      _log_prob(schedule, y),
      scale=scale,
      schedule=schedule,
      prediction=prediction,
  )
  x = diffusion.sample(
      guided,
      (len(MU) * n, 1),
      jax.random.PRNGKey(seed),
      schedule=schedule,
      sampler=sampler,
      num_steps=num_steps,
      prediction=prediction,
  )
  x = np.asarray(x, np.float64).reshape(len(MU), n)
  return x.mean(axis=1), x.std(axis=1)


# alpha at the first grid time is at most 1 / sqrt(1 + 80^2) = 0.0125 (the log-SNR grid's
# sigma_max = 80; the uniform-t grid starts at t = 1, alpha = 4.5e-5). The sampler starts
# from N(0, 1) rather than x_T | y ~ N(alpha_T mu_y, ~1): a mean bias of -alpha_T mu_y s_y.
ALPHA_T_MAX = 1.0 / np.sqrt(1.0 + 80.0**2)


@pytest.mark.parametrize(
    "prediction,sampler,num_steps",
    [("eps", "ddim", 512), ("v", "dpmpp_2m", 256), ("x0", "dpmpp_2m", 256)],
)
def test_guided_sampling_reproduces_class_conditionals(prediction, sampler, num_steps):
  # Sampling the unconditional mixture + classifier guidance (scale 1) gives x0 | y.
  n = 20_000
  mean, std = _sample_classes(prediction, n=n, sampler=sampler, num_steps=num_steps)
  # Tolerances: 5 Monte-Carlo standard errors (s_y / sqrt(n) for the mean, s_y / sqrt(2n) for
  # the std), plus for the mean the prior mismatch alpha_T |mu_y| s_y (above; up to 0.031 s_y)
  # and for the std 0.015 s_y of discretisation (measured with the exact score and the noise
  # standardised, either grid: ddim at 512 steps loses <= 0.9% of the std, dpmpp_2m at 256
  # <= 0.4%, most of it the blur of the last x0 estimate).
  mean_tol = 5 * S / np.sqrt(n) + ALPHA_T_MAX * np.abs(MU) * S + 0.002 * S
  std_tol = 5 * S / np.sqrt(2 * n) + 0.015 * S
  report = f"mean {mean} vs {MU} (tol {mean_tol}); std {std} vs {S} (tol {std_tol})"
  assert np.all(np.abs(mean - MU) < mean_tol), report
  assert np.all(np.abs(std - S) < std_tol), report


def test_scale_above_one_sharpens():
  # scale 3 follows p(x_t) p(y | x_t)^3: every class's samples are narrower than at scale 1.
  kw = dict(n=4000, sampler="dpmpp_2m", num_steps=128)
  _, std_1 = _sample_classes("eps", scale=1.0, **kw)
  _, std_3 = _sample_classes("eps", scale=3.0, **kw)
  assert np.all(std_3 < 0.9 * std_1), (std_1, std_3)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_scale_zero_is_identity(prediction):
  schedule = diffusion.get_schedule("cosine")
  denoise_fn = _denoiser(schedule, prediction)
  log_prob_fn = _log_prob(schedule, jnp.zeros(4, jnp.int32))
  kw = dict(scale=0.0, schedule=schedule, prediction=prediction)
  assert diffusion.classifier_guidance(denoise_fn, log_prob_fn, **kw) is denoise_fn
  for on in diffusion.GUIDE_ON:
    assert diffusion.similarity_guidance(denoise_fn, log_prob_fn, on=on, **kw) is denoise_fn
  # A traced scale of 0 (no short cut) gives the same values, to jit-vs-eager rounding.
  x, t = jnp.linspace(-2, 2, 4)[:, None], jnp.full((4,), 0.5)
  traced = jax.jit(
      lambda s: diffusion.classifier_guidance(
          denoise_fn, log_prob_fn, scale=s, schedule=schedule, prediction=prediction
      )(x, t)
  )
  np.testing.assert_allclose(traced(0.0), denoise_fn(x, t), rtol=1e-6, atol=1e-7)


def _grad_log_prob(x, y, alpha, sigma):
  """grad_x log p(y | x_t) of the mixture, by hand (numpy float64)."""
  lj, m, v = _log_joint(x, alpha, sigma, np)
  r = np.exp(lj - _logsumexp(lj, np))
  score_k = -(x - m) / v
  return np.take_along_axis(score_k, y[:, None], axis=1) - np.sum(r * score_k, 1, keepdims=True)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_composes_with_cfg_and_similarity(prediction):
  # classifier(similarity_x_t(cfg(cond, uncond))) = the hand-written sum of the three terms.
  schedule = diffusion.get_schedule("cosine")
  x, y, t, alpha, sigma = _grid(schedule, n_x=9)
  w, s_cls, s_sim, target = 3.0, 2.0, 0.5, 1.2
  # cond: the exact prediction of class 0; uncond: the mixture's.
  y0 = np.zeros_like(y)

  def cond(x_t, t):
    a, s = schedule.alpha_sigma(t)
    a64, s64 = np.asarray(a, np.float64), np.asarray(s, np.float64)
    pred = _as_prediction(
        *_class_x0_eps(np.asarray(x_t, np.float64), y0, a64, s64), a64, s64, prediction
    )
    return jnp.asarray(pred, jnp.float32)

  uncond = _denoiser(schedule, prediction)
  cfg_fn = lambda x_t, t: diffusion.cfg(cond(x_t, t), uncond(x_t, t), w)
  sim = lambda x_t, t: -0.5 * jnp.sum((x_t - target) ** 2, axis=-1)
  kw = dict(schedule=schedule, prediction=prediction)
  guided = diffusion.similarity_guidance(cfg_fn, sim, scale=s_sim, on="x_t", **kw)
  guided = diffusion.classifier_guidance(
      guided, _log_prob(schedule, jnp.asarray(y)), scale=s_cls, **kw
  )
  got = np.asarray(guided(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)))

  a, s = alpha[:, None], sigma[:, None]
  pred_c = _as_prediction(*_class_x0_eps(x, y0, alpha, sigma), alpha, sigma, prediction)
  pred_u = _as_prediction(*_mixture_x0_eps(x, alpha, sigma, np), alpha, sigma, prediction)
  grad = s_cls * _grad_log_prob(x, y, alpha, sigma) + s_sim * (target - x)
  # eps' = eps - sigma grad; in v: v' = v - (sigma / alpha) grad (module docstring of steering).
  factor = s if prediction == "eps" else s / a
  want = pred_u + w * (pred_c - pred_u) - factor * grad
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_similarity_on_x_t_equals_classifier_guidance(prediction):
  schedule = diffusion.get_schedule("linear")
  x, y, t, _, _ = _grid(schedule, n_x=9)
  x, t = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
  fns = (_denoiser(schedule, prediction), _log_prob(schedule, jnp.asarray(y)))
  kw = dict(scale=2.5, schedule=schedule, prediction=prediction)
  np.testing.assert_array_equal(
      diffusion.similarity_guidance(*fns, on="x_t", **kw)(x, t),
      diffusion.classifier_guidance(*fns, **kw)(x, t),
  )


def _expected(pred_x0, pred_eps, grad, scale, x, alpha, sigma, prediction):
  """The guided prediction from eps' = eps - scale sigma grad (numpy float64)."""
  a, s = alpha[:, None], sigma[:, None]
  eps = pred_eps - scale * s * grad
  x0 = pred_x0 + scale * s**2 / a * grad
  np.testing.assert_allclose(a * x0 + s * eps, x, atol=1e-9)  # still a consistent pair
  return _as_prediction(x0, eps, alpha, sigma, prediction)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_similarity_on_x0_linear_gaussian(prediction):
  # Data N(0, c^2 I): x0_hat = k x_t, k = alpha c^2 / (alpha^2 c^2 + sigma^2). For
  # F(x) = -|x - target|^2 / 2 the gradient through the denoiser is k (target - k x_t);
  # on x_t it is (target - x_t).
  schedule, c, scale, d = diffusion.get_schedule("cosine"), 0.7, 1.5, 4
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, d))
  t = np.linspace(0.1, 0.9, 6)
  target = rng.uniform(-1, 1, size=d)
  alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(t))
  a, s = alpha[:, None], sigma[:, None]
  var = a**2 * c**2 + s**2
  k = a * c**2 / var

  def denoise_fn(x_t, t):
    al, sg = schedule.alpha_sigma(t)
    al, sg = al[:, None], sg[:, None]
    v = al**2 * c**2 + sg**2
    return _as_prediction(al * c**2 / v * x_t, sg * x_t / v, al[:, 0], sg[:, 0], prediction)

  sim = lambda x, t: -0.5 * jnp.sum((x - target) ** 2, axis=-1)
  kw = dict(scale=scale, schedule=schedule, prediction=prediction)
  x32, t32 = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
  x0_hat, eps_hat = k * x, s * x / var
  for on, grad in (("x0", k * (target - k * x)), ("x_t", target - x)):
    got = diffusion.similarity_guidance(denoise_fn, sim, on=on, **kw)(x32, t32)
    want = _expected(x0_hat, eps_hat, grad, scale, x, alpha, sigma, prediction)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=on)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_similarity_on_x0_finite_difference(prediction):
  # Nonlinear denoiser (the mixture) and similarity: grad_{x_t} F(x0_hat(x_t)) against a
  # float64 central difference (step 1e-5: error ~1e-10).
  schedule, scale = diffusion.get_schedule("cosine"), 0.8
  x = np.linspace(-3.0, 3.0, 13)[:, None]
  t = np.linspace(0.1, 0.9, 13)
  alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(t))
  sim_np = lambda x: -np.log1p((x - 1.0) ** 2)[:, 0]
  h = lambda x: sim_np(_mixture_x0_eps(x, alpha, sigma, np)[0])
  grad = ((h(x + 1e-5) - h(x - 1e-5)) / 2e-5)[:, None]
  sim = lambda x, t: -jnp.log1p((x - 1.0) ** 2)[:, 0]
  guided = diffusion.similarity_guidance(
      _denoiser(schedule, prediction),
      sim,
      on="x0",
      scale=scale,
      schedule=schedule,
      prediction=prediction,
  )
  got = guided(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  x0_hat, eps_hat = _mixture_x0_eps(x, alpha, sigma, np)
  want = _expected(x0_hat, eps_hat, grad, scale, x, alpha, sigma, prediction)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.max(np.abs(grad)) > 0.1  # the term is not negligible


def test_per_example_and_traced_scale():
  schedule = diffusion.get_schedule("cosine")
  x, y, t, _, _ = _grid(schedule, n_x=5)
  x, t = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
  fns = (_denoiser(schedule, "v"), _log_prob(schedule, jnp.asarray(y)))
  kw = dict(schedule=schedule, prediction="v")
  scales = jnp.linspace(0.0, 4.0, len(y))
  per_example = diffusion.classifier_guidance(*fns, scale=scales, **kw)(x, t)
  one_by_one = [
      diffusion.classifier_guidance(*fns, scale=float(s), **kw)(x, t)[i]
      for i, s in enumerate(scales)
  ]
  np.testing.assert_allclose(per_example, np.stack(one_by_one), rtol=1e-6, atol=1e-6)
  traced = jax.jit(lambda s: diffusion.classifier_guidance(*fns, scale=s, **kw)(x, t))
  np.testing.assert_allclose(
      traced(2.0), diffusion.classifier_guidance(*fns, scale=2.0, **kw)(x, t), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_inverts_x0_eps_from_prediction(name, prediction):
  schedule = diffusion.get_schedule(name)
  rng = np.random.default_rng(2)
  x0, noise = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(2))
  t = jnp.array([0.0, 0.001, 0.5, 0.999, 1.0])
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = diffusion.q_sample(x0, t, noise, schedule)
  pred = diffusion.target(x0, noise, alpha, sigma, prediction)
  x0_hat, eps_hat = diffusion.x0_eps_from_prediction(pred, x_t, alpha, sigma, prediction)
  back = diffusion.target(x0_hat, eps_hat, alpha, sigma, prediction)
  # x0_hat (eps) or eps_hat (x0) carries x_t's rounding / alpha (or / sigma) at the ends;
  # the prediction itself comes back to float32 rounding.
  np.testing.assert_allclose(back, pred, rtol=1e-5, atol=1e-5)


def _simple():
  schedule = diffusion.get_schedule("cosine")
  denoise_fn = lambda x_t, t: 0.5 * x_t
  log_prob_fn = lambda x_t, t: -jnp.sum(x_t**2, axis=-1)
  x, t = jnp.ones((4, 3)), jnp.full((4,), 0.5)
  return schedule, denoise_fn, log_prob_fn, x, t


def test_bad_inputs():
  schedule, denoise_fn, log_prob_fn, x, t = _simple()
  kw = dict(scale=1.0, schedule=schedule)
  with pytest.raises(ValueError, match="'noise'"):
    diffusion.classifier_guidance(denoise_fn, log_prob_fn, prediction="noise", **kw)
  for on in ("x_t", "x0"):
    with pytest.raises(ValueError, match="'noise'"):
      diffusion.similarity_guidance(denoise_fn, log_prob_fn, prediction="noise", on=on, **kw)
  with pytest.raises(ValueError, match="on='xt'.*x_t, x0"):
    diffusion.similarity_guidance(denoise_fn, log_prob_fn, prediction="eps", on="xt", **kw)
  for bad in (float("nan"), float("inf"), -float("inf"), jnp.array([1.0, jnp.nan])):
    with pytest.raises(ValueError, match="scale=.*(nan|inf).*must be finite"):
      diffusion.classifier_guidance(
          denoise_fn, log_prob_fn, scale=bad, schedule=schedule, prediction="eps"
      )
    with pytest.raises(ValueError, match="must be finite"):
      diffusion.similarity_guidance(
          denoise_fn, log_prob_fn, scale=bad, schedule=schedule, prediction="eps", on="x0"
      )
  with pytest.raises(ValueError, match="scale='big'"):
    diffusion.classifier_guidance(
        denoise_fn, log_prob_fn, scale="big", schedule=schedule, prediction="eps"
    )


@pytest.mark.parametrize(
    "bad_fn,shape", [(lambda x, t: jnp.sum(x), "()"), (lambda x, t: x, "(4, 3)")]
)
def test_wrong_shape_of_log_prob_or_similarity(bad_fn, shape):
  schedule, denoise_fn, _, x, t = _simple()
  kw = dict(scale=1.0, schedule=schedule, prediction="v")
  want = rf"returned shape {re.escape(shape)}; expected one value per example, shape \(4,\)"
  with pytest.raises(ValueError, match="log_prob_fn " + want):
    diffusion.classifier_guidance(denoise_fn, bad_fn, **kw)(x, t)
  for on in diffusion.GUIDE_ON:
    with pytest.raises(ValueError, match="similarity_fn " + want):
      diffusion.similarity_guidance(denoise_fn, bad_fn, on=on, **kw)(x, t)
