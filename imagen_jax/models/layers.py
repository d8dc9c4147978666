"""Shared layers of the cascade's denoising networks (Imagen, Saharia et al. 2022).

Everything here is Flax Linen with ``dtype`` (compute) and ``param_dtype``
(storage, float32) fields. Numerically sensitive parts always run in float32
whatever ``dtype`` is: GroupNorm / LayerNorm statistics, attention logits and
softmax, the sinusoidal embeddings and the conditioning MLPs.

Parameters carry logical axis names (``nn.with_logical_partitioning``) so the
trainer can shard them; the names used are

  conv kernels      (None, None, 'conv_in', 'conv_out'), bias ('conv_out',)
  dense kernels     ('embed', 'mlp') and ('mlp', 'embed'), bias ('mlp',)/('embed',)
  attention q/k/v   ('embed', 'heads', 'kv'); output ('heads', 'kv', 'embed')
  norms             ('norm',)
  learned tokens    ('heads', 'kv') or (None, 'embed')

Conditioning (paper §2.5, App. B.1):
* noise level: the network is told ``log_snr`` of x_t (continuous, roughly in
  [-20, 20]); it is embedded sinusoidally after multiplying by
  ``LOG_SNR_SCALE`` = 50, which maps [-20, 20] onto [-1000, 1000], the range
  of DDPM's integer timesteps that the standard 10000-period embedding was
  designed for: the fastest frequency (1 rad per unit) resolves log-SNR steps
  of 0.02, the slowest (period 2*pi*1e4 units, i.e. ~1257 in log-SNR) is
  monotonic over the whole range, so no two levels in [-20, 20] alias.
  The SR stages embed the augmentation level ``lowres_log_snr`` the same way
  with their own MLP and add it.
* text: the T5 embeddings are zeroed at padding positions, LayerNorm-ed and
  projected to ``cond_dim`` (the context tokens). An attention-pooled vector
  of them (a learned query over [null token, tokens]) is added to the time
  embedding, and attention layers append the context tokens' keys/values to
  their own. Every attention over text also attends to a learned null
  key/value, so a row whose mask is all False (the classifier-free guidance
  null input) is well defined; padding tokens get exactly zero weight.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagen_jax.models import remat as remat_lib

Dtype = Any

LOG_SNR_SCALE = 50.0
MAX_PERIOD = 10000.0

_f32 = jnp.float32


def _part(init, names):
  return nn.with_logical_partitioning(init, names)


def _kernel_init():
  return nn.initializers.lecun_normal()


def conv(
    features: int, kernel: int = 3, strides: int = 1, *, dtype: Dtype, param_dtype: Dtype, name: str
) -> nn.Conv:
  """A SAME-padded 2D conv with logically partitioned kernel and bias."""
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding="SAME",
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=_part(_kernel_init(), (None, None, "conv_in", "conv_out")),
      bias_init=_part(nn.initializers.zeros_init(), ("conv_out",)),
      name=name,
  )


def dense(
    features: int, axes=("embed", "mlp"), *, dtype: Dtype, param_dtype: Dtype, name: str
) -> nn.Dense:
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=_part(_kernel_init(), axes),
      bias_init=_part(nn.initializers.zeros_init(), (axes[-1],)),
      name=name,
  )


def upsample_nearest(x: jnp.ndarray, factor: int) -> jnp.ndarray:
  """Nearest-neighbour upsampling by an integer factor (no transposed conv)."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def sinusoidal_embedding(
    x: jnp.ndarray, dim: int, *, scale: float = LOG_SNR_SCALE, max_period: float = MAX_PERIOD
) -> jnp.ndarray:
  """[B] continuous values -> [B, dim] float32 [sin | cos] features.

  Computes ``scale * x`` against ``dim // 2`` frequencies geometrically spaced
  from 1 to 1/max_period (see the module docstring for the choice of scale).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=_f32) / half)
  args = (scale * x.astype(_f32))[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def dot_product_attention(q, k, v, mask, dtype=_f32):
  """q [B,Q,H,D], k/v [B,K,H,D], mask [B,K] bool -> [B,Q,H,D] in `dtype`.

  Logits and softmax are float32; masked keys get exactly zero weight (every
  caller keeps at least one key, a learned null token, unmasked).
  """
  depth = q.shape[-1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=_f32)
  logits = logits.astype(_f32) / math.sqrt(depth)
  logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(_f32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = jnp.where(mask[:, None, None, :], weights, 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), v.astype(dtype))


def num_heads_for(channels: int, per_head_channels: int) -> tuple[int, int]:
  """(heads, head_dim) for `channels` split into `per_head_channels` heads."""
  head_dim = min(per_head_channels, channels)
  if channels % head_dim:
    raise ValueError(
        f"attention channels ({channels}) must be a multiple of "
        f"per_head_channels ({per_head_channels})"
    )
  return channels // head_dim, head_dim


class GroupNorm(nn.Module):
  """GroupNorm with float32 statistics; optional FiLM (scale, shift) after it.

  The group count is gcd(num_groups, channels) so tiny models work too.
  Returns `dtype`.
  """

  num_groups: int = 32
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, scale_shift=None):
    c = x.shape[-1]
    g = math.gcd(self.num_groups, c)
    gamma = self.param(
        "scale", _part(nn.initializers.ones_init(), ("norm",)), (c,), self.param_dtype
    )
    beta = self.param(
        "bias", _part(nn.initializers.zeros_init(), ("norm",)), (c,), self.param_dtype
    )
    x32 = x.astype(_f32)
    xg = x32.reshape(x.shape[:-1] + (g, c // g))
    red = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    mean = jnp.mean(xg, axis=red, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=red, keepdims=True)
    y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    y = y * gamma.astype(_f32) + beta.astype(_f32)
    if scale_shift is not None:
      scale, shift = scale_shift
      expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
      y = y * (1.0 + scale.astype(_f32)[expand]) + shift.astype(_f32)[expand]
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis in float32 (returns float32)."""

  epsilon: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param(
        "scale", _part(nn.initializers.ones_init(), ("norm",)), (c,), self.param_dtype
    )
    beta = self.param(
        "bias", _part(nn.initializers.zeros_init(), ("norm",)), (c,), self.param_dtype
    )
    x = x.astype(_f32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * gamma.astype(_f32) + beta.astype(_f32)


class ResBlock(nn.Module):
  """BigGAN-style residual block with scale-shift conditioning.

  GroupNorm -> swish -> conv3x3 -> GroupNorm * (1 + scale) + shift -> swish ->
  dropout -> conv3x3, plus a 1x1 conv shortcut when the channel count changes.
  (scale, shift) come from a dense layer on swish(emb).
  """

  features: int
  num_groups: int = 32
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GroupNorm(self.num_groups, name="norm1", **kw)(x)
    h = conv(self.features, name="conv1", **kw)(nn.swish(h))
    ss = dense(
        2 * self.features,
        ("embed", "conv_out"),
        name="emb_proj",
        dtype=_f32,
        param_dtype=self.param_dtype,
    )(nn.swish(emb))
    scale, shift = jnp.split(ss, 2, axis=-1)
    h = GroupNorm(self.num_groups, name="norm2", **kw)(h, (scale, shift))
    h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=self.deterministic)
    h = conv(self.features, name="conv2", **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name="shortcut", **kw)(x)
    return x.astype(self.dtype) + h


class Attention(nn.Module):
  """Multi-head attention over image tokens, text tokens, or both.

  Queries come from the GroupNorm-ed image tokens. Keys/values are the
  concatenation of: a learned null token (always), the image tokens
  (`self_attention`) and the context (text) tokens (`cross_attention`, masked
  by `context_mask`) -- Imagen's "text embeddings concatenated into the
  key-value pairs of self-attention". Heads have `per_head_channels` channels.
  Residual output.
  """

  per_head_channels: int = 64
  self_attention: bool = True
  cross_attention: bool = False
  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, context_mask=None):
    if not (self.self_attention or self.cross_attention):
      raise ValueError("Attention needs self_attention or cross_attention")
    b, h, w, c = x.shape
    heads, hd = num_heads_for(c, self.per_head_channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def proj(name, inputs):
      return nn.DenseGeneral(
          (heads, hd),
          name=name,
          kernel_init=_part(_kernel_init(), ("embed", "heads", "kv")),
          bias_init=_part(nn.initializers.zeros_init(), ("heads", "kv")),
          **kw,
      )(inputs)

    tokens = GroupNorm(self.num_groups, name="norm", **kw)(x)
    tokens = tokens.reshape(b, h * w, c)
    q = proj("query", tokens)
    null_init = _part(nn.initializers.normal(1.0), ("heads", "kv"))
    null_k = self.param("null_key", null_init, (heads, hd), self.param_dtype)
    null_v = self.param("null_value", null_init, (heads, hd), self.param_dtype)
    ks = [jnp.broadcast_to(null_k.astype(self.dtype), (b, 1, heads, hd))]
    vs = [jnp.broadcast_to(null_v.astype(self.dtype), (b, 1, heads, hd))]
    masks = [jnp.ones((b, 1), bool)]
    if self.self_attention:
      ks.append(proj("key", tokens))
      vs.append(proj("value", tokens))
      masks.append(jnp.ones((b, h * w), bool))
    if self.cross_attention:
      if context is None or context_mask is None:
        raise ValueError("cross-attention needs context and context_mask")
      ctx = LayerNorm(name="context_norm", param_dtype=self.param_dtype)(context).astype(self.dtype)
      ks.append(proj("context_key", ctx))
      vs.append(proj("context_value", ctx))
      masks.append(context_mask.astype(bool))
    out = dot_product_attention(
        q, jnp.concatenate(ks, 1), jnp.concatenate(vs, 1), jnp.concatenate(masks, 1), self.dtype
    )
    out = nn.DenseGeneral(
        c,
        axis=(-2, -1),
        name="out",
        kernel_init=_part(_kernel_init(), ("heads", "kv", "embed")),
        bias_init=_part(nn.initializers.zeros_init(), ("embed",)),
        **kw,
    )(out)
    return x.astype(self.dtype) + out.reshape(b, h, w, c)


class TimeMLP(nn.Module):
  """Sinusoidal embedding of a [B] noise level -> dense -> swish -> dense."""

  embed_dim: int
  freq_dim: int = 256
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, log_snr):
    kw = dict(dtype=_f32, param_dtype=self.param_dtype)
    e = sinusoidal_embedding(log_snr, self.freq_dim)
    e = dense(self.embed_dim, ("embed", "mlp"), name="dense1", **kw)(e)
    return dense(self.embed_dim, ("mlp", "embed"), name="dense2", **kw)(nn.swish(e))


class TextConditioning(nn.Module):
  """Text embeddings -> (context tokens, mask, pooled vector).

  Padding positions are zeroed, the tokens LayerNorm-ed (float32) and
  projected to `cond_dim`. The pooled vector is multi-head attention pooling
  with a learned query over [learned null token, tokens], projected to
  `embed_dim` (float32); a null-text row pools to the null token only.
  """

  cond_dim: int
  embed_dim: int
  per_head_channels: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_emb, text_mask):
    b = text_emb.shape[0]
    mask = text_mask.astype(bool)
    t = jnp.where(mask[..., None], text_emb.astype(_f32), 0.0)
    t = LayerNorm(name="text_norm", param_dtype=self.param_dtype)(t)
    context = dense(
        self.cond_dim,
        ("mlp", "embed"),
        name="text_proj",
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )(t)

    heads, hd = num_heads_for(self.cond_dim, self.per_head_channels)
    pkw = dict(dtype=_f32, param_dtype=self.param_dtype)
    null_tok = self.param(
        "pool_null_token",
        _part(nn.initializers.normal(1.0), (None, "embed")),
        (1, self.cond_dim),
        self.param_dtype,
    )
    query = self.param(
        "pool_query",
        _part(nn.initializers.normal(1.0), ("heads", "kv")),
        (heads, hd),
        self.param_dtype,
    )
    seq = jnp.concatenate(
        [jnp.broadcast_to(null_tok.astype(_f32), (b, 1, self.cond_dim)), context.astype(_f32)],
        axis=1,
    )
    seq_mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
    seq = LayerNorm(name="pool_norm", param_dtype=self.param_dtype)(seq)

    def proj(name):
      return nn.DenseGeneral(
          (heads, hd),
          name=name,
          kernel_init=_part(_kernel_init(), ("embed", "heads", "kv")),
          bias_init=_part(nn.initializers.zeros_init(), ("heads", "kv")),
          **pkw,
      )(seq)

    q = jnp.broadcast_to(query.astype(_f32), (b, 1, heads, hd))
    pooled = dot_product_attention(q, proj("pool_key"), proj("pool_value"), seq_mask, _f32)
    pooled = nn.DenseGeneral(
        self.embed_dim,
        axis=(-2, -1),
        name="pool_out",
        kernel_init=_part(_kernel_init(), ("heads", "kv", "embed")),
        bias_init=_part(nn.initializers.zeros_init(), ("embed",)),
        **pkw,
    )(pooled)[:, 0]
    return context, mask, pooled


class Conditioning(nn.Module):
  """All of a network's conditioning: (emb [B, E] f32, context, context mask).

  emb = MLP(log_snr) [+ MLP(lowres_log_snr) for SR] + pooled text vector.
  """

  embed_dim: int
  cond_dim: int
  freq_dim: int = 256
  per_head_channels: int = 64
  super_res: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, log_snr, text_emb, text_mask, lowres_log_snr=None):
    emb = TimeMLP(self.embed_dim, self.freq_dim, self.param_dtype, name="time")(log_snr)
    if self.super_res:
      emb = emb + TimeMLP(self.embed_dim, self.freq_dim, self.param_dtype, name="aug_time")(
          lowres_log_snr
      )
    context, mask, pooled = TextConditioning(
        self.cond_dim,
        self.embed_dim,
        self.per_head_channels,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="text",
    )(text_emb, text_mask)
    return emb + pooled, context, mask


def _shape_error(what, expected, got):
  return ValueError(f"{what}: expected {expected}, got {got}")


def validate_inputs(
    net, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr, crop_multiple: int | None = None
) -> None:
  """Checks call arguments against a network's attributes (at trace time).

  `net` has `resolution`, `lowres_resolution` (None for a base stage),
  `in_channels`, `lowres_channels` and `text_dim`. x_t is `resolution`
  square, or, with `crop_multiple` (a fully convolutional network trained on
  crops, as Imagen's SR stages are), any H x W with sides divisible by it;
  `lowres` then covers the same crop (sides H and W x lowres_resolution /
  resolution). Raises ValueError naming the expected and the actual shape.
  """
  name = type(net).__name__
  if x_t.ndim != 4:
    raise _shape_error(f"{name} x_t rank", "[B, H, W, C]", x_t.shape)
  b, h, w = x_t.shape[:3]
  res = net.resolution
  if crop_multiple is None and (h, w) != (res, res):
    raise _shape_error(f"{name} x_t image size", f"{res}x{res}", f"{h}x{w}")
  if crop_multiple is not None and (h % crop_multiple or w % crop_multiple):
    raise _shape_error(
        f"{name} x_t image size",
        f"{res}x{res} or a crop with sides divisible by {crop_multiple}",
        f"{h}x{w}",
    )
  if x_t.shape[3] != net.in_channels:
    raise _shape_error(f"{name} x_t channels", net.in_channels, x_t.shape[3])
  if tuple(log_snr.shape) != (b,):
    raise _shape_error(f"{name} log_snr shape", (b,), log_snr.shape)
  if text_emb.ndim != 3 or text_emb.shape[0] != b:
    raise _shape_error(f"{name} text_emb shape", f"[{b}, L, {net.text_dim}]", text_emb.shape)
  if text_emb.shape[2] != net.text_dim:
    raise _shape_error(f"{name} text_emb dim (text_dim)", net.text_dim, text_emb.shape[2])
  if tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
    raise _shape_error(f"{name} text_mask shape", text_emb.shape[:2], text_mask.shape)
  lr = net.lowres_resolution
  if lr is None:
    if lowres is not None or lowres_log_snr is not None:
      raise ValueError(
          f"{name} is a base stage (lowres_resolution=None) but got lowres / lowres_log_snr"
      )
    return
  if lowres is None or lowres_log_snr is None:
    raise ValueError(
        f"{name} is a super-resolution stage ({lr}->{res}): "
        "lowres and lowres_log_snr are required"
    )
  if (h * lr) % res or (w * lr) % res:
    raise _shape_error(
        f"{name} x_t image size",
        f"sides that are multiples of {res // math.gcd(res, lr)} ({lr}->{res})",
        f"{h}x{w}",
    )
  expected = (b, h * lr // res, w * lr // res, net.lowres_channels)
  if tuple(lowres.shape) != expected:
    raise _shape_error(f"{name} lowres shape", expected, lowres.shape)
  if tuple(lowres_log_snr.shape) != (b,):
    raise _shape_error(f"{name} lowres_log_snr shape", (b,), lowres_log_snr.shape)


def network_setup(net, train: bool, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr):
  """The start both U-Nets share, called inside their compact `__call__`.

  Returns (kw, common, emb, context, mask, x): `kw` the dtype kwargs; `common`
  the kwargs of every block (attention heads, norm groups, dropout, remat and its policy);
  the conditioning (`Conditioning`, scope "cond") and the network input (x_t,
  with the up-sampled low-res image for SR stages).
  """
  remat_lib.check_remat(net.remat, net.remat_policy)
  kw = dict(dtype=net.dtype, param_dtype=net.param_dtype)
  common = dict(
      per_head_channels=net.per_head_channels,
      num_groups=net.num_groups,
      dropout=net.dropout,
      deterministic=not train,
      remat_blocks=net.remat == "block",
      remat_policy=net.remat_policy,
      **kw,
  )
  emb, context, mask = Conditioning(
      net.embed_dim,
      net.cond_dim,
      net.freq_dim,
      net.per_head_channels,
      super_res=net.lowres_resolution is not None,
      name="cond",
      **kw,
  )(log_snr, text_emb, text_mask, lowres_log_snr)
  return kw, common, emb, context, mask, network_input(x_t, lowres, net.dtype)


def network_input(x_t, lowres, dtype):
  """x_t, with the low-res image resized to x_t's size concatenated (SR)."""
  x = x_t.astype(dtype)
  if lowres is None:
    return x
  b, h, w, _ = x_t.shape
  up = jax.image.resize(lowres.astype(_f32), (b, h, w, lowres.shape[-1]), method="bilinear")
  return jnp.concatenate([x, up.astype(dtype)], axis=-1)


def output_head(x, out_channels, num_groups, dtype, param_dtype, name):
  """GroupNorm -> swish -> conv3x3 to `out_channels`, returned as float32."""
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  h = GroupNorm(num_groups, name=f"{name}_norm", **kw)(x)
  h = conv(out_channels, name=f"{name}_conv", **kw)(nn.swish(h))
  return h.astype(_f32)


def optional_bool_tuple(value, n: int, what: str) -> tuple:
  """Broadcasts a bool or checks a length-n sequence of bools."""
  if isinstance(value, bool):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(f"{what}: expected {n} entries, got {len(value)}")
  return value


def int_tuple(value, n: int, what: str) -> tuple:
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(f"{what}: expected {n} entries, got {len(value)}")
  return value
