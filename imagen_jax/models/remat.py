"""Rematerialisation (gradient checkpointing) of the U-Nets' blocks.

Two network fields choose it (both `--config.model.overrides.*`):

  remat         "none" | "block" (every ResBlock and Attention layer) | "full" (every
                resolution level / DBlock / UBlock): the wrapped module keeps only its
                inputs for the backward pass and recomputes the rest there.
  remat_policy  None (jax's default, `nothing_saveable`) or the name of a
                `jax.checkpoint_policies` policy, passed to `nn.remat(..., policy=...)`:
                which intermediates of a rematerialised module may be saved after all.
                `dots_saveable` keeps every convolution and matmul output (attention
                logits included), so the backward recomputes only norms and activations;
                `dots_with_no_batch_dims_saveable` keeps only the matmuls without batch
                dimensions (the embedding projections), recomputing the convs.

The policies that take arguments (`save_only_these_names`, offloading) are not offered:
the networks name no intermediates (`checkpoint_name`).

XLA:CPU's default (concurrency-optimised) scheduler runs the recomputation early, next to
the forward pass, which gives the memory back: on CPU set
`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false` for remat to save any.
What each setting saves: BENCHMARKS.md "Memory (remat)", benchmarks/remat_memory.py.
"""

from typing import Callable

import flax.linen as nn
import jax

REMAT_MODES = ("none", "block", "full")
# The argument-free policies of jax.checkpoint_policies (jax 0.4.x - 0.10.x): aliases included.
REMAT_POLICIES = tuple(
    name
    for name in (
        "nothing_saveable",
        "everything_saveable",
        "dots_saveable",
        "checkpoint_dots",
        "dots_with_no_batch_dims_saveable",
        "checkpoint_dots_with_no_batch_dims",
    )
    if hasattr(jax.checkpoint_policies, name)
)


def check_remat(remat: str, policy: str | None = None) -> str:
  """Validates the (remat, remat_policy) fields; returns `remat`."""
  if remat not in REMAT_MODES:
    raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
  if policy is None:
    return remat
  if policy not in REMAT_POLICIES:
    raise ValueError(
        f"remat_policy={policy!r} is not an argument-free jax.checkpoint_policies policy; "
        f"expected None or one of {REMAT_POLICIES}"
    )
  if remat == "none":
    raise ValueError(
        f"remat_policy={policy!r} has no effect with remat='none'; set remat=block or full"
    )
  return remat


def policy_fn(policy: str | None) -> Callable[..., bool] | None:
  """The `jax.checkpoint_policies` callable named `policy` (None: jax's default)."""
  if policy is None:
    return None
  check_remat("block", policy)
  return getattr(jax.checkpoint_policies, policy)


def maybe_remat(cls, enabled: bool, policy: str | None = None):
  """`nn.remat(cls, policy=...)` when enabled (activations recomputed in the backward)."""
  return nn.remat(cls, policy=policy_fn(policy)) if enabled else cls
