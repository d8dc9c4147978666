"""A noise-aware CLIP: GLIDE's "noised CLIP" (Nichol et al. 2021, §2.4) in miniature.

Two towers trained contrastively (train/clip_task.py), from scratch:

* image: `NoisyEncoder(x_t, log_snr)` (ADM's half U-Net with the log-SNR embedding and an
  attention pool, models/classifier.py) + a linear projection to `projection_dim`. It reads
  noisy images at every noise level, so its similarity to a caption is a guide for
  `diffusion.similarity_guidance(..., on="x_t")`.
* text: CLIP's text transformer (token + learned position embeddings, pre-LN layers with
  causal self-attention, a final layer norm, pooling at the first EOS, a projection without
  bias) over a byte-level vocabulary: ByT5's ids (pad 0, EOS 1, byte b -> b + 3, as
  `text.tokenizers.ByteTokenizer`), so `vocab_size = 259`; `byte_ids(captions, max_length)`
  tokenizes (a caption that does not fit is a ValueError naming it).

A learnable logit scale as CLIP's: the parameter `logit_scale` is the log of the scale, it
starts at log(1 / 0.07) and the scale is clamped at `logit_scale_max` (100).

  NoisyClip.image_features(x_t, log_snr)  -> [B, projection_dim] float32 (not normalised)
  NoisyClip.text_features(ids, mask=None) -> [B, projection_dim] float32 (not normalised)
  NoisyClip.scale()                        -> the clamped exp(logit_scale)
  NoisyClip(x_t, log_snr, ids, mask)       -> (image features, text features, scale)

Parameter tree: `image/...` (the NoisyEncoder), `image_projection/kernel`, `text/...`,
`logit_scale`.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models import layers
from imagen_jax.models.classifier import NoisyEncoder

Dtype = Any

PAD_ID, EOS_ID, BYTE_OFFSET = 0, 1, 3  # ByT5's byte vocabulary
VOCAB_SIZE = 256 + BYTE_OFFSET


def byte_ids(captions, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [N, max_length], mask bool [N, max_length]): each caption's UTF-8 bytes
  (+ 3), then EOS, then pads. A caption of more than max_length - 1 bytes is a ValueError
  naming it (never truncated: the EOS the text tower pools at would be lost)."""
  ids = np.full((len(captions), max_length), PAD_ID, np.int32)
  for row, caption in enumerate(captions):
    data = str(caption).encode("utf-8")
    if len(data) + 1 > max_length:
      raise ValueError(
          f"caption {str(caption)!r} is {len(data)} bytes + EOS, longer than the text "
          f"tower's max_length={max_length}"
      )
    ids[row, : len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
    ids[row, len(data)] = EOS_ID
  return ids, ids != PAD_ID


class _TextLayer(nn.Module):
  """A pre-LN transformer layer with causal self-attention (and the padding mask)."""

  width: int
  heads: int
  mlp_ratio: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, allowed):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, length, _ = x.shape
    hd = self.width // self.heads
    h = layers.LayerNorm(1e-5, self.param_dtype, name="layer_norm1")(x)
    qkv = nn.DenseGeneral((3, self.heads, hd), name="qkv", **kw)(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(allowed, logits / math.sqrt(hd), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(self.dtype))
    x = x + nn.Dense(self.width, name="out_proj", **kw)(out.reshape(b, length, self.width))
    h = layers.LayerNorm(1e-5, self.param_dtype, name="layer_norm2")(x)
    h = nn.gelu(nn.Dense(self.width * self.mlp_ratio, name="fc1", **kw)(h))
    return (x + nn.Dense(self.width, name="fc2", **kw)(h)).astype(jnp.float32)


class TextTower(nn.Module):
  """(ids int [B, L <= max_length], mask [B, L] or None) -> [B, projection_dim] float32,
  the projected state at each row's first `eos_id` (position 0 if there is none)."""

  vocab_size: int = VOCAB_SIZE
  max_length: int = 80
  eos_id: int = EOS_ID
  width: int = 64
  num_layers: int = 2
  heads: int = 2
  mlp_ratio: int = 4
  projection_dim: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask=None):
    ids = jnp.asarray(ids, jnp.int32)
    length = ids.shape[-1]
    if ids.ndim != 2 or length > self.max_length:
      raise ValueError(
          f"text ids of shape {tuple(ids.shape)}: expected [B, L] with L <= max_length="
          f"{self.max_length}"
      )
    tok = nn.Embed(self.vocab_size, self.width, param_dtype=self.param_dtype, name="token")
    pos = nn.Embed(self.max_length, self.width, param_dtype=self.param_dtype, name="position")
    x = tok(ids) + pos(jnp.arange(length))[None]
    allowed = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
    if mask is not None:
      allowed = allowed & jnp.asarray(mask).astype(bool)[:, None, None, :]
    for i in range(self.num_layers):
      x = _TextLayer(
          self.width,
          self.heads,
          self.mlp_ratio,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"layers_{i}",
      )(x, allowed)
    x = layers.LayerNorm(1e-5, self.param_dtype, name="final_layer_norm")(x)
    eos = jnp.argmax((ids == self.eos_id).astype(jnp.int32), axis=-1)
    pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
    proj = nn.Dense(
        self.projection_dim,
        use_bias=False,
        dtype=jnp.float32,
        param_dtype=self.param_dtype,
        name="projection",
    )
    return proj(pooled).astype(jnp.float32)


class NoisyClip(NoisyEncoder):
  """The noise-aware CLIP (module docstring). The image encoder's fields are inherited
  from `NoisyEncoder` (`out_dim` is its width before the projection)."""

  projection_dim: int = 64
  vocab_size: int = VOCAB_SIZE
  max_length: int = 80
  eos_id: int = EOS_ID
  text_width: int = 64
  text_layers: int = 2
  text_heads: int = 2
  text_mlp_ratio: int = 4
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = 100.0

  def setup(self):
    if self.text_width % self.text_heads:
      raise ValueError(
          f"text_width={self.text_width} is not a multiple of text_heads={self.text_heads}"
      )
    fields = {
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(NoisyEncoder)
        if f.name not in ("parent", "name")
    }
    self.image = NoisyEncoder(**fields)
    self.image_projection = nn.Dense(
        self.projection_dim, use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype
    )
    self.text = TextTower(
        vocab_size=self.vocab_size,
        max_length=self.max_length,
        eos_id=self.eos_id,
        width=self.text_width,
        num_layers=self.text_layers,
        heads=self.text_heads,
        mlp_ratio=self.text_mlp_ratio,
        projection_dim=self.projection_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32
    )

  def image_features(self, x_t, log_snr, *, train: bool = False):
    return self.image_projection(self.image(x_t, log_snr, train=train))

  def text_features(self, ids, mask=None):
    return self.text(ids, mask)

  def scale(self):
    """exp(logit_scale), clamped at logit_scale_max (CLIP's clamp of the log at log 100)."""
    return jnp.exp(jnp.minimum(self.logit_scale, math.log(self.logit_scale_max)))

  def __call__(self, x_t, log_snr, ids, mask=None, *, train: bool = False):
    return (
        self.image_features(x_t, log_snr, train=train),
        self.text_features(ids, mask),
        self.scale(),
    )
