"""Random training masks of a GLIDE-style inpainting stage (pure array math).

GLIDE (Nichol et al. 2022, §4) fine-tunes its inpainting model with random regions of the
training images erased, the rest given to the network with a mask channel. Here a region is
one axis-aligned box per example, its sides drawn uniformly in [min_frac, max_frac] of the
image side and its position uniformly inside the image; with probability `p_nothing_known`
the whole image is unknown (no known pixels: the stage stays a text-to-image model, which is
what it samples when no mask is given).
"""

import jax
import jax.numpy as jnp


def random_box_masks(
    rng, batch: int, resolution: int, *, min_frac=0.25, max_frac=0.75, p_nothing_known=0.1
):
  """bool [batch, resolution, resolution, 1], True where a pixel is known (outside the box)."""
  if not 0.0 < min_frac <= max_frac <= 1.0:
    raise ValueError(f"mask box fractions ({min_frac}, {max_frac}) need 0 < min <= max <= 1")
  if not 0.0 <= p_nothing_known <= 1.0:
    raise ValueError(f"p_nothing_known={p_nothing_known} must lie in [0, 1]")
  r = resolution
  lo = max(1, int(round(min_frac * r)))
  hi = max(lo, int(round(max_frac * r)))
  k_h, k_w, k_y, k_x, k_none = jax.random.split(rng, 5)
  h = jax.random.randint(k_h, (batch,), lo, hi + 1)
  w = jax.random.randint(k_w, (batch,), lo, hi + 1)
  y0 = jnp.floor(jax.random.uniform(k_y, (batch,)) * (r - h + 1)).astype(jnp.int32)
  x0 = jnp.floor(jax.random.uniform(k_x, (batch,)) * (r - w + 1)).astype(jnp.int32)
  ys = jnp.arange(r)[None, :, None]
  xs = jnp.arange(r)[None, None, :]
  inside = (
      (ys >= y0[:, None, None])
      & (ys < (y0 + h)[:, None, None])
      & (xs >= x0[:, None, None])
      & (xs < (x0 + w)[:, None, None])
  )
  nothing = jax.random.uniform(k_none, (batch,)) < p_nothing_known
  known = ~inside & ~nothing[:, None, None]
  return known[..., None]
