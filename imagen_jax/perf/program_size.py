"""How big a lowered program is for XLA: StableHLO op counts, convolutions and dot_generals
(with their distinct signatures, which is what GPU autotuning sees). Used by
benchmarks/hlo_size.py; `op_stats(jax.jit(f).lower(...).as_text())`.

JAX emits a jitted helper (`jnp.where`, `jax.nn.gelu`, a Flax `nn.jit` ...) once per
signature as a private function and `call`s it from each use; XLA inlines every call. The
counts here are of the inlined program: each call adds its callee's ops again.
"""

from __future__ import annotations

import collections
import functools
import re

# "  func.func private @_where(%arg0: ..." and "%1 = call @_where(%0, ...)"
_FUNC = re.compile(r"^\s*func\.func (?:public |private )?@([\w.$-]+)\(")
_CALL = re.compile(r"^\s*(?:%[\w#:, ]+ = )?(?:func\.)?call @([\w.$-]+)\(")
# "%3 = stablehlo.convolution(...) ... : (tensor<...>, tensor<...>) -> tensor<...>"
_OP = re.compile(r"^\s*(?:%[\w#:, ]+ = )?\"?(stablehlo|chlo|mhlo)\.([\w.]+)")
_SIGNATURE_OPS = ("convolution", "dot_general")


def _functions(mlir_text: str) -> dict[str, dict]:
  """name -> {ops: Counter, calls: Counter, signatures: {op: set}} for each function."""
  funcs: dict[str, dict] = {}
  current = None
  for line in mlir_text.splitlines():
    m = _FUNC.match(line)
    if m:
      current = funcs.setdefault(
          m.group(1),
          {
              "ops": collections.Counter(),
              "calls": collections.Counter(),
              "signatures": {k: set() for k in _SIGNATURE_OPS},
          },
      )
      continue
    if current is None:
      continue
    m = _CALL.match(line)
    if m:
      current["calls"][m.group(1)] += 1
      continue
    m = _OP.match(line)
    if not m:
      continue
    name = m.group(2)
    current["ops"][name] += 1
    if name in _SIGNATURE_OPS:
      # The signature: attributes and operand/result types, without SSA names.
      current["signatures"][name].add(re.sub(r"%[\w#]+", "%", line.split("=", 1)[-1]).strip())
  return funcs


def op_stats(mlir_text: str, top: int = 8) -> dict:
  """Op count, convolutions and dot_generals (total and distinct signatures), top ops, of the
  program with every call inlined; `functions` is how many functions the text defines."""
  funcs = _functions(mlir_text)
  if not funcs:
    raise ValueError(
        "No func.func in the text: expected a lowered module "
        "(`jax.jit(f).lower(...).as_text()`)."
    )
  entry = "main" if "main" in funcs else next(iter(funcs))

  @functools.lru_cache(maxsize=None)
  def inlined(name: str) -> tuple[collections.Counter, dict]:
    f = funcs[name]
    ops, sigs = collections.Counter(f["ops"]), {k: set(v) for k, v in f["signatures"].items()}
    for callee, times in f["calls"].items():
      if callee not in funcs:
        raise ValueError(f"The module calls @{callee} but does not define it.")
      sub_ops, sub_sigs = inlined(callee)
      for op, n in sub_ops.items():
        ops[op] += n * times
      for k in _SIGNATURE_OPS:
        sigs[k] |= sub_sigs[k]
    return ops, sigs

  counts, signatures = inlined(entry)
  return {
      "ops": sum(counts.values()),
      "convolutions": counts["convolution"],
      "distinct_convolutions": len(signatures["convolution"]),
      "dot_generals": counts["dot_general"],
      "distinct_dot_generals": len(signatures["dot_general"]),
      "functions": len(funcs),
      "top": counts.most_common(top),
  }
