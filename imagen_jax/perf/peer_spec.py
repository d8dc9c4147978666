"""Our stage config, translated into imagen-pytorch's `Unet` / `Imagen` arguments.

`benchmarks/peer_imagen_pytorch.py` builds lucidrains' imagen-pytorch (v2.1.0) from the JSON
spec made here, so `scripts/benchmark.py` can time both implementations on the same job. What
is matched, per network:

  UNet (base stages)       dim = channels, dim_mults = channel_mult, num_resnet_blocks =
                           num_res_blocks, layer_attns = layer_cross_attns = the levels whose
                           resolution is in attention_resolutions, attn_dim_head =
                           per_head_channels, cond_dim, text_embed_dim, max_text_len.
  EfficientUNet (SR)       dim = channels[0], dim_mults = channels / channels[0],
                           num_resnet_blocks, layer_attns = self_attention, layer_cross_attns =
                           cross_attention, memory_efficient=True (imagen-pytorch's Efficient
                           U-Net: downsample before the blocks), lowres_cond=True.

imagen-pytorch has one head count for every level (ours: width / per_head_channels per level),
so `attn_heads` is our mean head count over the attention levels, and at least 2 (it asserts
> 1). Its other architecture choices (Perceiver attention pooling, global-context attention,
cross-embed input conv, pixel-shuffle upsampling, time tokens) keep their defaults, as in its
own `BaseUnet64` / `SRUnet256`, so parameter and FLOP counts differ somewhat: the benchmark
prints both and their ratio so the match can be judged. Diffusion settings follow the config
(objective, schedule, caption dropout, min-SNR weighting, dynamic-threshold percentile);
precision is bf16 autocast where our compute dtype is bfloat16, float32 otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imagen_jax import diffusion
from imagen_jax.models import registry

PEER = "imagen-pytorch"
PEER_VERSION = "2.1.0"
_OBJECTIVES = {"eps": "noise", "v": "v", "x0": "x_start"}


def _tuple(value: Any, n: int) -> tuple:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def unet_kwargs(model_name: str, model_config: dict[str, Any], max_text_len: int) -> dict:
  """imagen-pytorch `Unet(**kwargs)` matched to our network `model_name` with `model_config`
  (the field dict of `registry.model_config`)."""
  if model_name not in registry.model_names():
    raise ValueError(f"unknown model {model_name!r}; expected one of {registry.model_names()}")
  c = model_config
  common = dict(
      text_embed_dim=int(c["text_dim"]),
      cond_dim=int(c["cond_dim"]),
      attn_dim_head=int(c["per_head_channels"]),
      max_text_len=int(max_text_len),
  )
  if "channel_mult" in c:  # UNet
    mults = tuple(int(m) for m in c["channel_mult"])
    res = int(c["resolution"])
    level_res = [res // 2**i for i in range(len(mults))]
    attn = tuple(r in tuple(c["attention_resolutions"]) for r in level_res)
    widths = [int(c["channels"]) * m for m, a in zip(mults, attn) if a]
    if c.get("lowres_resolution"):
      raise ValueError(
          f"{model_name}: a standard U-Net SR stage has no imagen-pytorch match "
          "in this benchmark; use an Efficient U-Net stage."
      )
    return dict(
        dim=int(c["channels"]),
        dim_mults=mults,
        num_resnet_blocks=int(c["num_res_blocks"]),
        layer_attns=attn,
        layer_cross_attns=attn,
        attn_heads=_heads(widths, c),
        **common,
    )
  channels = [int(x) for x in c["channels"]]
  n = len(channels)
  if any(ch % channels[0] for ch in channels):
    raise ValueError(
        f"{model_name}: channels {channels} are not multiples of the first; "
        "imagen-pytorch widths are dim * dim_mults."
    )
  if any(int(s) != 2 for s in _tuple(c.get("strides", 2), n)):
    raise ValueError(
        f"{model_name}: strides {c.get('strides')}; imagen-pytorch's Efficient "
        "U-Net downsamples by 2 at every level."
    )
  self_attn = tuple(bool(a) for a in _tuple(c.get("self_attention", False), n))
  cross_attn = tuple(bool(a) for a in _tuple(c.get("cross_attention", False), n))
  widths = [ch for ch, a, x in zip(channels, self_attn, cross_attn) if a or x]
  return dict(
      dim=channels[0],
      dim_mults=tuple(ch // channels[0] for ch in channels),
      num_resnet_blocks=tuple(int(b) for b in _tuple(c["num_res_blocks"], n)),
      layer_attns=self_attn,
      layer_cross_attns=cross_attn,
      attend_at_middle=bool(self_attn[-1]),
      memory_efficient=True,
      lowres_cond=True,
      attn_heads=_heads(widths, c),
      **common,
  )


def _heads(widths: list[int], c: dict[str, Any]) -> int:
  if not widths:
    return 2
  return max(2, int(round(np.mean([w / int(c["per_head_channels"]) for w in widths]))))


def spec(
    config: Any,
    *,
    batch_size: int,
    sample_batch_size: int,
    sample_steps: int,
    guidance_scale: float,
    repeats: int,
    inner: int,
    sample: bool = True,
) -> dict[str, Any]:
  """The JSON-able job for `benchmarks/peer_imagen_pytorch.py --spec` (`sample=False`: the
  train step only)."""
  m, d = config.model, config.diffusion
  model_config = registry.model_config(m.name, m.variant, **dict(m.get("overrides", {}) or {}))
  text_len = int(config.text.max_length)
  prediction = str(d.prediction)
  if prediction not in _OBJECTIVES:
    raise ValueError(
        f"config.diffusion.prediction={prediction!r} has no imagen-pytorch "
        f"objective; expected one of {sorted(_OBJECTIVES)}"
    )
  schedule = str(d.schedule)
  if schedule not in ("cosine", "linear"):
    raise ValueError(
        f"config.diffusion.schedule={schedule!r}; imagen-pytorch has cosine and linear"
    )
  weighting = str(d.get("loss_weighting", "none"))
  dtype = np.dtype(model_config.get("dtype", np.float32)).name
  lowres = model_config.get("lowres_resolution")
  return {
      "peer": PEER,
      "peer_version": PEER_VERSION,
      "unet": unet_kwargs(m.name, model_config, text_len),
      "imagen": dict(
          image_sizes=([int(lowres)] if lowres else []) + [int(model_config["resolution"])],
          text_embed_dim=int(model_config["text_dim"]),
          cond_drop_prob=float(config.input.get("cond_drop_prob", 0.1)),
          pred_objectives=_OBJECTIVES[prediction],
          noise_schedules=schedule,
          lowres_noise_schedule=str(d.get("aug_schedule", schedule)),
          min_snr_loss_weight=weighting == "min_snr",
          min_snr_gamma=float(d.get("min_snr_gamma", 5.0)),
          dynamic_thresholding=str(config.sampling.get("threshold", "dynamic")) == "dynamic",
          dynamic_thresholding_percentile=float(
              config.sampling.get("percentile", diffusion.DEFAULT_PERCENTILE)
          ),
      ),
      "precision": "bf16" if dtype == "bfloat16" else "fp32",
      "optimizer": dict(
          name=str(config.optim.name),
          lr=float(config.optim.lr),
          grad_clip_norm=float(config.optim.get("grad_clip_norm", 0.0) or 0.0),
          ema_decay=float(config.ema.decay),
      ),
      "batch_size": int(batch_size),
      "text_len": text_len,
      "sample_batch_size": int(sample_batch_size),
      "sample_steps": int(sample_steps),
      "guidance_scale": float(guidance_scale),
      "repeats": int(repeats),
      "inner": int(inner),
      "sample": bool(sample),
  }
