"""The table of a sweep's runs (scripts/sweep.py --summarize): final metrics, sorted, and a CSV
of every metric. Reads what imagen_jax.launch.sweep and the trainer leave in each run's
directory: `sweep_run.json` (overrides, headline metrics) and `final_metrics.json`."""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any

from imagen_jax.launch import sweep

HIGHER_IS_BETTER = (
    "accuracy",
    "clip_score",
    "inception_score",
    "steps_per_sec",
    "images_per_sec",
    "mfu",
)


def collect(root: str | os.PathLike) -> list[dict]:
  """One row per run directory under `root`: name, overrides, metrics, headline names."""
  rows = []
  for rundir in sorted(pathlib.Path(root).iterdir()):
    if not rundir.is_dir():
      continue
    info_path, final_path = rundir / sweep.RUN_FILE, rundir / sweep.FINAL_METRICS
    if not info_path.is_file() and not final_path.is_file():
      continue
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    metrics = json.loads(final_path.read_text()) if final_path.is_file() else {}
    rows.append(
        dict(
            name=rundir.name,
            overrides=info.get("overrides", {}),
            headline=info.get("metrics", []),
            metrics=metrics,
            finished=final_path.is_file(),
        )
    )
  return rows


def _number(value: Any) -> float | None:
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def summarize(
    root: str, *, sort_by: str | None = None, order: str = "auto", csv_path: str | None = None
) -> str:
  """Prints and returns a table of the runs' final metrics; writes a CSV of all metrics.

  `sort_by` defaults to the config's first headline metric that the runs have, else loss;
  `order` "auto" sorts accuracy-like metrics (HIGHER_IS_BETTER) descending.
  """
  rows = collect(root)
  if not rows:
    raise ValueError(f"No sweep runs (sweep_run.json or final_metrics.json) under {root}.")
  headline = list(dict.fromkeys(m for r in rows for m in r["headline"]))
  present = {k for r in rows for k in r["metrics"]}
  if sort_by is None:
    sort_by = next((m for m in headline if m in present), "loss")
  descending = order == "desc" or (
      order == "auto" and any(sort_by.endswith(h) for h in HIGHER_IS_BETTER)
  )

  def key(row):
    v = _number(row["metrics"].get(sort_by))
    return (v is None, -(v or 0.0) if descending else (v or 0.0))

  rows.sort(key=key)

  override_keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
  shown = list(dict.fromkeys([sort_by] + [m for m in headline if m in present] + ["step"]))
  header = ["run"] + override_keys + shown
  table = [header]
  for r in rows:
    cells = [r["name"]] + [sweep.short_value(r["overrides"].get(k, "")) for k in override_keys]
    for m in shown:
      v = r["metrics"].get(m)
      n = _number(v)
      cells.append("-" if v is None else (f"{n:.6g}" if n is not None else str(v)))
    if not r["finished"]:
      cells[0] += " (unfinished)"
    table.append(cells)
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
  lines.insert(1, "  ".join("-" * w for w in widths))
  text = "\n".join(lines)
  print(f"Sorted by {sort_by} ({'descending' if descending else 'ascending'}):")
  print(text)

  all_metrics = sorted({k for r in rows for k in r["metrics"]})
  csv_path = csv_path or str(pathlib.Path(root) / "summary.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run", "finished"] + override_keys + all_metrics)
    for r in rows:
      writer.writerow(
          [r["name"], r["finished"]]
          + [r["overrides"].get(k, "") for k in override_keys]
          + [r["metrics"].get(m, "") for m in all_metrics]
      )
  print(f"Wrote {csv_path}")
  return text
