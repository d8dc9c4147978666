"""A frozen T5 encoder in Flax Linen, with exactly T5's math.

Covers both families Imagen-style models condition on:

* original T5 (``feed_forward_proj="relu"``): FFN ``wo(relu(wi(x)))``;
* T5 v1.1 / Flan-T5 / mT5 (``"gated-gelu"``): FFN ``wo(gelu_tanh(wi_0 x) * wi_1 x)``,
  untied input embedding.

Shared by both: pre-norm residual blocks with T5's RMS layer norm (no mean
subtraction, no bias, statistics in float32), attention without the 1/sqrt(d)
logit scaling (T5 folds it into the query initialisation), one learned
relative-position bias table (bidirectional buckets) computed in the first
layer and added to every layer's logits, and no biases anywhere.

The encoder is frozen, so there is no dropout. Params are stored in float32;
``dtype`` is the compute dtype of the matmuls (bfloat16 on accelerators). Layer
norm statistics, attention logits/softmax and the residual stream stay in
float32, and the output is float32.

Parameter tree (the names t5x uses, so a t5x checkpoint maps one to one)::

  token_embedder/embedding                      [vocab, d_model]
  encoder/relpos_bias/rel_embedding             [num_heads, num_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale           [d_model]
  encoder/layers_{i}/attention/{query,key,value}/kernel       [d_model, heads*d_kv]
  encoder/layers_{i}/attention/out/kernel                     [heads*d_kv, d_model]
  encoder/layers_{i}/pre_mlp_layer_norm/scale                 [d_model]
  encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel (gated) or wi/kernel  [d_model, d_ff]
  encoder/layers_{i}/mlp/wo/kernel                            [d_ff, d_model]
  encoder/encoder_norm/scale                                  [d_model]
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Activation names as transformers' ACT2FN spells them.
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture hyperparameters of a T5 encoder (transformers' field names)."""

  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
          f"feed_forward_proj={self.feed_forward_proj!r}: activation "
          f"{self.activation!r} is not one of {sorted(_ACTIVATIONS)} "
          "(expected e.g. 'relu' or 'gated-gelu')"
      )

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.split("-")[0] == "gated"

  @property
  def activation(self) -> str:
    # transformers maps "gated-gelu" to the tanh approximation (gelu_new),
    # which is also what t5x/mesh-tf used for T5 v1.1.
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.split("-")[-1]

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    """Flat {"a/b/c": shape} of every parameter, in a canonical order."""
    d, inner, ff = self.d_model, self.inner_dim, self.d_ff
    shapes = {
        "token_embedder/embedding": (self.vocab_size, d),
        "encoder/relpos_bias/rel_embedding": (self.num_heads, self.relative_attention_num_buckets),
    }
    for i in range(self.num_layers):
      p = f"encoder/layers_{i}"
      shapes[f"{p}/pre_attention_layer_norm/scale"] = (d,)
      for name in ("query", "key", "value"):
        shapes[f"{p}/attention/{name}/kernel"] = (d, inner)
      shapes[f"{p}/attention/out/kernel"] = (inner, d)
      shapes[f"{p}/pre_mlp_layer_norm/scale"] = (d,)
      wi = ("wi_0", "wi_1") if self.is_gated else ("wi",)
      for name in wi:
        shapes[f"{p}/mlp/{name}/kernel"] = (d, ff)
      shapes[f"{p}/mlp/wo/kernel"] = (ff, d)
    shapes["encoder/encoder_norm/scale"] = (d,)
    return shapes


def relative_position_bucket(
    relative_position: np.ndarray,
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
  """Mesh-TF/transformers' bucketing of (key - query) offsets, in numpy.

  Computed in float32 exactly as transformers does (no epsilon, truncation
  towards zero), so bucket boundaries agree with the PyTorch reference.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    relative_position = np.abs(relative_position)
  else:
    relative_position = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  with np.errstate(divide="ignore"):
    scaled = (
        np.log(relative_position.astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
  # Small offsets (including 0, where log is -inf) take the other branch.
  scaled = np.where(is_small, 0, scaled)
  if_large = max_exact + scaled.astype(np.int64)
  if_large = np.minimum(if_large, num_buckets - 1)
  return buckets + np.where(is_small, relative_position, if_large)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """T5 layer norm: x / rms(x) * scale, statistics in float32."""
  x = x.astype(jnp.float32)
  variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(variance + eps) * scale.astype(jnp.float32)


class _LayerNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    return rms_norm(x, scale, self.eps)


class _Dense(nn.Module):
  """Bias-free projection; float32 output (input cast to the compute dtype)."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), self.param_dtype
    )
    y = jnp.dot(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        precision=self.precision,
        preferred_element_type=jnp.float32,
    )
    return y


class _Attention(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias, mask):
    cfg = self.config
    dense = functools.partial(
        _Dense, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision
    )
    b, l, _ = x.shape
    heads = (b, l, cfg.num_heads, cfg.d_kv)
    q = dense(cfg.inner_dim, name="query")(x).reshape(heads)
    k = dense(cfg.inner_dim, name="key")(x).reshape(heads)
    v = dense(cfg.inner_dim, name="value")(x).reshape(heads)
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk",
        q.astype(self.dtype),
        k.astype(self.dtype),
        precision=self.precision,
        preferred_element_type=jnp.float32,
    )
    logits = logits + bias[None]
    # A fully masked row (an all-False null caption) gets uniform weights
    # instead of NaN, as transformers' additive finfo.min mask does.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd",
        weights.astype(self.dtype),
        v.astype(self.dtype),
        precision=self.precision,
        preferred_element_type=jnp.float32,
    )
    return dense(cfg.d_model, name="out")(out.reshape(b, l, cfg.inner_dim))


class _Mlp(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = functools.partial(
        _Dense, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision
    )
    act = _ACTIVATIONS[cfg.activation]
    if cfg.is_gated:
      h = act(dense(cfg.d_ff, name="wi_0")(x)) * dense(cfg.d_ff, name="wi_1")(x)
    else:
      h = act(dense(cfg.d_ff, name="wi")(x))
    return dense(cfg.d_model, name="wo")(h)


class _Layer(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias, mask):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
    h = _LayerNorm(cfg.layer_norm_epsilon, self.param_dtype, name="pre_attention_layer_norm")(x)
    x = x + _Attention(cfg, **kw, name="attention")(h, bias, mask)
    h = _LayerNorm(cfg.layer_norm_epsilon, self.param_dtype, name="pre_mlp_layer_norm")(x)
    return x + _Mlp(cfg, **kw, name="mlp")(h)


class _Stack(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    positions = np.arange(x.shape[1])
    # Buckets depend only on the (static) length: computed once in numpy.
    buckets = relative_position_bucket(
        positions[None, :] - positions[:, None],
        bidirectional=True,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
    )
    bias = _RelposBias(cfg, self.param_dtype, name="relpos_bias")(buckets)
    for i in range(cfg.num_layers):
      x = _Layer(cfg, self.dtype, self.param_dtype, self.precision, name=f"layers_{i}")(
          x, bias, mask
      )
    return _LayerNorm(cfg.layer_norm_epsilon, self.param_dtype, name="encoder_norm")(x)


class _RelposBias(nn.Module):
  config: T5Config
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, buckets):
    cfg = self.config
    table = self.param(
        "rel_embedding",
        nn.initializers.normal(cfg.d_model**-0.5),
        (cfg.num_heads, cfg.relative_attention_num_buckets),
        self.param_dtype,
    )
    return jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=1)


class _Embedder(nn.Module):
  vocab_size: int
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    table = self.param(
        "embedding", nn.initializers.normal(1.0), (self.vocab_size, self.features), self.param_dtype
    )
    return jnp.take(table, ids, axis=0).astype(jnp.float32)


class T5Encoder(nn.Module):
  """T5 encoder: ``(ids int [B, L], mask bool [B, L]) -> emb float32 [B, L, D]``.

  Positions where ``mask`` is False are zeroed in the output (they still take
  part in nothing: keys there are masked out of every attention).
  """

  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, ids, mask):
    cfg = self.config
    mask = mask.astype(bool)
    x = _Embedder(cfg.vocab_size, cfg.d_model, self.param_dtype, name="token_embedder")(ids)
    x = _Stack(cfg, self.dtype, self.param_dtype, self.precision, name="encoder")(x, mask)
    return jnp.where(mask[..., None], x, 0.0).astype(jnp.float32)


def make_encode_fn(module: T5Encoder) -> Callable:
  """Pure ``encode_fn(params, ids, mask) -> (emb float32, mask bool)``.

  ``params`` is the bare parameter tree (without the ``{"params": ...}``
  collection wrapper). Safe to call inside a larger jitted function; wrap it in
  ``jax.lax.stop_gradient`` semantics by never differentiating w.r.t. params.
  """

  def encode_fn(params, ids, mask):
    mask = jnp.asarray(mask).astype(bool)
    emb = module.apply({"params": params}, jnp.asarray(ids, jnp.int32), mask)
    return jax.lax.stop_gradient(emb), mask

  return encode_fn
