r"""Expands a config's `sweep(add, arg)` into training runs; summarizes finished runs.

  # one scripts/train.py command per run
  python scripts/sweep.py --config configs/base64.py:variant=small \
      --workdir /tmp/sweep --mode print
  # run them here, one after another (or N at a time); finished runs are skipped
  python scripts/sweep.py --config configs/shapes.py:stage=base,runlocal \
      --workdir /tmp/sweep --mode local --parallel 2
  # each run on a Cloud TPU VM slice, one after another (scripts/launch_tpu.py)
  python scripts/sweep.py --config configs/base64.py:variant=paper \
      --workdir gs://BUCKET/sweep --mode tpu --tpu NAME --zone ZONE
  # a table of every run's final metrics, sorted; also writes DIR/summary.csv
  python scripts/sweep.py --summarize /tmp/sweep --sort_by loss

A config's `sweep(add, arg)` calls `add(**{"optim.lr": 3e-4, ...})` once per
run; each key is a dotted config field, set with `--config.<key>=<value>` on
the run's command line. Every run's config is built and validated
(imagen_jax.config_check) before anything is launched. A run's workdir is
`<workdir>/<name>`, the name made from its overrides (filesystem-safe), and
holds `sweep_run.json` (its overrides and the config's headline `metrics()`).
A run is finished when `final_metrics.json` (written by the trainer at the
last step) or the checkpoint of its last step exists.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # imagen_jax without an install
  sys.path.insert(0, str(REPO))

_CONFIG = flags.DEFINE_string("config", None, "Config file and arg: FILE.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
_MODE = flags.DEFINE_enum("mode", "print", ["print", "local", "tpu"],
                          "print the commands, run them here, or on a TPU VM slice.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "--mode local: runs at the same time.")
_SUMMARIZE = flags.DEFINE_string("summarize", None, "Print the table of the runs under DIR.")
_SORT_BY = flags.DEFINE_string("sort_by", None, "Metric to sort by (default: the config's "
                               "first headline metric that the runs have, else loss).")
_ORDER = flags.DEFINE_enum("order", "auto", ["auto", "asc", "desc"],
                           "Sort order; auto: descending for accuracy-like metrics.")
_CSV = flags.DEFINE_string("csv", None, "CSV path for --summarize (default DIR/summary.csv).")
_PYTHON = flags.DEFINE_string("python", None, "Python for the runs (default: this one "
                              "locally, the launcher's ~/imagen_jax/.venv on TPU VMs).")
_TPU = flags.DEFINE_string("tpu", None, "--mode tpu: the TPU VM name.")
_ZONE = flags.DEFINE_string("zone", None, "--mode tpu: its zone.")
_PROJECT = flags.DEFINE_string("project", None, "--mode tpu: its project.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "--mode tpu: print the gcloud commands only.")

HIGHER_IS_BETTER = ("accuracy", "clip_score", "inception_score", "steps_per_sec",
                    "images_per_sec", "mfu")
FINAL_METRICS = "final_metrics.json"
RUN_FILE = "sweep_run.json"


# ---------------------------------------------------------------- expansion
def split_spec(spec: str) -> tuple[str, str | None]:
  """"configs/x.py:a=1,b" -> ("configs/x.py", "a=1,b")."""
  path, sep, arg = spec.partition(".py:")
  if sep:
    return path + ".py", arg
  return spec, None


def load_module(path: str | os.PathLike) -> Any:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Config file {str(path)!r} not found.")
  name = "sweep_config_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config: Any, overrides: dict) -> Any:
  """Sets each dotted key on `config`; KeyError naming the key when it does not exist."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
      if part not in node:
        raise KeyError(f"Sweep override {key!r}: config has no field "
                       f"{'.'.join(parents[:i + 1])!r}")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"Sweep override {key!r}: config has no field {key!r}")
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def format_value(value: Any) -> str:
  """The command-line text `config_flags` parses back into `value`."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value)


def _short(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "-".join(_short(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def run_name(overrides: dict, max_len: int = 100) -> str:
  """Filesystem-safe name from overrides: {"optim.lr": 3e-4} -> "lr=0.0003"."""
  if not overrides:
    return "default"
  leaves = [k.split(".")[-1] for k in overrides]
  parts = []
  for key, leaf in zip(overrides, leaves):
    label = leaf if leaves.count(leaf) == 1 else key
    parts.append(f"{label}={_short(overrides[key])}")
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(parts))
  name = name.strip("._") or "run"
  if len(name) > max_len:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f"{name[:max_len - 9]}_{digest}"
  return name


def expand(spec: str) -> tuple[Any, list[dict]]:
  """Loads FILE:ARG and returns (module, runs); each run is {name, overrides, config}.

  Every run's config is built with `get_config(ARG)`, the overrides set, and validated.
  """
  from imagen_jax import config_check  # pylint: disable=import-outside-toplevel
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} defines no sweep(add, arg=None).")
  collected: list[dict] = []
  module.sweep(lambda **kw: collected.append(dict(kw)), arg)
  if not collected:
    raise ValueError(f"{path}: sweep() added no runs.")
  runs, seen = [], {}
  for overrides in collected:
    config = apply_overrides(module.get_config(arg), overrides)
    try:
      config_check.validate(config)
    except ValueError as e:
      raise ValueError(f"Sweep run {overrides}: {e}") from None
    name = run_name(overrides)
    seen[name] = seen.get(name, 0) + 1
    if seen[name] > 1:
      name = f"{name}_{seen[name]}"
    runs.append(dict(name=name, overrides=overrides, config=config))
  return module, runs


def train_command(spec: str, overrides: dict, workdir: str, *, python: str,
                  script: str = "scripts/train.py") -> list[str]:
  cmd = [python, script, f"--config={spec}"]
  cmd += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
  return cmd + [f"--workdir={workdir}"]


def headline_metrics(module: Any) -> list[str]:
  return list(module.metrics()) if hasattr(module, "metrics") else []


# ---------------------------------------------------------------- local runs
def is_finished(rundir: pathlib.Path, total_steps: int) -> bool:
  final = rundir / FINAL_METRICS
  if final.is_file():
    try:
      return int(json.loads(final.read_text()).get("step", -1)) >= total_steps
    except (ValueError, OSError):
      return False
  return (rundir / "checkpoints" / str(total_steps)).is_dir()


def _run_one(cmd: list[str], rundir: pathlib.Path) -> int:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  with open(rundir / "train.log", "ab") as log:
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def run_local(spec: str, workdir: str, *, parallel: int = 1, python: str | None = None
              ) -> dict[str, str]:
  """Runs every unfinished run; returns {name: "done" | "skipped" | "failed (rc N)"}."""
  module, runs = expand(spec)
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  jobs = {}
  status = {}
  for run in runs:
    rundir = root / run["name"]
    if is_finished(rundir, int(run["config"].total_steps)):
      status[run["name"]] = "skipped"
      print(f"[sweep] {run['name']}: finished already, skipped", flush=True)
      continue
    rundir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(spec, run["overrides"], str(rundir), python=python or sys.executable,
                        script=str(REPO / "scripts" / "train.py"))
    (rundir / RUN_FILE).write_text(json.dumps(dict(
        name=run["name"], overrides=run["overrides"], config=spec,
        metrics=headline_metrics(module), command=shlex.join(cmd)), indent=2, default=str))
    jobs[run["name"]] = (cmd, rundir)

  with concurrent.futures.ThreadPoolExecutor(max(1, int(parallel))) as pool:
    futures = {}
    for name, (cmd, rundir) in jobs.items():
      print(f"[sweep] {name}: {shlex.join(cmd)}  (log: {rundir / 'train.log'})", flush=True)
      futures[pool.submit(_run_one, cmd, rundir)] = name
    for future in concurrent.futures.as_completed(futures):
      name, rc = futures[future], future.result()
      status[name] = "done" if rc == 0 else f"failed (rc {rc})"
      print(f"[sweep] {name}: {status[name]}", flush=True)
  return status


def run_tpu(spec: str, workdir: str, *, tpu: str, zone: str, project: str | None = None,
            dry_run: bool = False, python: str | None = None) -> None:
  """Launches the runs one after another on every worker of a TPU VM slice."""
  from imagen_jax.launch import tpu_vm  # pylint: disable=import-outside-toplevel
  _, runs = expand(spec)
  target = tpu_vm.Target(tpu=tpu, zone=zone, project=project)
  for run in runs:
    rundir = f"{workdir.rstrip('/')}/{run['name']}"
    train_flags = train_command(spec, run["overrides"], rundir, python="python3")[2:]
    cmd = tpu_vm.train_cmd(target, train_flags, job=run["name"],
                           python=python or tpu_vm.VENV_PYTHON)
    tpu_vm.execute([cmd], dry_run=dry_run)


# ---------------------------------------------------------------- summary
def collect(root: str | os.PathLike) -> list[dict]:
  """One row per run directory under `root`: name, overrides, metrics, headline names."""
  rows = []
  for rundir in sorted(pathlib.Path(root).iterdir()):
    if not rundir.is_dir():
      continue
    info_path, final_path = rundir / RUN_FILE, rundir / FINAL_METRICS
    if not info_path.is_file() and not final_path.is_file():
      continue
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    metrics = json.loads(final_path.read_text()) if final_path.is_file() else {}
    rows.append(dict(name=rundir.name, overrides=info.get("overrides", {}),
                     headline=info.get("metrics", []), metrics=metrics,
                     finished=final_path.is_file()))
  return rows


def _number(value: Any) -> float | None:
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def summarize(root: str, *, sort_by: str | None = None, order: str = "auto",
              csv_path: str | None = None) -> str:
  """Prints and returns a table of the runs' final metrics; writes a CSV of all metrics."""
  rows = collect(root)
  if not rows:
    raise ValueError(f"No sweep runs (sweep_run.json or final_metrics.json) under {root}.")
  headline = list(dict.fromkeys(m for r in rows for m in r["headline"]))
  present = {k for r in rows for k in r["metrics"]}
  if sort_by is None:
    sort_by = next((m for m in headline if m in present), "loss")
  descending = order == "desc" or (order == "auto" and any(
      sort_by.endswith(h) for h in HIGHER_IS_BETTER))

  def key(row):
    v = _number(row["metrics"].get(sort_by))
    return (v is None, -(v or 0.0) if descending else (v or 0.0))
  rows.sort(key=key)

  override_keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
  shown = list(dict.fromkeys([sort_by] + [m for m in headline if m in present] + ["step"]))
  header = ["run"] + override_keys + shown
  table = [header]
  for r in rows:
    cells = [r["name"]] + [_short(r["overrides"].get(k, "")) for k in override_keys]
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
      writer.writerow([r["name"], r["finished"]] + [r["overrides"].get(k, "") for k in
                                                   override_keys]
                      + [r["metrics"].get(m, "") for m in all_metrics])
  print(f"Wrote {csv_path}")
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SUMMARIZE.value:
    summarize(_SUMMARIZE.value, sort_by=_SORT_BY.value, order=_ORDER.value,
              csv_path=_CSV.value)
    return
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required (or --summarize DIR).")
  spec, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "print":
    _, runs = expand(spec)
    for run in runs:
      rundir = f"{workdir.rstrip('/')}/{run['name']}"
      print(shlex.join(train_command(spec, run["overrides"], rundir,
                                     python=_PYTHON.value or "python")))
  elif _MODE.value == "local":
    status = run_local(spec, workdir, parallel=_PARALLEL.value, python=_PYTHON.value)
    failed = [n for n, s in status.items() if s.startswith("failed")]
    if failed:
      raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")
  else:
    if not _TPU.value or not _ZONE.value:
      raise app.UsageError("--mode tpu needs --tpu and --zone.")
    run_tpu(spec, workdir, tpu=_TPU.value, zone=_ZONE.value, project=_PROJECT.value,
            dry_run=_DRY_RUN.value, python=_PYTHON.value)


if __name__ == "__main__":
  app.run(main)
