"""Classifier-free guidance and x0 thresholding (Imagen §2.2-2.3)."""

import jax.numpy as jnp

THRESHOLDS = ("none", "static", "dynamic")
# Imagen's dynamic-thresholding percentile (§2.3): the default everywhere
# (samplers, pipeline, cascade sampler, stage configs, config checks).
DEFAULT_PERCENTILE = 0.995


def cfg(pred_cond, pred_uncond, scale):
  """Classifier-free guidance: uncond + scale * (cond - uncond).

  scale=1 is the conditional prediction, scale=0 the unconditional one.
  """
  return pred_uncond + scale * (pred_cond - pred_uncond)


def static_threshold(x0):
  """Clips the x0 estimate to [-1, 1]."""
  return jnp.clip(x0, -1.0, 1.0)


def dynamic_threshold(x0, percentile=DEFAULT_PERCENTILE, max_value=None):
  """Imagen's dynamic thresholding, per example.

  s = the `percentile` quantile of |x0| over all non-batch axes, s = max(s, 1)
  (and min(s, max_value) when given, as DeepFloyd IF caps it), and the result
  is clip(x0, -s, s) / s. Examples already within [-1, 1] are unchanged.
  """
  if not 0.0 < percentile <= 1.0:
    raise ValueError(f"percentile={percentile} must be in (0, 1]")
  x0 = jnp.asarray(x0)
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = jnp.quantile(flat, percentile, axis=1)
  s = jnp.maximum(s, 1.0)
  if max_value is not None:
    s = jnp.minimum(s, max_value)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def apply_threshold(x0, threshold="none", percentile=DEFAULT_PERCENTILE, max_value=None):
  """Applies the named threshold ("none" | "static" | "dynamic") to x0."""
  if threshold == "none":
    return x0
  if threshold == "static":
    return static_threshold(x0)
  if threshold == "dynamic":
    return dynamic_threshold(x0, percentile, max_value)
  raise ValueError(f"Unknown threshold {threshold!r}; allowed values: {', '.join(THRESHOLDS)}")
