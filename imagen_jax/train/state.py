"""The training state: a pure pytree (no callables), saved as is by Orbax."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta


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


class StateSpec(NamedTuple):
  """How a run's train state is made and laid out.

  init: (init_rng, state_rng) -> TrainState (jit it with `out_shardings=shardings`);
  shardings: the state's shardings (a TrainState of shardings); abstract: its
  ShapeDtypeStructs, each carrying its sharding (the restore target).
  """

  init: Callable[[jax.Array, jax.Array], TrainState]
  shardings: TrainState
  abstract: TrainState

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(self.abstract.params)))


def state_spec(
    placement: Any,
    init_variables: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    init_rng: jax.Array,
    state_rng: jax.Array,
) -> StateSpec:
  """The state's initialiser and layout under `placement` (imagen_jax.parallel.placement).

  Both keys are arguments of `init`, not constants in it, so runs that differ only in their
  seed compile the same initialiser (and share it through JAX's compilation cache).
  """

  def init(rng, step_rng):
    params = meta.unbox(init_variables(rng)["params"])
    return create_train_state(params, tx, step_rng)

  abstract = jax.eval_shape(init, init_rng, state_rng)
  param_sh = placement.param_shardings(jax.eval_shape(init_variables, init_rng)["params"])
  rep = placement.replicated
  shardings = TrainState(
      step=rep,
      params=param_sh,
      ema_params=param_sh,
      rng=rep,
      skipped=rep,
      opt_state=placement.opt_state_shardings(tx, abstract.opt_state, abstract.params, param_sh),
  )
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return StateSpec(init, shardings, abstract)
