"""Image-shaped and image-embedding conditioning of the base U-Net (GLIDE, DALL·E 2).

* `image_cond_channels > 0`: an image-shaped input at the stage's resolution is
  concatenated to x_t along channels before the first convolution. GLIDE's inpainting
  model takes the masked image and the mask this way (4 channels: RGB x mask, mask;
  `inpaint_condition`), fine-tuned from (here: trained like) the text-to-image base.
* `image_embed_dim > 0`: a CLIP image embedding [B, D] conditions the network as unCLIP's
  decoder does (Ramesh et al. 2022, §2.1): projected and added to the time embedding, and
  projected into `num_image_tokens` extra context tokens that the attention layers attend
  to beside the text tokens. The null embedding (classifier-free guidance) is all zeros,
  as in DALL·E 2, whose decoder sets the embedding to zero for its dropped examples.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from imagen_jax.models import layers

INPAINT_CHANNELS = 4  # the masked RGB image and the mask


def inpaint_condition(image, mask):
  """GLIDE's extra input: [B, H, W, 4] = (image where known, else 0; the mask as 0/1).

  image: [B, H, W, 3] in [-1, 1]; mask: bool, broadcastable to [B, H, W, 1] or [B, H, W, 3]
  with True where a pixel is known (its first channel is used)."""
  mask = jnp.asarray(mask)
  if mask.ndim == 4 and mask.shape[-1] > 1:
    mask = mask[..., :1]
  if mask.ndim == 3:
    mask = mask[..., None]
  m = jnp.broadcast_to(mask, image.shape[:3] + (1,)).astype(jnp.float32)
  return jnp.concatenate([image.astype(jnp.float32) * m, m], axis=-1)


def check_image_inputs(net, x_t, image_cond, image_embed) -> None:
  """ValueError naming the expected and the given shape, at trace time."""
  name = type(net).__name__
  c = int(getattr(net, "image_cond_channels", 0))
  if c == 0 and image_cond is not None:
    raise ValueError(f"{name} has image_cond_channels=0 but got an image_cond input")
  if c and image_cond is None:
    raise ValueError(
        f"{name} takes an image-shaped condition (image_cond_channels={c}, e.g. GLIDE's "
        "masked image and mask) and got none"
    )
  if c and tuple(image_cond.shape) != tuple(x_t.shape[:3]) + (c,):
    raise ValueError(
        f"{name} image_cond shape: expected {tuple(x_t.shape[:3]) + (c,)}, "
        f"got {tuple(image_cond.shape)}"
    )
  d = int(getattr(net, "image_embed_dim", 0))
  if d == 0 and image_embed is not None:
    raise ValueError(f"{name} has image_embed_dim=0 but got an image_embed input")
  if d and image_embed is None:
    raise ValueError(
        f"{name} is conditioned on an image embedding (image_embed_dim={d}) and got none"
    )
  if d and tuple(image_embed.shape) != (x_t.shape[0], d):
    raise ValueError(
        f"{name} image_embed shape: expected ({x_t.shape[0]}, {d}) (a CLIP image embedding "
        f"of width image_embed_dim={d}), got {tuple(image_embed.shape)}"
    )


class ImageEmbedConditioning(nn.Module):
  """unCLIP's decoder conditioning: (emb + proj(z), context + tokens(z), mask + True)."""

  embed_dim: int
  cond_dim: int
  num_tokens: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb, context, mask, image_embed):
    z = image_embed.astype(jnp.float32)
    f32 = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    emb = emb + layers.dense(self.embed_dim, ("mlp", "embed"), name="to_time", **f32)(z)
    b = z.shape[0]
    tokens = layers.dense(
        self.num_tokens * self.cond_dim, ("embed", "mlp"), name="to_tokens", **f32
    )(z).reshape(b, self.num_tokens, self.cond_dim)
    tokens = layers.LayerNorm(name="token_norm", param_dtype=self.param_dtype)(tokens)
    tokens = tokens.astype(self.dtype)
    context = jnp.concatenate([context.astype(tokens.dtype), tokens], axis=1)
    mask = jnp.concatenate([mask, jnp.ones((b, self.num_tokens), bool)], axis=1)
    return emb, context, mask
