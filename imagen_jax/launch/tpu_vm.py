r"""gcloud commands that run scripts/train.py on every worker of a Cloud TPU VM slice.

Each function returns the argv of one local command (`gcloud ...`, `tar ...`); what runs on
the workers is the `--command` string of `gcloud compute tpus tpu-vm ssh NAME --zone Z
--worker=all`, every argument in it quoted with shlex.quote. `execute` runs a list of them.

On each worker (home directory `~`):
  ~/imagen_jax/              the checkout (`copy_cmds`: tar here, scp, untar; keeps .venv)
  ~/imagen_jax/.venv/        `install_cmd`: `python3 -m venv`, then `pip install -r
                             requirements.txt -e . jax[tpu] -f <libtpu releases>`
  ~/imagen_jax_logs/<job>.<worker>.log, <job>.pid     `train_cmd`'s log and process id
`train_cmd` runs `env IMAGEN_JAX_DISTRIBUTED=1 .venv/bin/python scripts/train.py FLAGS` from
~/imagen_jax under nohup (imagen_jax.launch.train_command.train_argv, the same command the
GKE manifest runs): on a pod, jax.distributed.initialize() finds the other workers itself.
<worker> is $TPU_WORKER_ID when the shell has it, else $(hostname).

A slice comes from `create_cmd` (`tpu-vm create`) or from a queued resource
(`queued_create_cmd`, then `WaitActive` polls `queued-resources describe` until ACTIVE).
`Target(internal_ip=True)` / `tunnel_through_iap=True` add `--internal-ip` /
`--tunnel-through-iap` to every `tpu-vm ssh` and `tpu-vm scp`.

A stand-in `gcloud` (a rehearsal without a TPU) needs to do only this:
  * `... tpu-vm ssh NAME ... --worker=W --command CMD`: for each worker i of W (`all`: 0..N-1,
    else the one index), run `bash -c CMD` as its own process, all at once, with cwd and
    HOME set to worker i's own directory (each worker has its own disk) and TPU_WORKER_ID=i;
    print their output and exit non-zero if any fails.
  * `... tpu-vm scp SRC NAME:DEST ... --worker=all`: copy SRC to each worker's HOME/DEST;
    `scp NAME:GLOB LOCAL --worker=all`: copy each worker's HOME/GLOB matches into LOCAL.
  * `create`, `delete`, `stop`, `queued-resources create|delete`: exit 0;
    `queued-resources describe ... --format=value(state.state)`: print ACTIVE.
  CMD needs only bash, coreutils (mkdir, find, tar, nohup, tail --pid, cat, kill,
  hostname), python3 >= 3.11 and, for `install`, pip's index (`jax_package="jax"` avoids
  libtpu); nothing from a TPU VM's metadata server. Without a TPU, JAX cannot find the
  other processes: pass `extra_flags=["--coordinator_address=127.0.0.1:PORT",
  "--num_processes=N"]` and `process_id_env="TPU_WORKER_ID"` (train.py's explicit flags win
  over IMAGEN_JAX_DISTRIBUTED).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

from imagen_jax.launch import accelerators
from imagen_jax.launch import train_command

CODE_DIR = "imagen_jax"  # on each worker, relative to the home directory
VENV_PYTHON = ".venv/bin/python"  # relative to CODE_DIR
LOG_DIR = "imagen_jax_logs"
TARBALL = "imagen_jax_code.tar.gz"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python
FAILED_STATES = ("FAILED", "SUSPENDED", "SUSPENDING", "DELETING")


class LaunchError(RuntimeError):
  """A command failed, or a queued resource did not become ACTIVE."""


@dataclasses.dataclass(frozen=True)
class Target:
  tpu: str
  zone: str
  project: str | None = None
  internal_ip: bool = False  # ssh/scp to the workers' internal IPs
  tunnel_through_iap: bool = False  # ssh/scp through Identity-Aware Proxy

  def location(self) -> list[str]:
    return ["--zone", self.zone] + (["--project", self.project] if self.project else [])

  def ssh_options(self) -> list[str]:
    return (["--internal-ip"] if self.internal_ip else []) + (
        ["--tunnel-through-iap"] if self.tunnel_through_iap else []
    )


def _gcloud(target: Target, verb: str, *args: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, target.tpu, *target.location(), *args]


def ssh_cmd(target: Target, remote_command: str, worker: str = "all") -> list[str]:
  return _gcloud(
      target, "ssh", *target.ssh_options(), f"--worker={worker}", "--command", remote_command
  )


def scp_cmd(target: Target, src: str, dest: str, worker: str = "all") -> list[str]:
  return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      src,
      dest,
      *target.location(),
      *target.ssh_options(),
      f"--worker={worker}",
  ]


runtime_version = accelerators.runtime_version


def create_cmd(
    target: Target, accelerator_type: str, version: str | None = None, spot: bool = False
) -> list[str]:
  cmd = _gcloud(
      target,
      "create",
      "--accelerator-type",
      accelerator_type,
      "--version",
      version or runtime_version(accelerator_type),
  )
  return cmd + (["--spot"] if spot else [])


# ------------------------------------------------------------------ queued resources
def _queued(target: Target, verb: str, name: str, *args: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", verb, name, *target.location(), *args]


def queued_create_cmd(
    target: Target,
    name: str,
    accelerator_type: str,
    version: str | None = None,
    *,
    spot: bool = False,
    best_effort: bool = False,
) -> list[str]:
  """A queued resource `name` for the slice `target.tpu` (its node id)."""
  if spot and best_effort:
    raise ValueError("A queued resource is --spot or --best_effort, not both.")
  cmd = _queued(
      target,
      "create",
      name,
      "--node-id",
      target.tpu,
      "--accelerator-type",
      accelerator_type,
      "--runtime-version",
      version or runtime_version(accelerator_type),
  )
  return cmd + (["--spot"] if spot else []) + (["--best-effort"] if best_effort else [])


def queued_state_cmd(target: Target, name: str) -> list[str]:
  return _queued(target, "describe", name, "--format=value(state.state)")


def queued_delete_cmd(target: Target, name: str) -> list[str]:
  # --force also deletes the TPU VM the queued resource made.
  return _queued(target, "delete", name, "--quiet", "--force")


@dataclasses.dataclass(frozen=True)
class WaitActive:
  """A step of `execute`: polls the queued resource's state until ACTIVE."""

  target: Target
  name: str
  timeout_s: float = 0.0  # 0: no limit (a queued resource may wait hours for capacity)
  poll_s: float = 30.0

  def describe_cmd(self) -> list[str]:
    return queued_state_cmd(self.target, self.name)


def wait_active(
    step: WaitActive,
    *,
    run: Callable = subprocess.run,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
  start, last = clock(), None
  while True:
    proc = run(step.describe_cmd(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise LaunchError(
          f"Queued resource {step.name!r}: describe failed with exit status "
          f"{proc.returncode}: {proc.stderr.strip()}"
      )
    state = proc.stdout.strip()
    if state != last:
      print(f"[launch_tpu] queued resource {step.name}: {state}", file=sys.stderr, flush=True)
      last = state
    if state == "ACTIVE":
      return
    if state in FAILED_STATES:
      raise LaunchError(
          f"Queued resource {step.name!r} is {state}, not ACTIVE; see `gcloud "
          f"compute tpus queued-resources describe {step.name}`."
      )
    if step.timeout_s and clock() - start >= step.timeout_s:
      raise LaunchError(
          f"Queued resource {step.name!r} still {state} after {step.timeout_s:.0f} s."
      )
    sleep(step.poll_s)


# ------------------------------------------------------------------ code, install, train
def _home(path: str) -> str:
  """`path` under the worker's home directory, whatever the current directory."""
  return '"$HOME"/' + shlex.quote(path)


def copy_cmds(
    target: Target, repo: str | pathlib.Path, tarball: str = f"/tmp/{TARBALL}"
) -> list[list[str]]:
  """Packs the checkout (no .git, virtualenvs or caches) and unpacks it on every worker,
  keeping the worker's ~/imagen_jax/.venv."""
  pack = [
      "tar",
      "-czf",
      tarball,
      "--exclude=.git",
      "--exclude=.venv",
      "--exclude=venv",
      "--exclude=.venv-peer",
      "--exclude=__pycache__",
      "--exclude=*.egg-info",
      "--exclude=.pytest_cache",
      "--exclude=./tpu_logs",
      "-C",
      str(repo),
      ".",
  ]
  code = _home(CODE_DIR)
  unpack = (
      f"mkdir -p {code} && find {code} -mindepth 1 -maxdepth 1 ! -name .venv "
      f"-exec rm -rf {{}} + && tar -xzf {_home(TARBALL)} -C {code}"
  )
  return [pack, scp_cmd(target, tarball, f"{target.tpu}:{TARBALL}"), ssh_cmd(target, unpack)]


def install_cmd(
    target: Target, python: str = "python3", jax_package: str = "jax[tpu]"
) -> list[str]:
  """On every worker: ~/imagen_jax/.venv from `python` (>= 3.11), the requirements, the
  package (editable) and `jax_package` with libtpu."""
  py, venv_py = shlex.quote(python), shlex.quote(VENV_PYTHON)
  probe = shlex.quote(f"import sys; sys.exit(sys.version_info < {MIN_PYTHON})")
  need = ".".join(map(str, MIN_PYTHON))
  message = shlex.quote(
      f"imagen_jax needs Python >= {need}; {python} is older or missing "
      "(pass --python python3.11)"
  )
  check = f"if ! {py} -c {probe}; then echo {message} >&2; exit 1; fi"
  remote = (
      f"cd {_home(CODE_DIR)} && {check} && {py} -m venv .venv && "
      f"{venv_py} -m pip install -U pip && "
      f"{venv_py} -m pip install -r requirements.txt -e . {shlex.quote(jax_package)} "
      f"-f {shlex.quote(LIBTPU_RELEASES)}"
  )
  return ssh_cmd(target, remote)


def _log_path(job: str) -> str:
  # Expanded on each worker, so each gets its own log file.
  train_command.check_job_name(job)
  return _home(f"{LOG_DIR}/{job}.") + '"${TPU_WORKER_ID:-$(hostname)}"' + shlex.quote(".log")


def _pid_path(job: str) -> str:
  train_command.check_job_name(job)
  return _home(f"{LOG_DIR}/{job}.pid")


def train_cmd(
    target: Target,
    train_flags: Sequence[str],
    *,
    job: str,
    python: str = VENV_PYTHON,
    detach: bool = False,
    env: Sequence[str] = (),
    process_id_env: str | None = None,
) -> list[str]:
  """`train_argv(train_flags)` on every worker, under nohup, one log per worker.

  `process_id_env`: the name of a variable each worker's shell has, passed on as
  `--process_id="$VAR"` (for clusters JAX cannot detect; see the module docstring).
  """
  train = shlex.join(train_command.train_argv(train_flags, python=python, env=env))
  if process_id_env is not None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", process_id_env):
      raise ValueError(f"process_id_env {process_id_env!r} is not a shell variable name.")
    train += f' --process_id="${{{process_id_env}:?}}"'
  log, pid = _log_path(job), _pid_path(job)
  # The log gets a start line before the job starts: the backgrounded job opens it only
  # once it is scheduled, and `tail` must not race it to a missing file. It is appended to,
  # so a relaunch after a preemption keeps the earlier run's log above its own.
  start = shlex.quote(f"==== imagen_jax launch: job {job} starts ====")
  remote = (
      f"mkdir -p {_home(LOG_DIR)} && cd {_home(CODE_DIR)} && "
      f'echo {start} >> {log} && from="$(wc -l < {log})" && '
      f"( nohup {train} >> {log} 2>&1 < /dev/null & echo $! > {pid} )"
  )
  if not detach:  # this run's lines only, from its start line on
    remote += f' && tail -n +"$from" -f --pid="$(cat {pid})" {log}'
  return ssh_cmd(target, remote)


def logs_cmd(target: Target, job: str, local_dir: str) -> list[str]:
  train_command.check_job_name(job)  # the remote glob is left unquoted, to expand there
  return scp_cmd(target, f"{target.tpu}:{LOG_DIR}/{job}.*.log", local_dir)


def kill_cmd(target: Target, job: str) -> list[str]:
  pid = _pid_path(job)
  return ssh_cmd(target, f'if [ -f {pid} ]; then kill -TERM "$(cat {pid})" || true; fi')


def stop_cmd(target: Target) -> list[str]:
  return _gcloud(target, "stop")


def delete_cmd(target: Target) -> list[str]:
  return _gcloud(target, "delete", "--quiet")


Step = Sequence[str] | WaitActive


def execute(
    steps: Sequence[Step], *, dry_run: bool = False, log_file: str | pathlib.Path | None = None
) -> None:
  """Prints each command; runs it unless `dry_run` (the last one teed to `log_file`)."""
  for i, step in enumerate(steps):
    cmd = step.describe_cmd() if isinstance(step, WaitActive) else list(step)
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    if isinstance(step, WaitActive):
      wait_active(step)
      continue
    if log_file is not None and i == len(steps) - 1:
      pathlib.Path(log_file).parent.mkdir(parents=True, exist_ok=True)
      with (
          subprocess.Popen(
              cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
          ) as proc,
          open(log_file, "a") as log,
      ):
        for line in proc.stdout:
          sys.stdout.write(line)
          log.write(line)
      rc = proc.returncode
    else:
      rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
      raise LaunchError(f"Command failed with exit status {rc}: {shlex.join(cmd)}")
