"""Gradient guidance as pure ``denoise_fn -> denoise_fn`` transforms.

A guide adds the gradient of a scalar function of x_t to the score. With
x_t = alpha x0 + sigma eps the score of the noised data is
grad log p(x_t) = -eps_hat / sigma, so guiding by a function f with scale s,

  eps' = eps_hat - s sigma grad_x f(x_t, t),

which for s = 1 and f = log p(y | x_t) is the eps of the class-conditional
p(x_t | y), whose score is grad log p(x_t) + grad log p(y | x_t) (Bayes). The same shift in
the other parametrisations (Tweedie: x0_hat = (x_t + sigma^2 score) / alpha):

  x0' = x0_hat + s (sigma^2 / alpha) grad f,   v' = v_hat - s (sigma / alpha) grad f.

The prediction is converted to (x0, eps) with ``process.x0_eps_from_prediction``,
shifted, and converted back with ``process.target`` (the prediction of an (x0, eps) pair).

* ``classifier_guidance``: f = log p(y | x_t), a classifier trained on noised
  inputs (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
  Synthesis", Alg. 1-2: eps' = eps - sqrt(1 - alpha_bar) grad log p(y | x_t)).
* ``similarity_guidance``: f = a similarity (text-image or image-image), as in
  Semantic Diffusion Guidance (Liu et al. 2023, "More Control for Free! Image
  Synthesis with Semantic Diffusion Guidance"). ``on="x_t"`` evaluates it on the
  noisy input (a noise-aware guide: SDG's fine-tuned CLIP, GLIDE's noised CLIP);
  ``on="x0"`` on the denoiser's x0 estimate (a guide trained on clean images, as
  the forward guidance of Bansal et al. 2023, "Universal Guidance for Diffusion
  Models"), so the gradient flows through the denoiser.

Both take and return a ``denoise_fn(x_t, t) -> prediction`` (t of shape [B]),
so they compose with each other and with classifier-free guidance:
``classifier_guidance(cfg_denoise_fn, ...)`` guides the CFG prediction.

Gradients are per example: ``jax.grad`` of the sum over the batch, which is the
per-example gradient only when example b's value depends on x_t[b] alone (no
batch statistics, no cross-example attention) in the guide and, for
``on="x0"``, in the denoiser.
"""

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion import process

# Where similarity_guidance evaluates the similarity: the noisy input or the x0 estimate.
GUIDE_ON = ("x_t", "x0")


def _check_scale(scale):
  """Raises unless a concrete scale is finite; returns whether it is exactly 0."""
  try:
    value = np.asarray(scale, np.float64)
  except jax.errors.TracerArrayConversionError:
    return False  # traced (e.g. a jitted sweep over scales): nothing to check here
  except (TypeError, ValueError) as e:
    raise ValueError(f"scale={scale!r} must be a finite number or [B] array") from e
  if not np.all(np.isfinite(value)):
    raise ValueError(f"scale={scale!r} must be finite")
  return bool(np.all(value == 0.0))


def _check_per_example(value, x, name):
  if value.shape != (x.shape[0],):
    raise ValueError(
        f"{name} returned shape {value.shape}; expected one value per example, shape "
        f"({x.shape[0]},), for x of shape {x.shape}"
    )


def _summed(fn, t, name):
  """x -> sum_b fn(x, t)[b], checking that fn returns shape [B]."""

  def total(x):
    value = fn(x, t)
    _check_per_example(value, x, name)
    return jnp.sum(value)

  return total


def _shift(pred, x_t, t, grad, *, scale, schedule, prediction):
  """The prediction whose eps is eps_hat - scale sigma grad (module docstring)."""
  alpha, sigma = schedule.alpha_sigma(t)
  x0, eps = process.x0_eps_from_prediction(pred, x_t, alpha, sigma, prediction)
  a, s = process.broadcast_to(alpha, x_t), process.broadcast_to(sigma, x_t)
  delta = process.broadcast_to(jnp.asarray(scale, grad.dtype), x_t) * s * grad
  return process.target(x0 + (s / a) * delta, eps - delta, alpha, sigma, prediction)


def _on_x_t(denoise_fn, fn, name, scale, schedule, prediction):
  """denoise_fn guided by grad_{x_t} of fn(x_t, t) -> [B]."""
  process.check_prediction(prediction)
  if _check_scale(scale):
    return denoise_fn
  kw = dict(scale=scale, schedule=schedule, prediction=prediction)

  def guided(x_t, t):
    grad = jax.grad(_summed(fn, t, name))(x_t)
    return _shift(denoise_fn(x_t, t), x_t, t, grad, **kw)

  return guided


def classifier_guidance(denoise_fn, log_prob_fn, *, scale, schedule, prediction):
  """Classifier guidance (Dhariwal & Nichol 2021): a guided denoise_fn.

  eps' = eps_hat - scale * sigma_t * grad_x log p(y | x_t); for v and x0
  prediction the same shift is applied through (x0, eps) (module docstring).
  With scale = 1 and the exact p(y | x_t) this is the exact eps of p(x_t | y);
  scale > 1 follows the score of p(x_t) p(y | x_t)^scale (sharper samples; not
  the diffusion of one distribution); scale = 0 returns ``denoise_fn`` itself.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> prediction``, t of shape [B].
    log_prob_fn: ``log_prob_fn(x_t, t) -> [B]``, log p(y | x_t) with the target
      y closed over; differentiable in x_t. Examples must be independent: the
      gradient is ``jax.grad`` of its sum over the batch.
    scale: guidance scale, finite; a scalar or one per example [B].
    schedule: the ``Schedule`` giving alpha_t, sigma_t.
    prediction: what denoise_fn predicts, "eps", "v" or "x0" (returned alike).
  Returns:
    ``guided(x_t, t) -> prediction``: one denoiser pass plus the guide's
    forward and backward pass.
  """
  return _on_x_t(denoise_fn, log_prob_fn, "log_prob_fn", scale, schedule, prediction)


def similarity_guidance(denoise_fn, similarity_fn, *, scale, schedule, prediction, on="x_t"):
  """Semantic (e.g. CLIP) guidance (SDG, Liu et al. 2023): a guided denoise_fn.

  Classifier guidance with log p(y | x_t) replaced by a similarity F to the
  guiding text or image (closed over by ``similarity_fn``):

  * ``on="x_t"``: eps' = eps_hat - scale sigma_t grad_{x_t} F(x_t, t), for a
    guide that accepts noisy inputs. Costs the guide's backward pass only.
  * ``on="x0"``: eps' = eps_hat - scale sigma_t grad_{x_t} F(x0_hat(x_t, t), t),
    for a guide trained on clean images. The gradient flows through the
    denoiser: a denoiser (U-Net) backward pass per step, on top of the guide's.
    x0_hat is not thresholded here; clip inside similarity_fn if the guide
    needs inputs in [-1, 1].

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> prediction``, t of shape [B].
    similarity_fn: ``similarity_fn(x, t) -> [B]``, higher = closer to the
      guide; x is x_t or the x0 estimate (see ``on``), t the diffusion time.
      Examples must be independent: the gradient is ``jax.grad`` of the sum
      over the batch.
    scale: guidance scale, finite; a scalar or one per example [B].
    schedule: the ``Schedule`` giving alpha_t, sigma_t.
    prediction: what denoise_fn predicts, "eps", "v" or "x0" (returned alike).
    on: "x_t" or "x0", where the similarity is evaluated.
  Returns:
    ``guided(x_t, t) -> prediction``.
  """
  if on not in GUIDE_ON:
    raise ValueError(f"Unknown on={on!r}; allowed values: {', '.join(GUIDE_ON)}")
  if on == "x_t":
    return _on_x_t(denoise_fn, similarity_fn, "similarity_fn", scale, schedule, prediction)
  process.check_prediction(prediction)
  if _check_scale(scale):
    return denoise_fn
  kw = dict(scale=scale, schedule=schedule, prediction=prediction)

  def guided(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)

    def total(x):
      pred = denoise_fn(x, t)
      x0, _ = process.x0_eps_from_prediction(pred, x, alpha, sigma, prediction)
      return _summed(similarity_fn, t, "similarity_fn")(x0), pred

    grad, pred = jax.grad(total, has_aux=True)(x_t)
    return _shift(pred, x_t, t, grad, **kw)

  return guided
