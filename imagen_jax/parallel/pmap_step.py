"""The thin data-parallel pmap path (`config.parallel.mode = "pmap"`).

The only module that uses `jax.pmap`, `lax.pmean` and replicate/unreplicate. It wraps the same
`train_step_body` as the jit path; grads, loss and metrics are averaged with one `lax.pmean`.
Each device folds its index into the step RNG so replicas draw different noise; a loss that uses
the RNG therefore draws different (equally distributed) noise than the jit path does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax import lax

AXIS = "batch"


def make_pmap_train_step(
    step_body: Callable[..., tuple[Any, dict]],
    *,
    fold_device_rng: bool = True,
    devices: Sequence[jax.Device] | None = None,
) -> Callable[[Any, dict], tuple[Any, dict]]:
  """`p_step(replicated_state, sharded_batch) -> (replicated_state, replicated_metrics)`.

  `step_body(state, batch, *, reduce_fn, rng_fold)` is the jit path's step body (see
  `imagen_jax.train.step.make_train_step`, which accepts both keywords); here `reduce_fn` is one
  `lax.pmean` over devices and `rng_fold` folds in the device index. Batch leaves carry a
  leading local-device axis (`shard_batch`). The state is donated.
  """
  rng_fold = (
      (lambda r: jax.random.fold_in(r, lax.axis_index(AXIS))) if fold_device_rng else (lambda r: r)
  )
  body = functools.partial(
      step_body, reduce_fn=lambda tree: lax.pmean(tree, AXIS), rng_fold=rng_fold
  )
  return jax.pmap(body, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """Host or fully-addressable values -> one copy per local device (leading axis)."""
  devices = list(jax.local_devices() if devices is None else devices)
  stacked = jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(_local_value(x)), (len(devices),) + np.shape(x)), tree
  )
  return jax.pmap(lambda x: x, devices=devices)(stacked)


def unreplicate(tree: Any) -> Any:
  """The first replica of each leaf, as a host numpy array."""
  return jax.tree.map(lambda x: np.asarray(_local_value(x)[0]) if _is_array(x) else x, tree)


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _local_value(x: Any) -> Any:
  """A numpy copy of `x`; for a non-fully-addressable replicated array, a local shard."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x) if _is_array(x) else x


def shard_batch(local_batch: dict, num_devices: int | None = None) -> dict:
  """Reshapes each local leaf `[b, ...]` to `[num_devices, b // num_devices, ...]`."""
  n = jax.local_device_count() if num_devices is None else num_devices
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.shape[0] % n:
      raise ValueError(
          f"Local batch entry {key!r} has {value.shape[0]} rows, not divisible "
          f"by the {n} local devices."
      )
    out[key] = value.reshape((n, value.shape[0] // n) + value.shape[1:])
  return out
