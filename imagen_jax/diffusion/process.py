"""Forward process and conversions between eps, v and x0 predictions.

With x_t = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1) and
v = alpha eps - sigma x0 (Salimans & Ho 2022):
  x0 = alpha x_t - sigma v,     eps = sigma x_t + alpha v,
  x0 = (x_t - sigma eps) / alpha,   eps = (x_t - alpha x0) / sigma.
"""

import jax.numpy as jnp

PREDICTIONS = ("eps", "v", "x0")


def check_prediction(prediction: str) -> str:
  if prediction not in PREDICTIONS:
    raise ValueError(f"Unknown prediction {prediction!r}; allowed values: {', '.join(PREDICTIONS)}")
  return prediction


def broadcast_to(a, x):
  """Reshapes a per-example array [B] to broadcast against x [B, ...]."""
  a = jnp.asarray(a)
  if a.ndim == 0:
    return a
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(x0, t, noise, schedule):
  """Samples x_t = alpha(t) x0 + sigma(t) noise; t is a scalar or [B]."""
  alpha, sigma = schedule.alpha_sigma(t)
  return broadcast_to(alpha, x0) * x0 + broadcast_to(sigma, x0) * noise


def target(x0, noise, alpha, sigma, prediction):
  """The regression target of the given prediction type: the prediction (eps | v | x0) of a
  consistent pair x_t = alpha x0 + sigma noise, so also the inverse of
  ``x0_eps_from_prediction`` (without dividing by alpha or sigma)."""
  check_prediction(prediction)
  alpha, sigma = broadcast_to(alpha, x0), broadcast_to(sigma, x0)
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  return alpha * noise - sigma * x0


def x0_eps_from_prediction(pred, x_t, alpha, sigma, prediction):
  """Converts a network prediction into (x0, eps) estimates."""
  check_prediction(prediction)
  alpha, sigma = broadcast_to(alpha, x_t), broadcast_to(sigma, x_t)
  if prediction == "eps":
    return (x_t - sigma * pred) / alpha, pred
  if prediction == "x0":
    return pred, (x_t - alpha * pred) / sigma
  return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred


def prediction_from_x0(x0, x_t, alpha, sigma, prediction):
  """The prediction (eps | v | x0) that corresponds to an x0 estimate."""
  check_prediction(prediction)
  eps = (x_t - broadcast_to(alpha, x_t) * x0) / broadcast_to(sigma, x_t)
  return target(x0, eps, alpha, sigma, prediction)
