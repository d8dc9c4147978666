"""Per-process numpy batches -> global `jax.Array`s sharded over the data axes."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from imagen_jax.parallel import mesh as mesh_lib


def check_batch_size(global_batch_size: int, mesh: Mesh, process_count: int | None = None) -> int:
  """Returns the per-process batch size; ValueError naming the numbers if it does not divide."""
  process_count = jax.process_count() if process_count is None else process_count
  n_data = mesh_lib.data_parallel_size(mesh)
  if global_batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {global_batch_size}.")
  if global_batch_size % n_data:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {n_data} devices of "
        f"the mesh's data axes {mesh_lib.data_axes(mesh)} (mesh shape {dict(mesh.shape)})."
    )
  if global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the process count "
        f"{process_count}."
    )
  return global_batch_size // process_count


def make_global_batch(
    local_batch: Mapping[str, Any], sharding: NamedSharding
) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays (numeric entries only).

  Every process passes its own `local_batch` (same keys, same local shapes); the global
  leading dim is `local * process_count`. Non-numeric entries (e.g. caption strings) must be
  removed by the caller beforehand.
  """
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype == object or value.dtype.kind in "USO":
      raise TypeError(
          f"Batch entry {key!r} has dtype {value.dtype}; only numeric arrays "
          "can be sent to devices (tokenize or drop it on the host first)."
      )
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
