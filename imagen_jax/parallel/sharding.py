"""Parameter, optimizer-state and batch shardings.

Params carry logical axis names (`nn.with_logical_partitioning`); `config.parallel.logical_rules`
maps them to mesh axes. On top of that, the FSDP rule shards the largest still-unsharded dimension
divisible by the `fsdp` axis size of every array of at least `min_fsdp_size_mb` MiB.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import logging
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from imagen_jax.parallel import mesh as mesh_lib

FSDP = "fsdp"


def normalize_rules(rules: Sequence[Any] | None) -> tuple[tuple[str, Any], ...]:
  """Config rules (lists from JSON or tuples) -> flax's tuple-of-pairs form."""
  out = []
  for rule in rules or ():
    if len(rule) != 2:
      raise ValueError(f"Logical axis rule {rule!r} is not a (logical_name, mesh_axis) pair.")
    target = rule[1]
    if isinstance(target, list):
      target = tuple(target)
    out.append((str(rule[0]), target))
  return tuple(out)


def _spec_axes(spec: P) -> set[str]:
  used = set()
  for entry in spec:
    if entry is None:
      continue
    used.update(entry if isinstance(entry, tuple) else (entry,))
  return used


def _apply_fsdp(
    spec: P, shape: tuple[int, ...], itemsize: int, mesh: Mesh, min_size_mb: float
) -> P:
  """Adds `fsdp` to the largest unsharded divisible dim of a large enough array."""
  n = mesh.shape.get(FSDP, 1)
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if n <= 1 or FSDP in _spec_axes(spec):
    return P(*entries)
  if np.prod(shape, dtype=np.int64) * itemsize < min_size_mb * 2**20:
    return P(*entries)
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if entries[dim] is None and shape[dim] % n == 0:
      entries[dim] = FSDP
      return P(*entries)
  return P(*entries)


def _drop_indivisible(spec: P, shape: tuple[int, ...], mesh: Mesh, where: str) -> P:
  """Replicates (with a warning) dims whose rule-given mesh axes do not divide them."""
  entries = list(spec)
  for dim, entry in enumerate(entries):
    if entry is None:
      continue
    axes = entry if isinstance(entry, tuple) else (entry,)
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if shape[dim] % n:
      logging.warning(
          "%s: dim %d of shape %s is not divisible by mesh axes %s (size %d); replicating it.",
          where,
          dim,
          shape,
          axes,
          n,
      )
      entries[dim] = None
  return P(*entries)


def param_shardings(
    boxed_abstract: Any, mesh: Mesh, rules: Sequence[Any] | None, min_fsdp_size_mb: float
) -> Any:
  """NamedShardings (unboxed tree structure) for a boxed abstract param tree."""
  rules = normalize_rules(rules)
  logical = nn.get_partition_spec(boxed_abstract)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  unboxed = meta.unbox(boxed_abstract)
  paths_specs = jax.tree_util.tree_flatten_with_path(
      mesh_specs, is_leaf=lambda x: isinstance(x, P)
  )[0]
  leaves, treedef = jax.tree.flatten(unboxed)
  if len(paths_specs) != len(leaves):
    raise ValueError("Partition specs and params have different structures.")
  out = []
  for (path, spec), leaf in zip(paths_specs, leaves):
    spec = spec if isinstance(spec, P) else P()
    where = jax.tree_util.keystr(path)
    # Drop mesh axes that this mesh does not have (e.g. rules naming 'model').
    spec = P(*[_keep_axes(e, mesh) for e in spec])
    spec = _drop_indivisible(spec, leaf.shape, mesh, where)
    spec = _apply_fsdp(spec, leaf.shape, np.dtype(leaf.dtype).itemsize, mesh, min_fsdp_size_mb)
    out.append(NamedSharding(mesh, spec))
  return jax.tree.unflatten(treedef, out)


def _keep_axes(entry: Any, mesh: Mesh) -> Any:
  if entry is None:
    return None
  axes = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a in mesh.axis_names)
  if not axes:
    return None
  return axes if len(axes) > 1 else axes[0]


def shape_sharding(leaf: Any, mesh: Mesh, min_fsdp_size_mb: float) -> NamedSharding:
  """Sharding from the shape alone: FSDP rule or replicated (non-param-shaped leaves)."""
  shape = tuple(getattr(leaf, "shape", ()))
  itemsize = np.dtype(getattr(leaf, "dtype", np.float32)).itemsize
  return NamedSharding(mesh, _apply_fsdp(P(), shape, itemsize, mesh, min_fsdp_size_mb))


def opt_state_shardings(
    tx: optax.GradientTransformation,
    abstract_opt_state: Any,
    abstract_params: Any,
    params_shardings: Any,
    mesh: Mesh,
    min_fsdp_size_mb: float,
) -> Any:
  """Optimizer leaves shaped like their param follow its sharding; other leaves (counts,
  Adafactor's factored rows/cols) use the shape rule."""

  def follow(leaf, param, sharding):
    if tuple(leaf.shape) == tuple(param.shape):
      return sharding
    return shape_sharding(leaf, mesh, min_fsdp_size_mb)

  return optax.tree_map_params(
      tx,
      follow,
      abstract_opt_state,
      abstract_params,
      params_shardings,
      transform_non_params=lambda x: shape_sharding(x, mesh, min_fsdp_size_mb),
      is_leaf=lambda x: isinstance(x, NamedSharding),
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over the mesh's data axes, ("data", "fsdp")."""
  axes = mesh_lib.data_axes(mesh)
  if not axes:
    raise ValueError(f"Mesh {mesh.axis_names} has neither a 'data' nor an 'fsdp' axis.")
  return NamedSharding(mesh, P(axes))


def describe(shardings: Any, abstract: Any, max_lines: int = 20) -> str:
  """Human-readable `path: shape -> spec` lines (the largest arrays first)."""
  rows = []
  flat_a = jax.tree_util.tree_flatten_with_path(abstract)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, a), s in zip(flat_a, flat_s):
    rows.append(
        (int(np.prod(a.shape)), f"{jax.tree_util.keystr(path)}: {tuple(a.shape)} -> {s.spec}")
    )
  rows.sort(key=lambda r: -r[0])
  return "\n".join(r[1] for r in rows[:max_lines])
