"""CLIP's two towers in Flax Linen, with exactly transformers' ``CLIPModel`` math.

* Text: token + learned position embeddings, pre-LN encoder layers with causal
  self-attention (plus the padding mask), final layer norm, pooling at the EOS position
  (`ClipConfig.legacy_eos_pooling`), ``text_projection`` without bias.
* Vision: a patch convolution without bias, a class embedding, learned position
  embeddings, ``pre_layrnorm``, encoder layers (no mask), ``post_layernorm`` on the class
  token, ``visual_projection`` without bias.

Both towers return the projected pooled embedding (what ``get_text_features`` /
``get_image_features`` return), not L2-normalised. The models are frozen: no dropout.
Params are float32; ``dtype`` is the compute dtype of the matmuls, while layer norms,
attention softmax and the residual stream stay in float32 and outputs are float32.

Parameter tree (transformers' module names; ``kernel`` = the transposed Linear weight)::

  text/token_embedding/embedding                        [vocab, Dt]
  text/position_embedding/embedding                     [max_positions, Dt]
  {text,vision}/layers_{i}/layer_norm{1,2}/{scale,bias} [D]
  {text,vision}/layers_{i}/self_attn/{q,k,v,out}_proj/{kernel,bias}  [D, D], [D]
  {text,vision}/layers_{i}/mlp/fc1/{kernel,bias}        [D, intermediate], [intermediate]
  {text,vision}/layers_{i}/mlp/fc2/{kernel,bias}        [intermediate, D], [D]
  text/final_layer_norm/{scale,bias}                    [Dt]
  text/text_projection/kernel                           [Dt, projection_dim]
  vision/class_embedding                                [Dv]
  vision/patch_embedding/kernel                         [patch, patch, channels, Dv] (HWIO)
  vision/position_embedding/embedding                   [num_patches + 1, Dv]
  vision/{pre_layrnorm,post_layernorm}/{scale,bias}     [Dv]
  vision/visual_projection/kernel                       [Dv, projection_dim]
  logit_scale                                           []  (log of the similarity scale)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.clip.config import ACTIVATIONS
from imagen_jax.clip.config import ClipConfig


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # torch's LayerNorm: biased variance of the centred input (not E[x^2] - E[x]^2).
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, use_fast_variance=False, name=name)


class _Attention(nn.Module):
  width: int
  heads: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, allowed):
    b, l, _ = x.shape
    head_dim = self.width // self.heads

    def proj(name):
      return nn.Dense(self.width, dtype=self.dtype, precision=self.precision, name=name)

    shape = (b, l, self.heads, head_dim)
    q = proj("q_proj")(x).reshape(shape)
    k = proj("k_proj")(x).reshape(shape)
    v = proj("v_proj")(x).reshape(shape)
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q, k, precision=self.precision, preferred_element_type=jnp.float32
    ) * jnp.float32(head_dim**-0.5)
    if allowed is not None:
      # A fully masked row gets uniform weights rather than NaN, as transformers'
      # additive finfo.min mask gives.
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd",
        weights.astype(self.dtype),
        v.astype(self.dtype),
        precision=self.precision,
        preferred_element_type=jnp.float32,
    )
    return proj("out_proj")(out.reshape(b, l, self.width)).astype(jnp.float32)


class _EncoderLayer(nn.Module):
  width: int
  heads: int
  intermediate_size: int
  hidden_act: str
  eps: float
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, allowed):
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = _layer_norm(self.eps, "layer_norm1")(x)
    x = x + _Attention(self.width, self.heads, **kw, name="self_attn")(h, allowed)
    h = _layer_norm(self.eps, "layer_norm2")(x)
    h = _Mlp(self.width, self.intermediate_size, self.hidden_act, **kw, name="mlp")(h)
    return x + h


class _Mlp(nn.Module):
  width: int
  intermediate_size: int
  hidden_act: str
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, precision=self.precision)
    h = nn.Dense(self.intermediate_size, **kw, name="fc1")(x)
    h = ACTIVATIONS[self.hidden_act](h.astype(jnp.float32))
    return nn.Dense(self.width, **kw, name="fc2")(h).astype(jnp.float32)


def _layers(config: ClipConfig, tower: str, dtype, precision) -> list[_EncoderLayer]:
  return [
      _EncoderLayer(
          width=getattr(config, f"{tower}_width"),
          heads=getattr(config, f"{tower}_heads"),
          intermediate_size=getattr(config, f"{tower}_intermediate_size"),
          hidden_act=getattr(config, f"{tower}_hidden_act"),
          eps=getattr(config, f"{tower}_layer_norm_eps"),
          dtype=dtype,
          precision=precision,
          name=f"layers_{i}",
      )
      for i in range(getattr(config, f"{tower}_layers"))
  ]


def eos_positions(config: ClipConfig, input_ids: jax.Array) -> jax.Array:
  """The pooled position of each row, by transformers' rule: ``argmax(input_ids)`` when
  ``eos_token_id == 2`` (legacy configs), else the first position equal to
  ``eos_token_id`` (0 if the row has none). Ties go to the first index, as in torch."""
  if config.legacy_eos_pooling:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == config.eos_token_id).astype(jnp.int32), axis=-1)


class ClipTextTower(nn.Module):
  """``(input_ids int [B, L], mask [B, L] or None) -> text features float32 [B, proj]``.

  ``L`` may be shorter than ``max_position_embeddings`` (positions ``0..L-1`` are used).
  """

  config: ClipConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, input_ids, mask=None):
    cfg = self.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    length = input_ids.shape[-1]
    if length > cfg.max_position_embeddings:
      raise ValueError(
          f"input_ids have length {length}, longer than the text encoder takes "
          f"(max_position_embeddings={cfg.max_position_embeddings})"
      )
    tok = nn.Embed(cfg.vocab_size, cfg.text_width, name="token_embedding")
    pos = nn.Embed(cfg.max_position_embeddings, cfg.text_width, name="position_embedding")
    x = tok(input_ids) + pos(jnp.arange(length))[None]
    allowed = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
    if mask is not None:
      allowed = allowed & jnp.asarray(mask).astype(bool)[:, None, None, :]
    for layer in _layers(cfg, "text", self.dtype, self.precision):
      x = layer(x, allowed)
    x = _layer_norm(cfg.text_layer_norm_eps, "final_layer_norm")(x)
    pooled = jnp.take_along_axis(x, eos_positions(cfg, input_ids)[:, None, None], axis=1)[:, 0]
    proj = nn.Dense(
        cfg.projection_dim,
        use_bias=False,
        dtype=self.dtype,
        precision=self.precision,
        name="text_projection",
    )
    return proj(pooled).astype(jnp.float32)


class ClipVisionTower(nn.Module):
  """``pixel_values float [B, S, S, C] (normalised, S = image_size) -> image features
  float32 [B, proj]``."""

  config: ClipConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.config
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
      raise ValueError(
          f"pixel_values have shape {tuple(pixel_values.shape)}, expected NHWC "
          f"[B, {want[0]}, {want[1]}, {want[2]}] (the config's image_size)"
      )
    p = cfg.patch_size
    patches = nn.Conv(
        cfg.vision_width,
        (p, p),
        strides=(p, p),
        padding="VALID",
        use_bias=False,
        dtype=self.dtype,
        precision=self.precision,
        name="patch_embedding",
    )(pixel_values.astype(jnp.float32))
    b = patches.shape[0]
    patches = patches.reshape(b, -1, cfg.vision_width).astype(jnp.float32)
    cls = self.param(
        "class_embedding", nn.initializers.normal(cfg.vision_width**-0.5), (cfg.vision_width,)
    )
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, cfg.vision_width)), patches], axis=1)
    pos = nn.Embed(cfg.num_patches + 1, cfg.vision_width, name="position_embedding")
    x = x + pos(jnp.arange(cfg.num_patches + 1))[None]
    x = _layer_norm(cfg.vision_layer_norm_eps, "pre_layrnorm")(x)
    for layer in _layers(cfg, "vision", self.dtype, self.precision):
      x = layer(x, None)
    pooled = _layer_norm(cfg.vision_layer_norm_eps, "post_layernorm")(x[:, 0])
    proj = nn.Dense(
        cfg.projection_dim,
        use_bias=False,
        dtype=self.dtype,
        precision=self.precision,
        name="visual_projection",
    )
    return proj(pooled).astype(jnp.float32)


def param_shapes(config: ClipConfig) -> dict:
  """The full parameter tree's shapes (``jax.ShapeDtypeStruct`` leaves), without
  allocating weights: ``{"text": ..., "vision": ..., "logit_scale": ...}``."""
  text, vision = ClipTextTower(config), ClipVisionTower(config)
  ids = jax.ShapeDtypeStruct((1, config.max_position_embeddings), jnp.int32)
  px = jax.ShapeDtypeStruct(
      (1, config.image_size, config.image_size, config.num_channels), jnp.float32
  )
  key = jax.random.key(0)
  return {
      "text": jax.eval_shape(text.init, key, ids)["params"],
      "vision": jax.eval_shape(vision.init, key, px)["params"],
      "logit_scale": jax.ShapeDtypeStruct((), jnp.float32),
  }
