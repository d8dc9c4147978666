"""Where the train state and batches live: one object per parallel mode.

`config.parallel.mode` names it:
  "jit"   `jax.jit` with shardings: params (and their EMA and optimizer state) sharded from
          their logical axes with FSDP over the mesh, batches split over its data axes
          (`"pjit"` is accepted as an alias: it is the same thing);
  "pmap"  data parallel: one replica of the state per local device, `lax.pmean` of grads.

The loop and the benchmark talk to a `Placement` only, t5x's partitioner in small: shardings
for the state, the compiled step, batches on devices, the state as checkpoints store it
(global arrays), host metrics, the FLOPs' device count. Neither branches on the mode.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax.core import meta
from jax.sharding import Mesh

from imagen_jax.parallel import batch as batch_lib
from imagen_jax.parallel import pmap_step
from imagen_jax.parallel import sharding as sharding_lib

MODES = ("jit", "pmap")
MODE_ALIASES = {"pjit": "jit"}


def canonical_mode(mode: str) -> str:
  """The mode's canonical name; ValueError naming the value when it is not one."""
  canonical = MODE_ALIASES.get(mode, mode)
  if canonical not in MODES:
    raise ValueError(
        f"config.parallel.mode={mode!r}; expected one of {MODES} "
        f"(or the alias {', '.join(MODE_ALIASES)})."
    )
  return canonical


class JitPlacement:
  """jax.jit with shardings: the state is global arrays laid out as `state_shardings` says."""

  mode = "jit"

  def __init__(
      self, mesh: Mesh, *, logical_rules: Sequence[Any] | None = None, min_fsdp_size_mb: float = 4.0
  ):
    self.mesh = mesh
    self.logical_rules = logical_rules
    self.min_fsdp_size_mb = float(min_fsdp_size_mb)
    self.replicated = sharding_lib.replicated(mesh)
    self.batch_sharding = sharding_lib.batch_sharding(mesh)

  @property
  def flops_devices(self) -> int:
    """The devices one compiled step's cost analysis is spread over."""
    return jax.device_count()

  def param_shardings(self, boxed_params: Any) -> Any:
    shardings = sharding_lib.param_shardings(
        boxed_params, self.mesh, self.logical_rules, self.min_fsdp_size_mb
    )
    logging.info(
        "Largest params and their shardings:\n%s",
        sharding_lib.describe(shardings, meta.unbox(boxed_params)),
    )
    return shardings

  def opt_state_shardings(
      self, tx: Any, abstract_opt_state: Any, abstract_params: Any, param_shardings: Any
  ) -> Any:
    return sharding_lib.opt_state_shardings(
        tx, abstract_opt_state, abstract_params, param_shardings, self.mesh, self.min_fsdp_size_mb
    )

  def lower_step(
      self, step_body: Callable[..., Any], state_shardings: Any, state: Any, batch: Any
  ) -> Any:
    """The lowered `step_body(state, batch) -> (state, metrics)`, state donated.

    `step_body` (`train.step.train_step_body`) gets the params' shardings as
    `param_shardings=`: its fused update packs only the replicated ones (a sharded tensor
    packed into a flat buffer would be gathered on every device).
    """
    step_fn = jax.jit(
        functools.partial(step_body, param_shardings=state_shardings.params),
        in_shardings=(state_shardings, self.batch_sharding),
        out_shardings=(state_shardings, self.replicated),
        donate_argnums=(0,),
    )
    return step_fn.lower(state, batch)

  def put_state(self, state: Any) -> Any:
    """The state as the step takes it, from the global arrays `init`/restore give."""
    return state

  def batch_putter(
      self, preprocess: Callable[[Any, dict], dict] | None = None, frozen_params: Any = None
  ) -> Callable[[dict], dict]:
    """`put(numeric host batch) -> device batch`: this process's rows assembled into global
    arrays, then `preprocess(frozen_params, batch)` (jitted) when given."""
    prep = None if preprocess is None else jax.jit(preprocess, out_shardings=self.batch_sharding)

    def put(numeric: dict) -> dict:
      batch = batch_lib.make_global_batch(numeric, self.batch_sharding)
      return batch if prep is None else prep(frozen_params, batch)

    return put

  def checkpoint_state(self, state: Any, state_shardings: Any) -> Any:
    """The state as checkpoints store it: global arrays with `state_shardings`."""
    del state_shardings
    return state

  def host_metrics(self, metrics: list[dict]) -> list[dict]:
    """Device metrics of several steps -> host numpy values (one sync)."""
    return jax.device_get(metrics)

  def unplaced(self, tree: Any) -> Any:
    """A part of the state (e.g. EMA params) as global arrays, for jitted sampling."""
    return tree

  def result(self, state: Any) -> Any:
    """What `train` returns: global arrays."""
    return state


class PmapPlacement(JitPlacement):
  """pmap: the state is replicated per local device; batches get a leading device axis."""

  mode = "pmap"

  def param_shardings(self, boxed_params: Any) -> Any:
    return jax.tree.map(lambda _: self.replicated, meta.unbox(boxed_params))

  def opt_state_shardings(
      self, tx: Any, abstract_opt_state: Any, abstract_params: Any, param_shardings: Any
  ) -> Any:
    del tx, abstract_params, param_shardings
    return jax.tree.map(lambda _: self.replicated, abstract_opt_state)

  @property
  def flops_devices(self) -> int:
    return 1  # a pmapped program is one device's

  def lower_step(self, step_body, state_shardings, state, batch):
    del state_shardings
    return pmap_step.make_pmap_train_step(step_body).lower(state, batch)

  def put_state(self, state):
    return pmap_step.replicate(jax.device_get(state))

  def batch_putter(self, preprocess=None, frozen_params=None):
    if preprocess is None:
      return pmap_step.shard_batch
    put_global = super().batch_putter(preprocess, frozen_params)
    n = jax.local_device_count()

    def put(numeric):
      batch = put_global(numeric)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

    return put

  def checkpoint_state(self, state, state_shardings):
    return _to_global(pmap_step.unreplicate(state), state_shardings)

  def host_metrics(self, metrics):
    return [jax.tree.map(lambda x: np.asarray(x)[0], m) for m in jax.device_get(metrics)]

  def unplaced(self, tree):
    return jax.device_put(pmap_step.unreplicate(tree))

  def result(self, state):
    return pmap_step.unreplicate(state)


def for_config(parallel_config: Any, mesh: Mesh) -> JitPlacement:
  """The placement `config.parallel` names (`mode`, `logical_rules`, `min_fsdp_size_mb`)."""
  cls = {"jit": JitPlacement, "pmap": PmapPlacement}[canonical_mode(parallel_config.mode)]
  return cls(
      mesh,
      logical_rules=parallel_config.get("logical_rules"),
      min_fsdp_size_mb=float(parallel_config.get("min_fsdp_size_mb", 4.0)),
  )


def _to_global(tree: Any, shardings: Any) -> Any:
  """Host values (identical on every process) -> global arrays with `shardings`."""

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(put, tree, shardings)
