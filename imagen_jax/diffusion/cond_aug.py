"""Noise-conditioning augmentation of the low-res input of SR stages.

Imagen (§2.4, App. B.1) corrupts the low-resolution conditioning image with
Gaussian noise at an "augmentation time" and tells the super-resolution
network that time. During training the time is drawn uniformly from
[aug_min, aug_max] per example; at sampling it is a fixed level (paper: 0 for
the best FID, 0.1-0.3 for more variation; DeepFloyd IF uses 0.25).
"""

import jax
import jax.numpy as jnp

from imagen_jax.diffusion import process


def augment_lowres(lowres, rng, *, schedule, aug_range=(0.0, 1.0), aug_level=None):
  """Noises the low-res image; returns (noised_lowres, aug_t [B]).

  Args:
    lowres: [B, h, w, C] conditioning image in [-1, 1].
    rng: PRNG key.
    schedule: the ``Schedule`` that maps aug_t to the noise level.
    aug_range: (min, max) of the uniform training distribution of aug_t.
    aug_level: a fixed aug_t (scalar) for sampling; overrides aug_range.
  """
  lo, hi = aug_range
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"aug_range={aug_range} must satisfy 0 <= min <= max <= 1")
  t_rng, noise_rng = jax.random.split(rng)
  batch = lowres.shape[0]
  if aug_level is None:
    aug_t = jax.random.uniform(t_rng, (batch,), jnp.float32, lo, hi)
  else:
    aug_t = jnp.full((batch,), aug_level, jnp.float32)
  noise = jax.random.normal(noise_rng, lowres.shape, jnp.float32)
  noised = process.q_sample(lowres, aug_t, noise, schedule)
  # aug_t == 0 means "no augmentation": keep the image exactly (the clipped
  # schedule would otherwise still add sigma(0) of noise).
  clean = process.broadcast_to(aug_t == 0.0, lowres)
  return jnp.where(clean, lowres, noised), aug_t


BLUR_RADIUS = 3  # the Gaussian kernel spans 2 * BLUR_RADIUS + 1 pixels per axis


def blur_lowres(lowres, sigma):
  """Separable Gaussian blur of each image by its own `sigma` (low-res pixels; [B] or a
  scalar; 0 leaves the image exactly), edges replicated: the blurring conditioning
  augmentation of Ho et al. 2021 (Cascaded Diffusion Models, §3.2), which removes detail an
  SR stage would otherwise copy from its input, so it draws that detail from the text.

  Args:
    lowres: [B, h, w, C] images.
    sigma: the blur's standard deviation per image.
  """
  lowres = jnp.asarray(lowres, jnp.float32)
  batch = lowres.shape[0]
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,))
  offsets = jnp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=jnp.float32)
  safe = jnp.maximum(sigma, 1e-6)[:, None]
  weights = jnp.exp(-0.5 * (offsets[None, :] / safe) ** 2)
  delta = (offsets == 0).astype(jnp.float32)[None, :]
  weights = jnp.where((sigma > 0)[:, None], weights, delta)
  weights = weights / weights.sum(-1, keepdims=True)  # [B, K]
  r = BLUR_RADIUS
  padded = jnp.pad(lowres, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
  h, w = lowres.shape[1], lowres.shape[2]
  rows = sum(weights[:, k, None, None, None] * padded[:, k : k + h, :, :] for k in range(2 * r + 1))
  return sum(weights[:, k, None, None, None] * rows[:, :, k : k + w, :] for k in range(2 * r + 1))
