"""Multi-tensor ("fused") update: the step's optimizer work on a few flat buffers.

Tensor by tensor, the step's update (clipping by the global norm, Adam's moments and bias
correction, `apply_updates`, the EMA and the non-finite guard's selects) is about 63 HLO ops
per parameter tensor: for the base64 small U-Net's 770 tensors, 72% of the step's ops and
most of its XLA compile time. A `Layout` instead packs the leaves of every param-structured
tree (params, grads, EMA, the optimizer's moments) into one 1-D buffer per dtype group
(`concatenate` of the raveled leaves); the step runs the same optax transformation and the
same elementwise code on the packed trees, and `unpack` splits the results back (`slice` +
`reshape`). The TrainState, hence checkpoints, keeps its layout: packing lives inside the
step only.

Valid for transformations that are elementwise except for global reductions
(`optim.ElementwiseTransformation`: `clip_by_global_norm`, Adam, AdamW without a mask): a
global norm over the buffers is the norm over the tensors, up to the order of summation.
Adafactor's factored moments depend on each tensor's shape, so `optim.make_optimizer` leaves
it per tensor.

Sharding: under pmap and on one device every array in the step is local, and so it is under
jit for a fully-replicated (e.g. data-parallel) parameter. Packing a sharded tensor under jit
(FSDP) would gather it whole on every device, so the jit placement passes the params'
shardings (`train.step.train_step_body(param_shardings=...)`) and `plan` packs only the
fully-replicated leaves; sharded ones stay separate entries, updated tensor by tensor.

Off by default (`config.optim.fused_update="off"`): on XLA:CPU the packed step has a third of
the ops but compiles slower (each of the 4 slices per tensor that unpacking makes is a kernel
of its own) and needs several times the temporary memory (the flat copies); BENCHMARKS.md,
"Compile time". Not yet measured on a GPU.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

MODES = ("auto", "on", "off")


class Packed(NamedTuple):
  """A param-structured tree, packed: one flat buffer per group, the other leaves as they are."""

  buffers: tuple[jax.Array, ...]
  kept: tuple[Any, ...]


class _Group(NamedTuple):
  """Leaves (by flat index) concatenated into one buffer, and where each starts in it."""

  indices: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  offsets: tuple[int, ...]  # len(indices) + 1 entries; the last is the buffer's size

  def pack(self, leaves: Sequence[jax.Array]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(leaves[i]) for i in self.indices])

  def unpack(self, buffer: jax.Array, out: list) -> None:
    for i, shape, start, end in zip(self.indices, self.shapes, self.offsets, self.offsets[1:]):
      out[i] = lax.slice(buffer, (start,), (end,)).reshape(shape)


class Layout:
  """How the trees shaped like `params` pack; without groups, every method is the identity."""

  def __init__(self, treedef: Any, groups: tuple[_Group, ...] = (), kept: tuple[int, ...] = ()):
    self.treedef = treedef
    self.groups = groups
    self.kept = kept

  @property
  def fused(self) -> bool:
    return bool(self.groups)

  def is_param_tree(self, tree: Any) -> bool:
    return jax.tree.structure(tree) == self.treedef

  def pack(self, tree: Any) -> Any:
    if not self.groups:
      return tree
    leaves = self.treedef.flatten_up_to(tree)
    return Packed(tuple(g.pack(leaves) for g in self.groups), tuple(leaves[i] for i in self.kept))

  def unpack(self, packed: Any) -> Any:
    if not self.groups:
      return packed
    leaves = [None] * self.treedef.num_leaves
    for group, buffer in zip(self.groups, packed.buffers):
      group.unpack(buffer, leaves)
    for i, leaf in zip(self.kept, packed.kept):
      leaves[i] = leaf
    return self.treedef.unflatten(leaves)

  def pack_state(self, opt_state: Any) -> Any:
    """Every param-structured subtree of an optax state packed (moments), the rest kept."""
    if not self.groups:
      return opt_state
    return jax.tree.map(
        lambda x: self.pack(x) if self.is_param_tree(x) else x,
        opt_state,
        is_leaf=self.is_param_tree,
    )

  def unpack_state(self, packed_state: Any) -> Any:
    if not self.groups:
      return packed_state
    is_packed = lambda x: isinstance(x, Packed)
    return jax.tree.map(
        lambda x: self.unpack(x) if is_packed(x) else x, packed_state, is_leaf=is_packed
    )


def plan(
    params: Any, ema_params: Any, opt_state: Any, *, mode: str, param_shardings: Any = None
) -> Layout:
  """The layout for the step's trees (arrays or tracers; only shapes and dtypes are read).

  Args:
    params: the params (their structure is every packed tree's).
    ema_params: the EMA params (same structure; their dtypes join the grouping).
    opt_state: the optimizer state; its param-structured subtrees are packed too.
    mode: "off" (no packing), "auto" (pack the fully-replicated floating leaves), "on" (as
      "auto", but a ValueError where a param is sharded).
    param_shardings: the params' shardings where the step is jitted with them; None when
      every param is local to the step (one device, pmap).

  Leaves are grouped by the dtypes they have in params, EMA and each optimizer subtree,
  so a packed buffer never promotes a dtype.
  """
  if mode not in MODES:
    raise ValueError(f"config.optim.fused_update={mode!r}; expected one of {', '.join(MODES)}")
  leaves, treedef = jax.tree.flatten(params)
  layout = Layout(treedef)
  if mode == "off" or len(leaves) < 2:  # a single leaf has nothing to fuse with
    return layout
  if param_shardings is None:
    replicated = [True] * len(leaves)
  else:
    replicated = [s.is_fully_replicated for s in treedef.flatten_up_to(param_shardings)]
  if mode == "on" and not all(replicated):
    sharded = [
        jax.tree_util.keystr(path)
        for (path, _), rep in zip(jax.tree_util.tree_flatten_with_path(params)[0], replicated)
        if not rep
    ]
    raise ValueError(
        f"config.optim.fused_update='on', but {len(sharded)} params are sharded (e.g. "
        f"{sharded[0]}): packing them would gather each on every device. Use 'auto' (packs "
        "the replicated params only) or 'off'."
    )
  nodes = jax.tree.leaves(opt_state, is_leaf=layout.is_param_tree)
  subtrees = [jax.tree.leaves(t) for t in nodes if layout.is_param_tree(t)]
  columns = [leaves, treedef.flatten_up_to(ema_params)] + subtrees
  by_key: dict[tuple, list[int]] = {}
  kept = []
  for i, leaf in enumerate(leaves):
    dtypes = tuple(jnp.dtype(col[i].dtype) for col in columns)
    if replicated[i] and all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
      by_key.setdefault(dtypes, []).append(i)
    else:
      kept.append(i)
  groups = []
  for indices in by_key.values():
    shapes = tuple(tuple(leaves[i].shape) for i in indices)
    offsets = [0]
    for shape in shapes:
      offsets.append(offsets[-1] + math.prod(shape))
    groups.append(_Group(tuple(indices), shapes, tuple(offsets)))
  return Layout(treedef, tuple(groups), tuple(kept))
