"""Imagen's improved U-Net (the 64x64 base stage; Saharia et al. 2022, §2.5).

The ADM-style U-Net (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021) with
Imagen's text conditioning: BigGAN residual blocks with scale-shift
conditioning on (time embedding + attention-pooled text), and at every
`attention_resolutions` level multi-head self-attention whose keys/values
also contain the text tokens (plus a learned null token).

Layout, with n = `num_res_blocks` and channels `channels * channel_mult[i]`:

  in_conv
  down_i  (one per level): n x [ResBlock (+ Attention)], strided-conv
          downsample except at the last level; every output is a skip
  mid:    ResBlock, Attention, ResBlock
  up_i    (reversed): (n + 1) x [concat skip, ResBlock (+ Attention)],
          nearest-neighbour x2 + conv upsample except at level 0
  out:    GroupNorm, swish, conv3x3 -> out_channels (float32)

A base stage can also take GLIDE's inpainting input (`image_cond_channels=4`: the masked
image and the mask, concatenated to x_t) and unCLIP's decoder input (`image_embed_dim`: a
CLIP image embedding added to the time embedding and projected into extra context tokens);
models/image_conditioning.py.

The same module also serves as a *standard* super-resolution U-Net (set
`lowres_resolution`): the low-res image is resized to `resolution`,
concatenated to x_t and the augmentation level is embedded. The Efficient
U-Net benchmark compares against it.

remat: "block" rematerialises every ResBlock and Attention layer, "full"
every resolution level (only level inputs/outputs are kept); `remat_policy` names a
jax.checkpoint_policies policy for them (models/remat.py).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imagen_jax.models import image_conditioning
from imagen_jax.models import layers
from imagen_jax.models import remat as remat_lib

Dtype = Any


class DownLevel(nn.Module):
  """One resolution of the encoder: ResBlocks (+ attention), downsample."""

  features: int
  num_res_blocks: int
  attention: bool
  text_cross_attention: bool
  downsample: bool
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
    skips = []
    for i in range(self.num_res_blocks):
      x = res_cls(
          self.features, self.num_groups, self.dropout, self.deterministic, name=f"res_{i}", **kw
      )(x, emb)
      if self.attention:
        x = attn_cls(
            self.per_head_channels,
            True,
            self.text_cross_attention,
            self.num_groups,
            name=f"attn_{i}",
            **kw,
        )(x, context, context_mask)
      skips.append(x)
    if self.downsample:
      x = layers.conv(self.features, 3, 2, name="downsample", **kw)(x)
      skips.append(x)
    return x, tuple(skips)


class MidLevel(nn.Module):
  """ResBlock, attention (self + text), ResBlock at the lowest resolution."""

  features: int
  text_cross_attention: bool
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
    x = res_cls(
        self.features, self.num_groups, self.dropout, self.deterministic, name="res_0", **kw
    )(x, emb)
    x = attn_cls(
        self.per_head_channels, True, self.text_cross_attention, self.num_groups, name="attn", **kw
    )(x, context, context_mask)
    return res_cls(
        self.features, self.num_groups, self.dropout, self.deterministic, name="res_1", **kw
    )(x, emb)


class UpLevel(nn.Module):
  """One resolution of the decoder: [concat skip, ResBlock (+ attn)] x len(skips)."""

  features: int
  attention: bool
  text_cross_attention: bool
  upsample: bool
  skip_scale: float = 1.0
  per_head_channels: int = 64
  num_groups: int = 32
  dropout: float = 0.0
  deterministic: bool = True
  remat_blocks: bool = False
  remat_policy: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skips, emb, context, context_mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res_cls = remat_lib.maybe_remat(layers.ResBlock, self.remat_blocks, self.remat_policy)
    attn_cls = remat_lib.maybe_remat(layers.Attention, self.remat_blocks, self.remat_policy)
    for i, skip in enumerate(skips):
      skip = skip.astype(self.dtype) * self.skip_scale
      x = jnp.concatenate([x.astype(self.dtype), skip], axis=-1)
      x = res_cls(
          self.features, self.num_groups, self.dropout, self.deterministic, name=f"res_{i}", **kw
      )(x, emb)
      if self.attention:
        x = attn_cls(
            self.per_head_channels,
            True,
            self.text_cross_attention,
            self.num_groups,
            name=f"attn_{i}",
            **kw,
        )(x, context, context_mask)
    if self.upsample:
      x = layers.upsample_nearest(x, 2)
      x = layers.conv(self.features, 3, name="upsample", **kw)(x)
    return x


class UNet(nn.Module):
  """Imagen's base U-Net; also a standard SR U-Net when lowres_resolution is set.

  __call__(x_t, log_snr, text_emb, text_mask, *, lowres=None,
  lowres_log_snr=None, image_cond=None, image_embed=None, train=False)
  -> float32 prediction shaped like x_t.
  """

  resolution: int = 64
  lowres_resolution: int | None = None
  text_dim: int = 4096
  in_channels: int = 3
  out_channels: int = 3
  lowres_channels: int = 3
  channels: int = 512
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  num_res_blocks: int = 3
  attention_resolutions: Sequence[int] = (32, 16, 8)
  text_cross_attention: bool = True
  per_head_channels: int = 64
  embed_dim: int = 2048
  cond_dim: int = 2048
  freq_dim: int = 512
  num_groups: int = 32
  dropout: float = 0.0
  skip_scale: float = 1.0
  image_cond_channels: int = 0  # GLIDE inpainting: 4 (masked RGB, mask)
  image_embed_dim: int = 0  # unCLIP decoder: the CLIP image embedding's width
  num_image_tokens: int = 4
  remat: str = "none"
  remat_policy: str | None = None  # a jax.checkpoint_policies name (models/remat.py)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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
      image_cond=None,
      image_embed=None,
      train: bool = False,
  ):
    layers.validate_inputs(self, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr)
    image_conditioning.check_image_inputs(self, x_t, image_cond, image_embed)
    levels = len(self.channel_mult)
    if self.resolution % 2 ** (levels - 1):
      raise ValueError(
          f"resolution {self.resolution} is not divisible by 2**{levels - 1} ({levels} levels)"
      )
    kw, common, emb, context, mask, x = layers.network_setup(
        self, train, x_t, log_snr, text_emb, text_mask, lowres, lowres_log_snr
    )
    if image_cond is not None:
      x = jnp.concatenate([x, image_cond.astype(x.dtype)], axis=-1)
    if image_embed is not None:
      emb, context, mask = image_conditioning.ImageEmbedConditioning(
          self.embed_dim, self.cond_dim, self.num_image_tokens, name="image_embed", **kw
      )(emb, context, mask, image_embed)
    full = self.remat == "full"
    down_cls = remat_lib.maybe_remat(DownLevel, full, self.remat_policy)
    mid_cls = remat_lib.maybe_remat(MidLevel, full, self.remat_policy)
    up_cls = remat_lib.maybe_remat(UpLevel, full, self.remat_policy)

    x = layers.conv(self.channels * self.channel_mult[0], name="in_conv", **kw)(x)
    skips = [x]
    res = self.resolution
    for i, mult in enumerate(self.channel_mult):
      x, level_skips = down_cls(
          self.channels * mult,
          self.num_res_blocks,
          res in self.attention_resolutions,
          self.text_cross_attention,
          downsample=i < levels - 1,
          name=f"down_{i}",
          **common,
      )(x, emb, context, mask)
      skips.extend(level_skips)
      res = res // 2 if i < levels - 1 else res
    x = mid_cls(
        self.channels * self.channel_mult[-1], self.text_cross_attention, name="mid", **common
    )(x, emb, context, mask)
    for i in reversed(range(levels)):
      n = self.num_res_blocks + 1
      level_skips = tuple(skips[-n:][::-1])
      del skips[-n:]
      x = up_cls(
          self.channels * self.channel_mult[i],
          res in self.attention_resolutions,
          self.text_cross_attention,
          upsample=i > 0,
          skip_scale=self.skip_scale,
          name=f"up_{i}",
          **common,
      )(x, level_skips, emb, context, mask)
      res *= 2
    assert not skips, len(skips)
    return layers.output_head(
        x, self.out_channels, self.num_groups, self.dtype, self.param_dtype, "out"
    )
