"""Noise-aware image encoder and classifier: ADM's half U-Net (Dhariwal & Nichol 2021, §4).

The classifier of classifier guidance reads noisy images x_t at every noise level, so it is
the U-Net's downsampling half with the same time conditioning: the sinusoidal embedding of
log-SNR through an MLP, fed to every ResBlock's scale-shift. ADM's classifier is "the
downsampling trunk of the U-Net with an attention pool at the 8x8 layer"; here:

  in_conv
  down_i  (one per level): n x [ResBlock (+ self-attention)], strided-conv
          downsample except at the last level
  mid:    ResBlock, self-attention, ResBlock
  pool:   GroupNorm, swish, attention pooling (a query from the mean token attends over
          the tokens plus a learned position embedding, CLIP's AttentionPool2d) -> out_dim

`NoisyEncoder(x_t, log_snr) -> [B, out_dim]` is that trunk; `NoisyClassifier` adds one
linear head per label group (`num_classes`, e.g. (6, 3, 2, 5) for the shapes world's colour,
shape, size and place) and returns their logits as a tuple. There is no text input: the label
is the condition.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imagen_jax.models import layers
from imagen_jax.models import remat as remat_lib
from imagen_jax.models.unet import DownLevel
from imagen_jax.models.unet import MidLevel

Dtype = Any


def _check_inputs(net, x_t, log_snr):
  r = net.resolution
  if x_t.ndim != 4 or x_t.shape[1:] != (r, r, net.in_channels):
    raise ValueError(
        f"{type(net).__name__} takes x_t of shape [B, {r}, {r}, {net.in_channels}]; got "
        f"{tuple(x_t.shape)} (the guide model's resolution must match the stage's)"
    )
  if log_snr.shape != (x_t.shape[0],):
    raise ValueError(f"log_snr has shape {tuple(log_snr.shape)}; expected ({x_t.shape[0]},)")
  levels = len(net.channel_mult)
  if r % 2 ** (levels - 1):
    raise ValueError(f"resolution {r} is not divisible by 2**{levels - 1} ({levels} levels)")


class AttentionPool(nn.Module):
  """[B, H, W, C] -> [B, out_dim]: the mean token (+ position) queries all tokens."""

  out_dim: int
  per_head_channels: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
    pos = self.param(
        "position",
        nn.with_logical_partitioning(nn.initializers.normal(c**-0.5), (None, "embed")),
        (h * w + 1, c),
        self.param_dtype,
    )
    tokens = tokens + pos.astype(tokens.dtype)[None]
    heads, hd = layers.num_heads_for(c, self.per_head_channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def proj(name, inputs):
      return nn.DenseGeneral(
          (heads, hd),
          name=name,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), ("embed", "heads", "kv")
          ),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv")),
          **kw,
      )(inputs)

    q = proj("query", tokens[:, :1])
    mask = jnp.ones((b, h * w + 1), bool)
    out = layers.dot_product_attention(
        q, proj("key", tokens), proj("value", tokens), mask, self.dtype
    )
    out = out.reshape(b, heads * hd)
    return layers.dense(
        self.out_dim, ("mlp", "embed"), name="out", dtype=jnp.float32, param_dtype=self.param_dtype
    )(out).astype(jnp.float32)


class NoisyEncoder(nn.Module):
  """ADM's noise-aware half U-Net: (x_t [B, R, R, C], log_snr [B]) -> [B, out_dim] float32."""

  resolution: int = 64
  in_channels: int = 3
  out_dim: int = 64
  channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (16, 8)
  per_head_channels: int = 64
  embed_dim: int = 512
  freq_dim: int = 128
  num_groups: int = 32
  dropout: float = 0.0
  remat: str = "none"
  remat_policy: str | None = None  # a jax.checkpoint_policies name (models/remat.py)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_t, log_snr, *, train: bool = False):
    _check_inputs(self, x_t, log_snr)
    remat_lib.check_remat(self.remat, self.remat_policy)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    common = dict(
        per_head_channels=self.per_head_channels,
        num_groups=self.num_groups,
        dropout=self.dropout,
        deterministic=not train,
        remat_blocks=self.remat == "block",
        remat_policy=self.remat_policy,
        **kw,
    )
    emb = layers.TimeMLP(self.embed_dim, self.freq_dim, self.param_dtype, name="time")(log_snr)
    full = self.remat == "full"
    down_cls = remat_lib.maybe_remat(DownLevel, full, self.remat_policy)
    mid_cls = remat_lib.maybe_remat(MidLevel, full, self.remat_policy)
    levels = len(self.channel_mult)
    x = layers.conv(self.channels * self.channel_mult[0], name="in_conv", **kw)(
        x_t.astype(self.dtype)
    )
    res = self.resolution
    for i, mult in enumerate(self.channel_mult):
      x, _ = down_cls(
          self.channels * mult,
          self.num_res_blocks,
          res in self.attention_resolutions,
          False,
          downsample=i < levels - 1,
          name=f"down_{i}",
          **common,
      )(x, emb, None, None)
      res = res // 2 if i < levels - 1 else res
    x = mid_cls(self.channels * self.channel_mult[-1], False, name="mid", **common)(
        x, emb, None, None
    )
    x = nn.swish(layers.GroupNorm(self.num_groups, name="pool_norm", **kw)(x))
    return AttentionPool(self.out_dim, self.per_head_channels, name="pool", **kw)(x)


class NoisyClassifier(NoisyEncoder):
  """`NoisyEncoder` + one linear head per label group: (x_t, log_snr) -> tuple of logits
  [B, num_classes[g]] (float32). The encoder's fields are inherited (its params live under
  "encoder")."""

  num_classes: Sequence[int] = (10,)
  out_dim: int = 128

  @nn.compact
  def __call__(self, x_t, log_snr, *, train: bool = False):
    if not self.num_classes or any(int(n) < 2 for n in self.num_classes):
      raise ValueError(f"num_classes={tuple(self.num_classes)}: each label group needs >= 2")
    fields = {
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(NoisyEncoder)
        if f.name not in ("parent", "name")
    }
    h = nn.swish(NoisyEncoder(name="encoder", **fields)(x_t, log_snr, train=train))
    return tuple(
        layers.dense(
            int(n),
            ("embed", "mlp"),
            name=f"head_{g}",
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
        )(h)
        for g, n in enumerate(self.num_classes)
    )
