"""The training state: a pure pytree (no callables), saved as is by Orbax."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """`step` counts applied-or-skipped steps; `skipped` counts non-finite skipped steps.

  `rng` is a raw uint32 key (`jax.random.PRNGKey`); the step uses `fold_in(rng, step)`.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A fresh state: step 0, EMA = params, the optimizer's initial state."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=jnp.asarray(rng, jnp.uint32),
      skipped=jnp.zeros((), jnp.int32),
  )
