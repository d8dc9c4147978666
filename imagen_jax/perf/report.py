"""The benchmark's result: ratios ours / theirs, the printed table and the JSON file.

`result` is the dict `scripts/benchmark.py` writes: run facts (date, host, command, batch,
backend), `ours` ({"train", "sample", "input"}: `perf.benchmark`'s figures or {"error"}),
`peer` (the peer's figures, its `spec`, maybe an "error") and the `ratio_*` keys.
Plain dicts and strings; no JAX.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _ratio(a, b):
  return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def ratios(ours: dict, peer: dict) -> dict[str, float | None]:
  """ours / theirs for train img/s, params, FLOPs per image and sampling img/s (None where a
  side lacks the figure)."""
  train, ptrain = ours.get("train", {}), peer
  sample, psample = ours.get("sample", {}), peer.get("sampling", {})
  out = {
      "ratio_train_img_per_s": _ratio(train.get("img_per_s"), ptrain.get("img_per_s")),
      "ratio_params": _ratio(train.get("params"), ptrain.get("params")),
      "ratio_flops_per_image": _ratio(train.get("flops_per_image"), ptrain.get("flops_per_image")),
  }
  for name in ("unguided", "guided"):
    out[f"ratio_sample_{name}_img_per_s"] = _ratio(
        sample.get(name, {}).get("img_per_s"), psample.get(name, {}).get("img_per_s")
    )
  return out


def fmt(value: Any, spec: str = "{:.3g}") -> str:
  if value is None or value == "n/a":
    return "n/a"
  return spec.format(value) if isinstance(value, (int, float)) else str(value)


def table(result: dict) -> str:
  """Ours beside the peer, one figure a row, then any part's error."""
  ours, peer = result["ours"], result.get("peer") or {}
  t, s, i = ours.get("train", {}), ours.get("sample", {}), ours.get("input", {})
  ps = peer.get("sampling", {})
  rows = [
      ("params", t.get("params"), peer.get("params"), result.get("ratio_params")),
      (
          "train img/s",
          t.get("img_per_s"),
          peer.get("img_per_s"),
          result.get("ratio_train_img_per_s"),
      ),
      (
          "train step ms",
          t.get("step_seconds") and 1e3 * t["step_seconds"],
          peer.get("step_seconds") and 1e3 * peer["step_seconds"],
          None,
      ),
      (
          "GFLOP / image (train)",
          t.get("flops_per_image") and t["flops_per_image"] / 1e9,
          peer.get("flops_per_image") and peer["flops_per_image"] / 1e9,
          result.get("ratio_flops_per_image"),
      ),
      ("TFLOP/s per device", t.get("tflops_per_device"), None, None),
      ("MFU", t.get("mfu"), None, None),
      (
          "peak device MiB",
          t.get("peak_device_memory_bytes") and t["peak_device_memory_bytes"] / 2**20,
          peer.get("peak_device_memory_bytes") and peer["peak_device_memory_bytes"] / 2**20,
          None,
      ),
      (
          "sample img/s unguided",
          s.get("unguided", {}).get("img_per_s"),
          ps.get("unguided", {}).get("img_per_s"),
          result.get("ratio_sample_unguided_img_per_s"),
      ),
      (
          "sample img/s guided",
          s.get("guided", {}).get("img_per_s"),
          ps.get("guided", {}).get("img_per_s"),
          result.get("ratio_sample_guided_img_per_s"),
      ),
      (
          "guided / unguided step",
          s.get("guided_over_unguided_step"),
          ps.get("guided_over_unguided_step"),
          None,
      ),
      ("input pipeline img/s", i.get("img_per_s"), None, None),
      ("state init s (+compile)", t.get("init_seconds"), None, None),
      ("train step compile s", t.get("compile_seconds"), None, None),
  ]
  head = f"{'':24s} {'imagen_jax':>12s} {'imagen-pytorch':>15s} {'ours/theirs':>12s}"
  lines = [head] + [
      f"{n:24s} {fmt(a):>12s} {fmt(b):>15s} {fmt(r, '{:.2f}x'):>12s}" for n, a, b, r in rows
  ]
  if i.get("img_per_s") and t.get("img_per_s"):
    lines.append(f"input pipeline / train step img/s: {i['img_per_s'] / t['img_per_s']:.1f}x")
  for side, res in (("ours", ours), ("peer", peer)):
    for key, val in res.items():
      if isinstance(val, dict) and "error" in val:
        lines.append(f"{side} {key}: {val['error']}")
  if "error" in peer:
    lines.append(f"peer: {peer['error']}\n{peer.get('stderr_tail', '')}")
  return "\n".join(lines)


def write(path: str, result: dict, ours: dict, peer: dict | None) -> None:
  """Sets `result`'s ours, peer and ratios, and writes it to `path` atomically (JSON)."""
  result["ours"] = ours
  if peer is not None:
    result["peer"] = peer
    result.update(ratios(ours, peer))
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2, default=str)
  os.replace(path + ".tmp", path)
