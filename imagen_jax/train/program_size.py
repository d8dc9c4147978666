"""How big a lowered program is for XLA: StableHLO op counts, convolutions and dot_generals
(with their distinct signatures, which is what GPU autotuning sees). Used by
benchmarks/hlo_size.py; `op_stats(jax.jit(f).lower(...).as_text())`."""
from __future__ import annotations

import collections
import re

# "%3 = stablehlo.convolution(...) ... : (tensor<...>, tensor<...>) -> tensor<...>"
_OP = re.compile(r"^\s*(?:%[\w#:, ]+ = )?\"?(stablehlo|chlo|mhlo)\.([\w.]+)")


def op_stats(mlir_text: str, top: int = 8) -> dict:
  """Op count, convolutions and dot_generals (total and distinct signatures), top ops."""
  counts = collections.Counter()
  signatures = {"convolution": set(), "dot_general": set()}
  for line in mlir_text.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    name = m.group(2)
    counts[name] += 1
    if name in signatures:
      # The signature: attributes and operand/result types, without SSA names.
      signatures[name].add(re.sub(r"%[\w#]+", "%", line.split("=", 1)[-1]).strip())
  return {
      "ops": sum(counts.values()),
      "convolutions": counts["convolution"],
      "distinct_convolutions": len(signatures["convolution"]),
      "dot_generals": counts["dot_general"],
      "distinct_dot_generals": len(signatures["dot_general"]),
      "top": counts.most_common(top),
  }
