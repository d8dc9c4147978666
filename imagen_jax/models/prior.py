"""The diffusion prior of DALL-E 2 / unCLIP (Ramesh et al. 2022, §2.1): caption -> CLIP image
embedding, by diffusion over the embedding.

A decoder-free transformer over one sequence of tokens (the paper's "decoder-only
Transformer" with a final query token, here with full rather than causal attention):

  [text tokens (L) | time | z_t | query]

* text: the frozen text encoder's tokens text_emb [B, L, text_dim], zeroed at padding,
  LayerNorm-ed and projected to `width`; they are masked out as keys where `text_mask` is
  False, so the null text of classifier-free guidance (an all-False mask) leaves only the
  time, z_t and query tokens, and the output does not depend on text_emb at all;
* time: the log-SNR of z_t, embedded sinusoidally (`layers.TimeMLP`, the U-Nets' noise
  embedding) to `width`;
* z_t: the noised embedding [B, embed_dim], projected to `width`;
* query: a learned token.

`depth` pre-LN blocks (LayerNorm, multi-head self-attention with `num_heads` heads,
LayerNorm, a GELU MLP of `mlp_ratio` x width), a final LayerNorm of the query token, and a
Dense to `embed_dim`: the predicted clean embedding z0 (x0 prediction, as the paper's prior),
float32. Attention logits, softmax and the norms run in float32 whatever `dtype` is.

  DiffusionPrior(z_t [B, E], log_snr [B], text_emb [B, L, T], text_mask [B, L]) -> [B, E]
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from imagen_jax.models import layers

Dtype = Any
_part = nn.with_logical_partitioning


class PriorBlock(nn.Module):
  """A pre-LN transformer block over tokens [B, N, width] with a key mask [B, N]."""

  width: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, c = x.shape
    hd = c // self.num_heads
    h = layers.LayerNorm(1e-5, self.param_dtype, name="norm1")(x).astype(self.dtype)
    qkv = nn.DenseGeneral(
        (3, self.num_heads, hd),
        name="qkv",
        kernel_init=_part(nn.initializers.lecun_normal(), ("embed", None, "heads", "kv")),
        bias_init=_part(nn.initializers.zeros_init(), (None, "heads", "kv")),
        **kw,
    )(h)
    out = layers.dot_product_attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, self.dtype
    )
    out = nn.DenseGeneral(
        c,
        axis=(-2, -1),
        name="out",
        kernel_init=_part(nn.initializers.lecun_normal(), ("heads", "kv", "embed")),
        bias_init=_part(nn.initializers.zeros_init(), ("embed",)),
        **kw,
    )(out)
    x = x + out.astype(jnp.float32)
    h = layers.LayerNorm(1e-5, self.param_dtype, name="norm2")(x).astype(self.dtype)
    h = nn.gelu(layers.dense(c * self.mlp_ratio, ("embed", "mlp"), name="fc1", **kw)(h))
    return x + layers.dense(c, ("mlp", "embed"), name="fc2", **kw)(h).astype(jnp.float32)


def _shape_error(what, expected, got):
  return ValueError(f"DiffusionPrior {what}: expected {expected}, got {tuple(got)}")


class DiffusionPrior(nn.Module):
  """The unCLIP prior (module docstring). `embed_dim`: the CLIP embedding's width;
  `text_dim`: the text encoder's."""

  embed_dim: int = 64
  text_dim: int = 64
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def check_inputs(self, z_t, log_snr, text_emb, text_mask) -> None:
    """ValueError naming the bad shape (at trace time)."""
    if self.width % self.num_heads:
      raise ValueError(
          f"DiffusionPrior width={self.width} is not a multiple of num_heads={self.num_heads}"
      )
    if z_t.ndim != 2 or z_t.shape[1] != self.embed_dim:
      raise _shape_error("z_t shape", f"[B, embed_dim={self.embed_dim}]", z_t.shape)
    b = z_t.shape[0]
    if tuple(log_snr.shape) != (b,):
      raise _shape_error("log_snr shape", (b,), log_snr.shape)
    if text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[2] != self.text_dim:
      raise _shape_error("text_emb shape", f"[{b}, L, text_dim={self.text_dim}]", text_emb.shape)
    if tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
      raise _shape_error("text_mask shape", tuple(text_emb.shape[:2]), text_mask.shape)

  @nn.compact
  def __call__(self, z_t, log_snr, text_emb, text_mask, *, train: bool = False):
    del train  # no dropout
    z_t, log_snr = jnp.asarray(z_t), jnp.asarray(log_snr)
    text_emb, text_mask = jnp.asarray(text_emb), jnp.asarray(text_mask).astype(bool)
    self.check_inputs(z_t, log_snr, text_emb, text_mask)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b = z_t.shape[0]
    text = jnp.where(text_mask[..., None], text_emb.astype(jnp.float32), 0.0)
    text = layers.LayerNorm(1e-5, self.param_dtype, name="text_norm")(text)
    text = layers.dense(self.width, ("embed", "mlp"), name="text_proj", **kw)(text)
    time = layers.TimeMLP(self.width, self.width, self.param_dtype, name="time")(log_snr)
    z = layers.dense(self.width, ("embed", "mlp"), name="z_proj", **kw)(z_t.astype(jnp.float32))
    query = self.param(
        "query", _part(nn.initializers.normal(0.02), (None, "embed")), (1, self.width)
    )
    tokens = jnp.concatenate(
        [
            text.astype(jnp.float32),
            time.astype(jnp.float32)[:, None],
            z.astype(jnp.float32)[:, None],
            jnp.broadcast_to(query.astype(jnp.float32), (b, 1, self.width)),
        ],
        axis=1,
    )
    key_mask = jnp.concatenate([text_mask, jnp.ones((b, 3), bool)], axis=1)
    for i in range(self.depth):
      tokens = PriorBlock(self.width, self.num_heads, self.mlp_ratio, name=f"block_{i}", **kw)(
          tokens, key_mask
      )
    out = layers.LayerNorm(1e-5, self.param_dtype, name="final_norm")(tokens[:, -1])
    head = layers.dense(self.embed_dim, ("mlp", "embed"), name="head", **kw)
    return head(out.astype(self.dtype)).astype(jnp.float32)
