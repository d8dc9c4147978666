"""Device mesh from config: `config.parallel.mesh = [("data", -1), ("fsdp", 1)]`.

A size of -1 takes the devices left over by the other axes (at most one -1).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

DATA_AXES = ("data", "fsdp")


def parse_mesh_spec(
    spec: Sequence[Any], num_devices: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves `[(name, size), ...]` (one size may be -1) against `num_devices`."""
  if not spec:
    raise ValueError("config.parallel.mesh is empty; expected e.g. [('data', -1), ('fsdp', 1)].")
  names, sizes = [], []
  for entry in spec:
    if len(entry) != 2 or not isinstance(entry[0], str):
      raise ValueError(f"Mesh entry {entry!r} is not a (name, size) pair.")
    name, size = entry[0], int(entry[1])
    if name in names:
      raise ValueError(f"Mesh axis {name!r} appears twice in {list(spec)!r}.")
    if size == 0 or size < -1:
      raise ValueError(f"Mesh axis {name!r} has size {size}; sizes are positive or -1.")
    names.append(name)
    sizes.append(size)
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may have size -1, got {list(spec)!r}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"Mesh {list(spec)!r}: the fixed axes need a multiple of {known} devices, "
          f"but there are {num_devices}."
      )
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    raise ValueError(
        f"Mesh {list(spec)!r} has {known} devices in total, but there are {num_devices}."
    )
  return tuple(names), tuple(sizes)


def create_mesh(spec: Sequence[Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh` (Auto axis types) over `devices` (default: all global devices)."""
  devices = list(jax.devices() if devices is None else devices)
  names, shape = parse_mesh_spec(spec, len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topologies mesh_utils does not know: fall back to process-major order.
    device_array = np.array(devices).reshape(shape)
  return Mesh(device_array, names)


def data_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over (those of `data`, `fsdp` present)."""
  return tuple(a for a in DATA_AXES if a in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in data_axes(mesh)], dtype=np.int64))
