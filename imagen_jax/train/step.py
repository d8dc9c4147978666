"""The pure training step, compiled by either placement (jit with shardings, or pmap)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from imagen_jax.train import fused_update as fused_update_lib
from imagen_jax.train import optim
from imagen_jax.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
NONFINITE_POLICIES = ("skip", "halt")


def _bad_examples(batch: dict) -> jax.Array:
  """Number of examples with a non-finite value in any floating batch entry."""
  bad = None
  for value in jax.tree.leaves(batch):
    if not jnp.issubdtype(value.dtype, jnp.floating) or value.ndim == 0:
      continue
    row_bad = ~jnp.all(jnp.isfinite(value.reshape(value.shape[0], -1)), axis=1)
    bad = row_bad if bad is None or bad.shape != row_bad.shape else bad | row_bad
  return jnp.zeros((), jnp.int32) if bad is None else jnp.sum(bad).astype(jnp.int32)


def train_step_body(
    state: TrainState,
    batch: dict,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule | None,
    ema_decay: float,
    ema_warmup: bool,
    fused_update: str = "off",
    reduce_fn: Callable[[Any], Any] = lambda x: x,
    rng_fold: Callable[[jax.Array], jax.Array] = lambda r: r,
    param_shardings: Any = None,
) -> tuple[TrainState, dict]:
  """One optimizer step. `reduce_fn` averages grads and metrics across data-parallel replicas
  (identity under jit, where XLA does it; `lax.pmean` in the pmap wrapper).

  `fused_update` ("auto"/"on"/"off", `optim.fused_update_mode`): with "auto" or "on", grads,
  params, EMA and the optimizer's moments are packed into flat buffers for the update and
  split back after it (imagen_jax.train.fused_update); `param_shardings` (the jit placement's)
  says which params are replicated, hence packable; None: all are local to the step.
  """
  layout = fused_update_lib.plan(
      state.params,
      state.ema_params,
      state.opt_state,
      mode=fused_update,
      param_shardings=param_shardings,
  )
  rng = rng_fold(jax.random.fold_in(state.rng, state.step))
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
  # Packed before the reduction: under pmap, one all-reduce per buffer.
  loss, aux, grads = reduce_fn((loss, aux, layout.pack(grads)))
  bad = reduce_fn(_bad_examples(batch).astype(jnp.float32))
  grad_norm = optax.tree.norm(grads)
  params = layout.pack(state.params)
  ema_params = layout.pack(state.ema_params)
  opt_state = layout.pack_state(state.opt_state)

  updates, new_opt = tx.update(grads, opt_state, params)
  # The update itself is checked too: a finite loss and gradient can still give a non-finite
  # or overflowing update (Adam's eps=0 on a zero gradient, lr=1e30), and with it non-finite
  # params and EMA. One global norm, as for the gradient: a finiteness test of the new
  # params, EMA and optimizer state leaf by leaf made XLA:CPU compile the base stage's step
  # for over ten minutes instead of one (every select then waits on every new tensor).
  update_norm = optax.tree.norm(updates)
  update_finite = jnp.isfinite(update_norm)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & update_finite
  new_params = optax.apply_updates(params, updates)
  decay = optim.ema_decay_at(state.step, ema_decay, ema_warmup)
  new_ema = optim.ema_update(ema_params, new_params, decay)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=layout.unpack(keep(new_params, params)),
      ema_params=layout.unpack(keep(new_ema, ema_params)),
      opt_state=layout.unpack_state(keep(new_opt, opt_state)),
      skipped=state.skipped + jnp.where(finite, 0, 1).astype(state.skipped.dtype),
  )
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
  metrics.update(
      loss=jnp.asarray(loss, jnp.float32),
      grad_norm=grad_norm.astype(jnp.float32),
      ema_decay=decay,
      nonfinite=jnp.where(finite, 0.0, 1.0),
      update_norm=update_norm.astype(jnp.float32),
      skipped_total=new_state.skipped.astype(jnp.float32),
      bad_examples=bad,
  )
  if lr_schedule is not None:
    metrics["lr"] = optim.lr_at(lr_schedule, state.step)
  return new_state, metrics


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    ema_decay: float,
    ema_warmup: bool = True,
    lr_schedule: optax.Schedule | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
  """Pure `train_step(state, batch) -> (state, metrics)`; a placement compiles it.

  A step whose loss, grad norm or update norm is non-finite (an overflowing update counts:
  its norm is inf) leaves params, EMA and optimizer state unchanged and sets
  `metrics["nonfinite"] = 1`; the loop applies `config.nonfinite` (one of
  `NONFINITE_POLICIES`) when it reads the metrics (no host sync inside the step).

  The update runs on flat buffers where `tx` allows it (`optim.fused_update_mode`); a
  placement that shards params under jit passes `param_shardings=` to the body.
  """
  return functools.partial(
      train_step_body,
      loss_fn=loss_fn,
      tx=tx,
      fused_update=optim.fused_update_mode(tx),
      lr_schedule=lr_schedule,
      ema_decay=float(ema_decay),
      ema_warmup=bool(ema_warmup),
  )
