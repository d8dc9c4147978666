"""Expands a config's `sweep(add, arg)` into training runs and runs them (scripts/sweep.py).

A config's `sweep(add, arg)` calls `add(**{"optim.lr": 3e-4, ...})` once per run; each key
is a dotted config field, set with `--config.<key>=<value>` on the run's command line.
Every run's config is built and validated (imagen_jax.config_check) before anything is
launched. A run's workdir is `<workdir>/<name>`, the name made from its overrides
(filesystem-safe), and holds `sweep_run.json` (its overrides and the config's headline
`metrics()`). A run is finished when `final_metrics.json` (written by the trainer at the
last step) or the checkpoint of its last step exists. The table of finished runs:
imagen_jax.launch.sweep_summary.
"""

from __future__ import annotations

import concurrent.futures
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

from imagen_jax.launch import tpu_vm

FINAL_METRICS = "final_metrics.json"
RUN_FILE = "sweep_run.json"


# ---------------------------------------------------------------- expansion
def split_spec(spec: str) -> tuple[str, str | None]:
  """ "configs/x.py:a=1,b" -> ("configs/x.py", "a=1,b")."""
  path, sep, arg = spec.partition(".py:")
  if sep:
    return path + ".py", arg
  return spec, None


def load_module(path: str | os.PathLike) -> Any:
  """Imports a config file by path, under a name unique to that path."""
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
        raise KeyError(f"Sweep override {key!r}: config has no field {'.'.join(parents[:i + 1])!r}")
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


def short_value(value: Any) -> str:
  """A value as it appears in run names and the summary table: (0.0, 0.5) -> "0-0.5"."""
  if isinstance(value, (list, tuple)):
    return "-".join(short_value(v) for v in value)
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
    parts.append(f"{label}={short_value(overrides[key])}")
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
  # config_check imports the models (JAX): only when a sweep is expanded.
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


def train_command(
    spec: str, overrides: dict, workdir: str, *, python: str, script: str = "scripts/train.py"
) -> list[str]:
  cmd = [python, script, f"--config={spec}"]
  cmd += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
  return cmd + [f"--workdir={workdir}"]


def headline_metrics(module: Any) -> list[str]:
  return list(module.metrics()) if hasattr(module, "metrics") else []


def rundir_of(workdir: str, name: str) -> str:
  return f"{workdir.rstrip('/')}/{name}"


def print_commands(spec: str, workdir: str, *, python: str | None = None) -> list[str]:
  """Prints (and returns) one scripts/train.py command line per run."""
  _, runs = expand(spec)
  lines = [
      shlex.join(
          train_command(
              spec, run["overrides"], rundir_of(workdir, run["name"]), python=python or "python"
          )
      )
      for run in runs
  ]
  for line in lines:
    print(line)
  return lines


# ---------------------------------------------------------------- local runs
def is_finished(rundir: pathlib.Path, total_steps: int) -> bool:
  final = rundir / FINAL_METRICS
  if final.is_file():
    try:
      return int(json.loads(final.read_text()).get("step", -1)) >= total_steps
    except (ValueError, OSError):
      return False
  return (rundir / "checkpoints" / str(total_steps)).is_dir()


def _run_one(cmd: list[str], rundir: pathlib.Path, repo: pathlib.Path) -> int:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
  with open(rundir / "train.log", "ab") as log:
    return subprocess.run(
        cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
    ).returncode


def run_local(
    spec: str,
    workdir: str,
    *,
    repo: str | os.PathLike,
    parallel: int = 1,
    python: str | None = None,
) -> dict[str, str]:
  """Runs every unfinished run with `repo`'s scripts/train.py (cwd `repo`, `parallel` at
  a time); returns {name: "done" | "skipped" | "failed (rc N)"}."""
  repo = pathlib.Path(repo)
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
    cmd = train_command(
        spec,
        run["overrides"],
        str(rundir),
        python=python or sys.executable,
        script=str(repo / "scripts" / "train.py"),
    )
    (rundir / RUN_FILE).write_text(
        json.dumps(
            dict(
                name=run["name"],
                overrides=run["overrides"],
                config=spec,
                metrics=headline_metrics(module),
                command=shlex.join(cmd),
            ),
            indent=2,
            default=str,
        )
    )
    jobs[run["name"]] = (cmd, rundir)

  with concurrent.futures.ThreadPoolExecutor(max(1, int(parallel))) as pool:
    futures = {}
    for name, (cmd, rundir) in jobs.items():
      print(f"[sweep] {name}: {shlex.join(cmd)}  (log: {rundir / 'train.log'})", flush=True)
      futures[pool.submit(_run_one, cmd, rundir, repo)] = name
    for future in concurrent.futures.as_completed(futures):
      name, rc = futures[future], future.result()
      status[name] = "done" if rc == 0 else f"failed (rc {rc})"
      print(f"[sweep] {name}: {status[name]}", flush=True)
  return status


def run_tpu(
    spec: str,
    workdir: str,
    *,
    tpu: str,
    zone: str,
    project: str | None = None,
    dry_run: bool = False,
    python: str | None = None,
) -> None:
  """Launches the runs one after another on every worker of a TPU VM slice."""
  _, runs = expand(spec)
  target = tpu_vm.Target(tpu=tpu, zone=zone, project=project)
  for run in runs:
    rundir = rundir_of(workdir, run["name"])
    train_flags = train_command(spec, run["overrides"], rundir, python="python3")[2:]
    cmd = tpu_vm.train_cmd(
        target, train_flags, job=run["name"], python=python or tpu_vm.VENV_PYTHON
    )
    tpu_vm.execute([cmd], dry_run=dry_run)
