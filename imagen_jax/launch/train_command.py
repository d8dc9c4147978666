"""The one train command every launch path runs (TPU VM workers, GKE pods, sweeps)."""

from __future__ import annotations

import re
from typing import Sequence

# imagen_jax.parallel.multihost.DISTRIBUTED_ENV (not imported: that module imports JAX).
# Set on every worker: scripts/train.py then calls jax.distributed.initialize() with no
# arguments, which finds the pod from the TPU VM's metadata or GKE's TPU_WORKER_* variables;
# explicit --coordinator_address/--num_processes/--process_id flags win over it.
DISTRIBUTED_ENV = "IMAGEN_JAX_DISTRIBUTED"
TRAIN_SCRIPT = "scripts/train.py"  # relative to the checkout


def train_argv(
    train_flags: Sequence[str], *, python: str = "python3", env: Sequence[str] = ()
) -> list[str]:
  """`env IMAGEN_JAX_DISTRIBUTED=1 [KEY=VALUE...] PYTHON scripts/train.py FLAGS...`."""
  for kv in env:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", kv, flags=re.S):
      raise ValueError(f"--env {kv!r} is not KEY=VALUE (KEY a shell variable name).")
  return ["env", f"{DISTRIBUTED_ENV}=1", *env, python, TRAIN_SCRIPT, *train_flags]


def train_flags(
    config: str, workdir: str, overrides: Sequence[str] = (), extra: Sequence[str] = ()
) -> list[str]:
  """scripts/train.py's flags: the config, its `--config.*` overrides, the workdir, then
  any other train.py flags (`--coordinator_address=...`) verbatim."""
  for o in overrides:
    if not o.startswith("--config.") or "=" not in o:
      raise ValueError(f"Config override {o!r} must be --config.FIELD=VALUE.")
  for f in extra:
    if not f.startswith("--"):
      raise ValueError(f"Train flag {f!r} must start with -- (e.g. --num_processes=2).")
  return [f"--config={config}", *overrides, f"--workdir={workdir}", *extra]


_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}")


def check_job_name(job: str) -> str:
  """`job` when it is safe in remote file names and shell words; ValueError naming it if not
  (a `/` would point the log elsewhere, a space or quote would split the remote command)."""
  if not _JOB_NAME.fullmatch(str(job)):
    raise ValueError(
        f"--job={job!r}: a job name is 1-100 of A-Z a-z 0-9 . _ = , + - and "
        "starts with a letter or digit."
    )
  return job


def job_name(workdir: str) -> str:
  """A filesystem-safe job name from the workdir's last component."""
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", workdir.rstrip("/").rsplit("/", 1)[-1])
  return name.strip("._") or "train"
