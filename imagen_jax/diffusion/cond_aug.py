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
