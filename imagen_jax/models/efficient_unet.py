"""Imagen's Efficient U-Net for the super-resolution stages (App. B.1, Fig. A.28-A.30).

Differences from the standard U-Net (unet.py), as in the paper:
* parameters are shifted to the low resolutions: `num_res_blocks` is per
  level and grows towards the bottom (paper: 2, 4, 8, 8);
* U-Net skip connections are scaled by 1/sqrt(2) (`skip_scale`);
* DBlock = strided conv downsample *first*, then the residual blocks, then
  (optional) attention; UBlock = concat skip, residual blocks, (optional)
  attention, then the upsample *last*. Blocks therefore work at the reduced
  resolution, which is where the memory and speed savings come from.
  Upsampling is nearest-neighbour + conv3x3 (transposed convs are slow in
  XLA).

Layout (L levels, channels c_i, strides s_i):

  x = concat(x_t, resize(lowres))            # lowres bilinearly resized
  in_conv -> init_channels, at full resolution
  down_i: conv3x3 stride s_i -> c_i, n_i x ResBlock, [attention]; skip_i
  up_i (reversed): [concat skip_i / sqrt(2)] (not at the deepest level, whose
          input *is* skip_{L-1}), n_i x ResBlock, [attention],
          nearest x s_i + conv3x3 -> c_{i-1} (init_channels for i=0)
  out_res: ResBlock over concat(up_0 output, in_conv output / sqrt(2)), at
          full resolution (the full-resolution skip; without it the output
          is an upsampled low-resolution map, which cannot predict per-pixel
          noise: an SR stage trained that way samples noise)
  out: GroupNorm, swish, conv3x3 -> out_channels (float32)

Conditioning: time embedding of log_snr + embedding of the augmentation level
`lowres_log_snr` + attention-pooled text, into every ResBlock's scale-shift;
text cross-attention only where `cross_attention[i]` (paper: lowest level),
self-attention where `self_attention[i]`.

remat: "block" rematerialises every ResBlock and Attention layer, "full"
every DBlock / UBlock (only block inputs/outputs are kept); `remat_policy` names a
jax.checkpoint_policies policy for them (models/remat.py).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imagen_jax.models import layers
from imagen_jax.models import remat as remat_lib

Dtype = Any


class DBlock(nn.Module):
  """Strided conv downsample, then ResBlocks, then optional attention."""

  features: int
  num_res_blocks: int
  strides: int
  self_attention: bool = False
  cross_attention: bool = False
  per_head_channels: int = 64
  num_groups: int = 32
  dropout: float = 0.0
  deterministic: bool = True
  remat_blocks: bool = False
  remat_policy: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, context, context_mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_cls = remat_lib.maybe_remat(layers.ResBlock, self.remat_blocks, self.remat_policy)
    attn_cls = remat_lib.maybe_remat(layers.Attention, self.remat_blocks, self.remat_policy)
    x = layers.conv(self.features, 3, self.strides, name="downsample", **kw)(x)
    for i in range(self.num_res_blocks):
      x = res_cls(
          self.features, self.num_groups, self.dropout, self.deterministic, name=f"res_{i}", **kw
      )(x, emb)
    if self.self_attention or self.cross_attention:
      x = attn_cls(
          self.per_head_channels,
          self.self_attention,
          self.cross_attention,
          self.num_groups,
          name="attn",
          **kw,
      )(x, context, context_mask)
    return x


class UBlock(nn.Module):
  """[Concat scaled skip], ResBlocks, optional attention, then upsample."""

  features: int
  out_features: int
  num_res_blocks: int
  strides: int
  self_attention: bool = False
  cross_attention: bool = False
  skip_scale: float = 2**-0.5
  per_head_channels: int = 64
  num_groups: int = 32
  dropout: float = 0.0
  deterministic: bool = True
  remat_blocks: bool = False
  remat_policy: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip, emb, context, context_mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_cls = remat_lib.maybe_remat(layers.ResBlock, self.remat_blocks, self.remat_policy)
    attn_cls = remat_lib.maybe_remat(layers.Attention, self.remat_blocks, self.remat_policy)
    x = x.astype(self.dtype)
    if skip is not None:
      x = jnp.concatenate([x, skip.astype(self.dtype) * self.skip_scale], -1)
    for i in range(self.num_res_blocks):
      x = res_cls(
          self.features, self.num_groups, self.dropout, self.deterministic, name=f"res_{i}", **kw
      )(x, emb)
    if self.self_attention or self.cross_attention:
      x = attn_cls(
          self.per_head_channels,
          self.self_attention,
          self.cross_attention,
          self.num_groups,
          name="attn",
          **kw,
      )(x, context, context_mask)
    if self.strides > 1 or self.out_features != x.shape[-1]:
      x = layers.upsample_nearest(x, self.strides)
      x = layers.conv(self.out_features, 3, name="upsample", **kw)(x)
    return x


class EfficientUNet(nn.Module):
  """Imagen's Efficient U-Net (SR stages; also usable as a base stage).

  __call__(x_t, log_snr, text_emb, text_mask, *, lowres=None,
  lowres_log_snr=None, train=False) -> float32 prediction shaped like x_t.
  x_t is `resolution` square or a crop of it (sides divisible by the product
  of `strides`, `lowres` the matching crop), as the 256->1024 stage trains.
  Per-level fields (`channels`, `num_res_blocks`, `strides`,
  `self_attention`, `cross_attention`) have one entry per level; ints/bools
  broadcast.
  """

  resolution: int = 256
  lowres_resolution: int | None = 64
  text_dim: int = 4096
  in_channels: int = 3
  out_channels: int = 3
  lowres_channels: int = 3
  init_channels: int = 128
  channels: Sequence[int] = (128, 256, 512, 1024)
  num_res_blocks: int | Sequence[int] = (2, 4, 8, 8)
  strides: int | Sequence[int] = (2, 2, 2, 2)
  self_attention: bool | Sequence[bool] = (False, False, False, True)
  cross_attention: bool | Sequence[bool] = (False, False, False, True)
  per_head_channels: int = 64
  embed_dim: int = 1024
  cond_dim: int = 1024
  freq_dim: int = 256
  num_groups: int = 32
  dropout: float = 0.0
  skip_scale: float = 2**-0.5
  remat: str = "none"
  remat_policy: str | None = None  # a jax.checkpoint_policies name (models/remat.py)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def level_config(self):
    """Per-level (channels, num_res_blocks, strides, self_attn, cross_attn)."""
    n = len(self.channels)
    return list(
        zip(
            tuple(self.channels),
            layers.int_tuple(self.num_res_blocks, n, "num_res_blocks"),
            layers.int_tuple(self.strides, n, "strides"),
            layers.optional_bool_tuple(self.self_attention, n, "self_attention"),
            layers.optional_bool_tuple(self.cross_attention, n, "cross_attention"),
        )
    )

  @nn.compact
  def __call__(
      self,
      x_t,
      log_snr,
      text_emb,
      text_mask,
      *,
      lowres=None,
      lowres_log_snr=None,
      train: bool = False,
  ):
    cfg = self.level_config()
    total_stride = 1
    for _, _, s, _, _ in cfg:
      total_stride *= s
    if self.resolution % total_stride:
      raise ValueError(
          f"resolution {self.resolution} is not divisible by the "
          f"product of strides ({total_stride})"
      )
    # Fully convolutional (attention has no positions): trains on crops.
    layers.validate_inputs(
        self, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr, crop_multiple=total_stride
    )
    kw, common, emb, context, mask, x = layers.network_setup(
        self, train, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr
    )
    full = self.remat == "full"
    dblock_cls = remat_lib.maybe_remat(DBlock, full, self.remat_policy)
    ublock_cls = remat_lib.maybe_remat(UBlock, full, self.remat_policy)

    x = layers.conv(self.init_channels, name="in_conv", **kw)(x)
    full_res = x
    skips = []
    for i, (ch, n, s, sa, ca) in enumerate(cfg):
      x = dblock_cls(ch, n, s, sa, ca, name=f"down_{i}", **common)(x, emb, context, mask)
      skips.append(x)
    for i in reversed(range(len(cfg))):
      ch, n, s, sa, ca = cfg[i]
      out_ch = cfg[i - 1][0] if i > 0 else self.init_channels
      skip = skips.pop()
      if i == len(cfg) - 1:
        skip = None  # the deepest UBlock's input is this skip already
      x = ublock_cls(
          ch, out_ch, n, s, sa, ca, skip_scale=self.skip_scale, name=f"up_{i}", **common
      )(x, skip, emb, context, mask)
    # Full-resolution path: without it the output would be an upsampled
    # low-resolution feature map that cannot reproduce per-pixel noise (eps)
    # or the input's finest detail. One ResBlock at init_channels over the
    # in_conv features (scaled like every skip) keeps it cheap.
    x = jnp.concatenate([x, full_res * self.skip_scale], -1)
    x = remat_lib.maybe_remat(layers.ResBlock, self.remat == "block", self.remat_policy)(
        self.init_channels, self.num_groups, self.dropout, not train, name="out_res", **kw
    )(x, emb)
    return layers.output_head(
        x, self.out_channels, self.num_groups, self.dtype, self.param_dtype, "out"
    )
