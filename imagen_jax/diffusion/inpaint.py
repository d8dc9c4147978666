"""RePaint inpainting (Lugmayr et al. 2022) as pure helpers of ``samplers.sample``.

A sampler step moves x from t to s < t (the last one to zero noise, s = 0, where it returns
its x0 estimate). RePaint wraps every step:
  1. replace: the known pixels of x_t become the known image noised to t with fresh noise,
     alpha_t x_known + sigma_t eps (``replace_known``);
  2. step: the sampler's own step t -> s;
  3. resample (R - 1 times): jump back, x_t ~ q(x_t | x_s), the forward transition
     x_t = (alpha_t / alpha_s) x_s + sigma_t sqrt(1 - exp(log_snr_t - log_snr_s)) eps
     (``renoise``; from s = 0 it is q(x_t | x0)), then redo 1 and 2.
The sample returned has exactly x_known on the known pixels. Replacement happens at step
boundaries only: edm_heun's second evaluation inside a step sees its Euler prediction as is.

Replacement alone (R = 1) conditions the unknown pixels only through the denoiser's view of
the noised known ones, which is biased; the jump back lets every repeat harmonise the unknown
pixels with the known ones at the same noise level. The jump back is stochastic whatever the
sampler, so with R > 1 the deterministic samplers (ddim, dpmpp_2m, edm_heun) become
stochastic too: a repeat redoes their deterministic step from a re-noised x_t. dpmpp_2m's
history (the previous x0 estimate and step size) is kept from the previous step into a step's
first pass, whose x_t continues the trajectory, but each repeat after a jump back takes a
first-order step (as the sampler's first step does from fresh noise): the re-noised x_t lies
on another trajectory, and the 2M extrapolation between its x0 estimate and the old one
would amplify the jump's noise instead of the trajectory's curvature.
"""

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion import schedules


def check_known_mask(known, mask, shape):
  """Validates (known, mask) for a sample of ``shape``; returns them broadcast to it.

  Returns (known float32, mask bool) of ``shape``, or (None, None) when neither is given.
  """
  if known is None and mask is None:
    return None, None
  if known is None or mask is None:
    given, missing = ("known", "mask") if mask is None else ("mask", "known")
    raise ValueError(f"{given} needs {missing} too (inpainting takes both); {missing}=None")
  shape = tuple(shape)
  for name, value in (("known", known), ("mask", mask)):
    value_shape = tuple(jnp.shape(value))
    try:
      broadcast = np.broadcast_shapes(value_shape, shape)
    except ValueError:
      broadcast = None
    if broadcast != shape:
      raise ValueError(f"{name} has shape {value_shape}, which does not broadcast to {shape}")
  try:
    values = np.asarray(jax.device_get(mask))  # explicit: allowed under jax_transfer_guard
  except jax.errors.TracerArrayConversionError:
    values = None  # traced: the values cannot be checked
  if values is not None and values.dtype != bool and not np.all((values == 0) | (values == 1)):
    bad = np.unique(values[(values != 0) & (values != 1)])[:3]
    raise ValueError(f"mask must be boolean or 0/1; it holds {bad.tolist()}")
  known = jnp.broadcast_to(jnp.asarray(known, jnp.float32), shape)
  return known, jnp.broadcast_to(jnp.asarray(mask).astype(bool), shape)


def check_resample(resample, inpainting: bool) -> int:
  """resample must be an int >= 1; > 1 only with known and mask."""
  if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)):
    raise ValueError(f"resample={resample!r} must be an integer >= 1")
  if resample < 1:
    raise ValueError(f"resample={resample} must be >= 1")
  if resample > 1 and not inpainting:
    raise ValueError(f"resample={resample} needs known and mask (it resamples inpainting)")
  return int(resample)


def replace_known(x, known, mask, log_snr, noise):
  """x with its known pixels replaced by alpha known + sigma noise at ``log_snr``."""
  alpha, sigma = schedules.alpha_sigma_from_log_snr(log_snr)
  return jnp.where(mask, alpha * known + sigma * noise, x)


def renoise(x_s, log_snr_s, log_snr_t, noise):
  """A draw of x_t ~ q(x_t | x_s) (t noisier than s; log_snr_s = inf: x_s is clean)."""
  alpha_s, _ = schedules.alpha_sigma_from_log_snr(log_snr_s)
  alpha_t, sigma_t = schedules.alpha_sigma_from_log_snr(log_snr_t)
  var = -jnp.expm1(log_snr_t - log_snr_s)  # = 1 - alpha_{t|s}^2 sigma_s^2 / sigma_t^2
  return (alpha_t / alpha_s) * x_s + sigma_t * jnp.sqrt(var) * noise


def repaint_step(step, k, state, key, *, known, mask, resample, log_snr_t, log_snr_s):
  """RePaint's step t -> s around ``step(k, state, key, restart) -> state``.

  ``state`` is a tuple whose first element is x (at t on entry, at s on return; the rest is a
  multistep sampler's history); ``restart`` is True on the repeats after a jump back.
  """

  def once(r, state, restart):
    replace_key, step_key, _ = jax.random.split(jax.random.fold_in(key, r), 3)
    noise = jax.random.normal(replace_key, state[0].shape)
    x = replace_known(state[0], known, mask, log_snr_t, noise)
    return step(k, (x,) + tuple(state[1:]), step_key, restart)

  def again(r, state):
    jump_key = jax.random.split(jax.random.fold_in(key, r - 1), 3)[2]
    x_t = renoise(state[0], log_snr_s, log_snr_t, jax.random.normal(jump_key, state[0].shape))
    return once(r, (x_t,) + tuple(state[1:]), True)

  return jax.lax.fori_loop(1, resample, again, once(0, state, False))
