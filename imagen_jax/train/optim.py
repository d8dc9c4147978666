"""Optimizer, learning-rate schedule and EMA from `config.optim` / `config.ema`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from imagen_jax import config_lib
from imagen_jax.train import fused_update

OPTIMIZERS = ("adam", "adamw", "adafactor")
DECAYS = ("cosine", "constant")
FUSED_UPDATE_MODES = fused_update.MODES
# Elementwise but for global norms, so the step may run them on flat buffers (fused_update).
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw")


class ElementwiseTransformation(NamedTuple):
  """An optax transformation that acts on each element alone, but for global norms (clipping
  by the global norm, Adam, AdamW without a mask), and `config.optim.fused_update`: "auto" or
  "on" let the train step run it on a few flat buffers instead of tensor by tensor
  (imagen_jax.train.fused_update). Used as any optax transformation otherwise."""

  init: optax.TransformInitFn
  update: optax.TransformUpdateFn
  fused_update: str


def fused_update_mode(tx: Any) -> str:
  """How the step may pack `tx`'s work: "auto"/"on" for an `ElementwiseTransformation`,
  "off" for any other transformation."""
  return tx.fused_update if isinstance(tx, ElementwiseTransformation) else "off"


def make_lr_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then cosine to `end_lr` or constant."""
  lr = float(optim_cfg.lr)
  warmup = int(config_lib.get(optim_cfg, "warmup_steps", 0))
  decay = config_lib.get(optim_cfg, "decay", "cosine")
  if decay not in DECAYS:
    raise ValueError(f"config.optim.decay={decay!r}; expected one of {DECAYS}.")
  if decay == "constant":
    if warmup <= 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  end_lr = float(config_lib.get(optim_cfg, "end_lr", 0.0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=max(int(total_steps), warmup + 1),
      end_value=end_lr,
  )


def make_optimizer(
    optim_cfg: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns `(tx, lr_schedule)`; clipping by global norm comes first when configured.

  `config.optim.fused_update` ("off" by default, "auto", "on"): for Adam and AdamW, "auto" and
  "on" return an `ElementwiseTransformation`, whose update the step runs on flat buffers
  (imagen_jax.train.fused_update: the same values and a third of the HLO ops, but on XLA:CPU
  a slower compile and several times the temp memory, hence off; BENCHMARKS.md, "Compile time").
  Adafactor is not elementwise (its factored moments depend on each tensor's shape): "auto"
  keeps it tensor by tensor, "on" is a ValueError.
  """
  name = optim_cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={name!r}; expected one of {OPTIMIZERS}.")
  fused = config_lib.get(optim_cfg, "fused_update", "off")
  if fused not in FUSED_UPDATE_MODES:
    raise ValueError(
        f"config.optim.fused_update={fused!r}; expected one of {', '.join(FUSED_UPDATE_MODES)}."
    )
  if fused == "on" and name not in ELEMENTWISE_OPTIMIZERS:
    raise ValueError(
        f"config.optim.fused_update='on' needs an elementwise optimizer "
        f"({', '.join(ELEMENTWISE_OPTIMIZERS)}); {name!r} is not. Use 'auto' or 'off'."
    )
  schedule = make_lr_schedule(optim_cfg, total_steps)
  b1 = float(config_lib.get(optim_cfg, "b1", 0.9))
  b2 = float(config_lib.get(optim_cfg, "b2", 0.999))
  eps = float(config_lib.get(optim_cfg, "eps", 1e-8))
  wd = float(config_lib.get(optim_cfg, "weight_decay", 0.0))
  if name == "adam":
    if wd:
      raise ValueError("config.optim.weight_decay is set for 'adam'; use name='adamw'.")
    opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd)
  else:
    # Factored second moments; lr is absolute (no parameter-scale multiplier) so `lr` means
    # the same thing as for Adam; momentum b1 unless b1 == 0; b2/eps do not apply.
    opt = optax.adafactor(
        learning_rate=schedule,
        multiply_by_parameter_scale=False,
        clipping_threshold=None,
        momentum=b1 if b1 > 0 else None,
        decay_rate=float(config_lib.get(optim_cfg, "adafactor_decay_rate", 0.8)),
        weight_decay_rate=wd or None,
    )
  clip = float(config_lib.get(optim_cfg, "grad_clip_norm", 0.0))
  tx = optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt
  if fused != "off" and name in ELEMENTWISE_OPTIMIZERS:
    tx = ElementwiseTransformation(tx.init, tx.update, fused)
  return tx, schedule


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """`min(decay, (1 + step) / (10 + step))` with warm-up, else `decay`."""
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  return jax.tree.map(
      lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params
  )


def lr_at(schedule: Callable[[jax.Array], jax.Array], step: jax.Array) -> jax.Array:
  return jnp.asarray(schedule(step), jnp.float32)
