"""Optimizer, learning-rate schedule and EMA from `config.optim` / `config.ema`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from imagen_jax import config_lib

OPTIMIZERS = ("adam", "adamw", "adafactor")
DECAYS = ("cosine", "constant")


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
  """Returns `(tx, lr_schedule)`; clipping by global norm comes first when configured."""
  name = optim_cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={name!r}; expected one of {OPTIMIZERS}.")
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
