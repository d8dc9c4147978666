"""The diffusion training loss for eps, v and x0 objectives.

The loss is the per-example mean squared error between the network output and
the objective's target, optionally weighted with min-SNR-gamma (Hang et al.
2023; imagen-pytorch defaults to gamma=5). Expressed as a weight on the x0
error, min-SNR-gamma is min(snr, gamma); for the eps and v objectives that
becomes min(snr, gamma) / snr and min(snr, gamma) / (snr + 1) respectively.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import process
from imagen_jax.diffusion import schedules

WEIGHTINGS = ("none", "min_snr")


def loss_weight(log_snr, prediction, weighting="none", min_snr_gamma=5.0):
  """Per-example weight of the MSE for the given objective and weighting."""
  process.check_prediction(prediction)
  if weighting == "none":
    return jnp.ones_like(log_snr)
  if weighting != "min_snr":
    raise ValueError(
        f"Unknown loss weighting {weighting!r}; allowed values: {', '.join(WEIGHTINGS)}"
    )
  snr = jnp.exp(log_snr)
  clipped = jnp.minimum(snr, min_snr_gamma)
  if prediction == "eps":
    return clipped / snr
  if prediction == "v":
    return clipped / (snr + 1.0)
  return clipped


def diffusion_loss(
    denoise_fn: Callable,
    x0,
    rng,
    *,
    schedule,
    prediction: str = "eps",
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
    t: jnp.ndarray | None = None,
):
  """Per-example diffusion loss [B].

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> prediction``, t of shape [B].
    x0: clean data [B, ...].
    rng: PRNG key for t (unless given) and the noise.
    schedule: a ``Schedule``.
    prediction: "eps", "v" or "x0" - what ``denoise_fn`` predicts.
    weighting: "none" or "min_snr".
    min_snr_gamma: gamma of min-SNR weighting.
    t: optional times [B]; sampled uniformly in [0, 1] when None.
  Returns:
    (loss [B], aux) where aux has ``t`` and the unweighted ``mse`` [B].
  """
  process.check_prediction(prediction)
  t_rng, noise_rng = jax.random.split(rng)
  batch = x0.shape[0]
  if t is None:
    t = jax.random.uniform(t_rng, (batch,), jnp.float32)
  noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  log_snr = schedule.log_snr(t)
  alpha, sigma = schedules.alpha_sigma_from_log_snr(log_snr)
  x_t = process.broadcast_to(alpha, x0) * x0 + process.broadcast_to(sigma, x0) * noise
  pred = denoise_fn(x_t, t).astype(jnp.float32)
  tgt = process.target(x0, noise, alpha, sigma, prediction)
  mse = jnp.mean(jnp.square(pred - tgt), axis=tuple(range(1, x0.ndim)))
  weight = loss_weight(log_snr, prediction, weighting, min_snr_gamma)
  return weight * mse, {"t": t, "mse": mse}
