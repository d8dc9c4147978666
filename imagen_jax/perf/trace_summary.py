"""Where a jitted step's time goes: a `jax.profiler` trace folded by op kind and model scope.

`capture(fn, steps, log_dir)` traces `steps` calls of `fn`; `summarize(log_dir, hlo_text)` reads
the Perfetto trace it wrote (`perfetto_trace.json.gz`) and the compiled module's HLO text
(`compiled.as_text()`) and adds up the traced time of each HLO op:

- by **primitive**: the JAX primitive in the op's metadata (`conv_general_dilated`,
  `dot_general`, `reduce_max`, ...), or the HLO opcode where there is none;
- by **pass**: `forward` or `backward` (`transpose(...)` in the op's name stack);
- by **layer**: scope one level deeper, with the primitive (`UNet/up_1/attn_0 dot_general`);
- by **scope**: the model path (`UNet/up_1`), to `scope_depth` components (`UNet/(merged)`
  for an op XLA made of several, such as a combined gradient all-reduce);
- by **library**: the fusion kind XLA chose (`__ynn_fusion` for YNNPACK, a cuDNN custom call,
  ...), so a reader sees which kernels ran.

Times are the traced durations of the events that name an HLO op (`args.hlo_op`), summed over
threads and steps and divided by `steps`. They are thread-busy time, not wall time: on a CPU,
ops on different threads overlap; and an op whose kernel runs asynchronously (XLA:CPU's Eigen
convolutions, GPU kernels launched from a host thread) is charged only for what its event spans.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable, Iterable

_INSTR = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<type>.+?) (?P<opcode>[\w\-]+)\(")
_COMP = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) ")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FUSION_KIND = re.compile(r'"kind":"(__\w+)"')
_CUSTOM_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_SUFFIX = re.compile(r"\.\d+$")
_WRAPPER = re.compile(r"^(?:jit|jvp|transpose|vmap|pjit|remat|checkpoint)\((.*)\)$")


def capture(fn: Callable[[], Any], steps: int, log_dir: str) -> None:
  """Traces `steps` calls of `fn` (each waited for) into `log_dir`, with a Perfetto trace."""
  import jax  # pylint: disable=import-outside-toplevel

  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1.")
  jax.block_until_ready(fn())  # nothing of a first call's set-up in the trace
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(fn())


def find_trace(log_dir: str) -> str:
  """The newest `perfetto_trace.json.gz` under `log_dir`."""
  found = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  if not found:
    raise FileNotFoundError(
        f"No perfetto_trace.json.gz under {log_dir}/plugins/profile/; "
        "was it captured with create_perfetto_trace=True?"
    )
  return max(found, key=os.path.getmtime)


def op_table(hlo_text: str) -> dict[str, dict[str, str]]:
  """HLO op name -> {opcode, op_name, library} for every instruction in `hlo_text`.

  A fusion without metadata of its own takes its root instruction's; `library` is the
  fusion kind from its backend config or a custom call's target.
  """
  ops: dict[str, dict[str, str]] = {}
  roots: dict[str, str] = {}
  comp = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and line.rstrip().endswith("{"):
      comp = m.group("name")
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.group("name"), m.group("opcode")
    meta = _OP_NAME.search(line)
    lib = _FUSION_KIND.search(line) or _CUSTOM_TARGET.search(line)
    calls = _CALLS.search(line)
    ops[name] = {
        "opcode": opcode,
        "op_name": meta.group(1) if meta else "",
        "library": lib.group(1) if lib else "",
        "calls": calls.group(1) if calls else "",
    }
    if line.lstrip().startswith("ROOT ") and comp:
      roots[comp] = name
  for info in ops.values():
    if not info["op_name"] and info["calls"] in roots:
      root = ops[roots[info["calls"]]]
      info["op_name"] = root["op_name"]
      if info["opcode"] == "fusion" and not info["library"]:
        info["library"] = f"fusion({root['opcode']})"
  return ops


def parse_op_name(op_name: str) -> tuple[str, tuple[str, ...], str]:
  """('forward'|'backward', scope components, primitive) from a JAX op_name such as
  'jit(step)/transpose(jvp(UNet))/up_1/attn_0/dot_general'; ('', (), '') for none.

  Where XLA merged several ops' metadata ("(a/x:b/y:...)") the scope ends in '(merged)'
  and the primitive is ''.
  """
  if not op_name:
    return "", (), ""
  parts, backward = [], False
  for part in op_name.split("/"):
    if part.startswith(("jit(", "pjit(")):  # a jitted function's name, not a model scope
      continue
    while True:
      m = _WRAPPER.match(part)
      if not m:
        break
      backward |= part.startswith("transpose(")
      part = m.group(1)
    if part.startswith("("):
      return ("backward" if backward else "forward"), (*parts, "(merged)"), ""
    if part:
      parts.append(part)
  direction = "backward" if backward else "forward"
  if not parts:
    return direction, (), ""
  return direction, tuple(parts[:-1]), parts[-1]


def split_op_name(op_name: str, scope_depth: int = 2) -> tuple[str, str, str]:
  """`parse_op_name` with the scope joined to its first `scope_depth` components."""
  direction, scope, primitive = parse_op_name(op_name)
  return direction, _join(scope, scope_depth), primitive


def _join(scope: tuple[str, ...], depth: int) -> str:
  """The first `depth` components; a merged op's scope is kept whole, as XLA gave it."""
  return "/".join(scope if scope[-1:] == ("(merged)",) else scope[:depth])


def op_events(trace: dict | list) -> Iterable[tuple[str, float]]:
  """(hlo op name, microseconds) for each complete event of the trace that names an HLO op."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  for e in events:
    if e.get("ph") != "X":
      continue
    op = (e.get("args") or {}).get("hlo_op")
    if op:
      yield op, float(e.get("dur", 0.0))


def summarize(
    log_dir: str, hlo_text: str, *, steps: int = 1, top: int = 12, scope_depth: int = 2
) -> dict[str, Any]:
  """Traced op time per step (seconds), folded four ways; see the module docstring."""
  with gzip.open(find_trace(log_dir), "rt") as f:
    trace = json.load(f)
  return fold(op_events(trace), op_table(hlo_text), steps=steps, top=top, scope_depth=scope_depth)


def fold(
    events: Iterable[tuple[str, float]],
    ops: dict[str, dict[str, str]],
    *,
    steps: int = 1,
    top: int = 12,
    scope_depth: int = 2,
) -> dict[str, Any]:
  """The folding of `summarize`, on (op, microseconds) pairs and an `op_table`."""
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1.")
  tables = {
      k: collections.Counter() for k in ("primitive", "pass", "scope", "layer", "library", "op")
  }
  total = 0.0
  for op, micros in events:
    seconds = micros * 1e-6 / steps
    total += seconds
    base = _SUFFIX.sub("", op)  # "fusion.12" -> "fusion"
    info = ops.get(op) or ops.get(base) or {}
    direction, parts, primitive = parse_op_name(info.get("op_name", ""))
    scope, layer = _join(parts, scope_depth), _join(parts, scope_depth + 1)
    tables["primitive"][primitive or info.get("opcode") or base] += seconds
    tables["pass"][direction or "other"] += seconds
    tables["scope"][scope or "(outside the model)"] += seconds
    tables["layer"][
        f"{layer or '(outside the model)'} {primitive or info.get('opcode') or 'unknown'}"
    ] += seconds
    tables["library"][info.get("library") or info.get("opcode") or "unknown"] += seconds
    tables["op"][op] += seconds
  out: dict[str, Any] = {"traced_seconds_per_step": total, "steps": steps}
  for key, counter in tables.items():
    out[f"by_{key}"] = [[name, secs] for name, secs in counter.most_common(top)]
  return out


def format_summary(summary: dict[str, Any]) -> str:
  """A few lines per table: name, seconds per step, share of the traced time."""
  total = summary["traced_seconds_per_step"] or 1.0
  lines = [
      f"traced op time per step: {summary['traced_seconds_per_step']:.3f} s "
      "(thread-busy time, summed over threads)"
  ]
  for key in ("pass", "primitive", "library", "scope", "layer", "op"):
    lines.append(f"  by {key}:")
    lines += [
        f"    {secs:9.4f} s {100 * secs / total:5.1f}%  {name}"
        for name, secs in summary[f"by_{key}"]
    ]
  return "\n".join(lines)
