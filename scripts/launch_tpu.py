r"""Runs scripts/train.py on every worker of a Cloud TPU VM slice (v4, v5e, v5p; multi-host).

  # create a slice, copy this checkout to every worker, install, train
  python scripts/launch_tpu.py run --tpu my-v4 --zone us-central2-b \
      --create --accelerator_type v4-32 --setup \
      --config configs/base64.py:variant=paper \
      --config.text.encoder=/mnt/t5-v1_1-xxl --workdir gs://BUCKET/base64
  python scripts/launch_tpu.py logs --tpu my-v4 --zone us-central2-b --job base64
  python scripts/launch_tpu.py kill --tpu my-v4 --zone us-central2-b --job base64
  python scripts/launch_tpu.py delete --tpu my-v4 --zone us-central2-b

Actions: create | setup (copy + install) | copy | install | run | logs | kill | stop |
delete. `--dry_run` prints every command (the local `tar` and each `gcloud`) and runs
none. Every worker runs the same `python3 scripts/train.py ...` at once (`gcloud compute
tpus tpu-vm ssh NAME --zone Z --worker=all --command ...`); `jax.distributed.initialize()`
finds the other workers by itself, so no process flags are passed. Each worker writes
its log to `~/imagen_jax_logs/<job>.<hostname>.log` and the process id to
`~/imagen_jax_logs/<job>.pid`; the job runs under `nohup`, so it survives a dropped ssh
connection. Without `--detach` the launcher follows the workers' logs (all workers,
interleaved) and also appends them to `--log_dir/<job>.log` here; `logs` copies every
worker's own log back. `kill` sends SIGTERM: the trainer saves a checkpoint and exits,
and the same `run` command resumes. All workers must share `--workdir` (a gs:// path).
Every argument in a remote command is quoted with shlex.quote.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
CODE_DIR = "imagen_jax"          # on each worker, relative to the home directory
LOG_DIR = "imagen_jax_logs"
TARBALL = "imagen_jax_code.tar.gz"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# Default TPU VM software versions by accelerator generation (override with --version).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",   # v5e
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
ACTIONS = ("create", "setup", "copy", "install", "run", "logs", "kill", "stop", "delete")


@dataclasses.dataclass(frozen=True)
class Target:
  tpu: str
  zone: str
  project: str | None = None


def _gcloud(target: Target, verb: str, *args: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, target.tpu, "--zone", target.zone]
  if target.project:
    cmd += ["--project", target.project]
  return cmd + list(args)


def ssh_cmd(target: Target, remote_command: str, worker: str = "all") -> list[str]:
  return _gcloud(target, "ssh", f"--worker={worker}", "--command", remote_command)


def runtime_version(accelerator_type: str) -> str:
  for prefix in sorted(RUNTIME_VERSIONS, key=len, reverse=True):
    if accelerator_type.startswith(prefix):
      return RUNTIME_VERSIONS[prefix]
  raise ValueError(f"No default --version for accelerator type {accelerator_type!r}; "
                   f"pass --version (known prefixes: {', '.join(RUNTIME_VERSIONS)}).")


def create_cmd(target: Target, accelerator_type: str, version: str | None = None,
               spot: bool = False) -> list[str]:
  cmd = _gcloud(target, "create", "--accelerator-type", accelerator_type,
                "--version", version or runtime_version(accelerator_type))
  return cmd + (["--spot"] if spot else [])


def copy_cmds(target: Target, repo: str | pathlib.Path = REPO,
              tarball: str = f"/tmp/{TARBALL}") -> list[list[str]]:
  """Packs the checkout (no .git, virtualenvs or caches) and unpacks it on every worker."""
  pack = ["tar", "-czf", tarball, "--exclude=.git", "--exclude=.venv", "--exclude=venv",
          "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=.pytest_cache",
          "-C", str(repo), "."]
  scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{target.tpu}:{TARBALL}",
         "--zone", target.zone, "--worker=all"]
  if target.project:
    scp += ["--project", target.project]
  unpack = (f"rm -rf {shlex.quote(CODE_DIR)} && mkdir -p {shlex.quote(CODE_DIR)} && "
            f"tar -xzf {shlex.quote(TARBALL)} -C {shlex.quote(CODE_DIR)}")
  return [pack, scp, ssh_cmd(target, unpack)]


def install_cmd(target: Target, python: str = "python3") -> list[str]:
  py = shlex.quote(python)
  remote = (f"cd {shlex.quote(CODE_DIR)} && {py} -m pip install -U pip && "
            f"{py} -m pip install -r requirements.txt {shlex.quote('jax[tpu]')} "
            f"-f {shlex.quote(LIBTPU_RELEASES)} && {py} -m pip install --no-deps -e .")
  return ssh_cmd(target, remote)


def _home(path: str) -> str:
  """`path` under the worker's home directory, whatever the current directory."""
  return '"$HOME"/' + shlex.quote(path)


def _log_path(job: str) -> str:
  # The hostname is expanded on each worker, so each gets its own log file.
  return _home(f"{LOG_DIR}/{job}.") + "$(hostname)" + shlex.quote(".log")


def _pid_path(job: str) -> str:
  return _home(f"{LOG_DIR}/{job}.pid")


def train_cmd(target: Target, train_flags: Sequence[str], *, job: str,
              python: str = "python3", detach: bool = False,
              env: Sequence[str] = ()) -> list[str]:
  """`scripts/train.py <train_flags>` on every worker, under nohup, one log per worker."""
  # Every worker is one process of a pod: jax.distributed.initialize() auto-detects the
  # rest (imagen_jax.parallel.multihost.DISTRIBUTED_ENV).
  prefix = ["env", "IMAGEN_JAX_DISTRIBUTED=1", *env]
  train = shlex.join([*prefix, python, "scripts/train.py", *train_flags])
  log, pid = _log_path(job), _pid_path(job)
  # The log is created before the job starts: the backgrounded job opens it only once it
  # is scheduled, and `tail` must not race it to a missing file.
  remote = (f"mkdir -p {_home(LOG_DIR)} && cd {_home(CODE_DIR)} && : > {log} && "
            f"( nohup {train} >> {log} 2>&1 < /dev/null & echo $! > {pid} )")
  if not detach:
    remote += f" && tail -n +1 -f --pid=\"$(cat {pid})\" {log}"
  return ssh_cmd(target, remote)


def logs_cmd(target: Target, job: str, local_dir: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{target.tpu}:{LOG_DIR}/{job}.*.log",
         local_dir, "--zone", target.zone, "--worker=all"]
  return cmd + (["--project", target.project] if target.project else [])


def kill_cmd(target: Target, job: str) -> list[str]:
  pid = _pid_path(job)
  return ssh_cmd(target, f"if [ -f {pid} ]; then kill -TERM \"$(cat {pid})\" || true; fi")


def stop_cmd(target: Target) -> list[str]:
  return _gcloud(target, "stop")


def delete_cmd(target: Target) -> list[str]:
  return _gcloud(target, "delete", "--quiet")


def execute(cmds: Sequence[Sequence[str]], *, dry_run: bool = False,
            log_file: str | pathlib.Path | None = None) -> None:
  """Prints each command; runs it unless `dry_run` (the last one teed to `log_file`)."""
  for i, cmd in enumerate(cmds):
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    if log_file is not None and i == len(cmds) - 1:
      pathlib.Path(log_file).parent.mkdir(parents=True, exist_ok=True)
      with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) as proc, open(log_file, "a") as log:
        for line in proc.stdout:
          sys.stdout.write(line)
          log.write(line)
      rc = proc.returncode
    else:
      rc = subprocess.run(list(cmd), check=False).returncode
    if rc != 0:
      raise SystemExit(f"Command failed with exit status {rc}: {shlex.join(cmd)}")


def _job_name(workdir: str) -> str:
  name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", workdir.rstrip("/").rsplit("/", 1)[-1])
  return name.strip("._") or "train"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("action", choices=ACTIONS)
  p.add_argument("--tpu", required=True, help="TPU VM (slice) name.")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--dry_run", action="store_true", help="Print the commands, run none.")
  p.add_argument("--accelerator_type", default=None, help="create: e.g. v4-32, v5litepod-16.")
  p.add_argument("--version", default=None, help="create: TPU VM software version.")
  p.add_argument("--spot", action="store_true", help="create: a Spot slice.")
  p.add_argument("--create", action="store_true", help="run: create the slice first.")
  p.add_argument("--setup", action="store_true", help="run: copy the code and install first.")
  p.add_argument("--repo", default=str(REPO), help="copy/setup: the checkout to copy.")
  p.add_argument("--python", default="python3", help="Python on the workers.")
  p.add_argument("--config", default=None, help="run: FILE.py[:ARG] (relative to the repo).")
  p.add_argument("--workdir", default=None, help="run: a gs:// path every worker can reach.")
  p.add_argument("--job", default=None, help="Name of the job's logs (default: from workdir).")
  p.add_argument("--detach", action="store_true", help="run: start and return at once.")
  p.add_argument("--env", action="append", default=[], help="run: KEY=VALUE on the workers.")
  p.add_argument("--log_dir", default=None, help="Local log directory (tpu_logs/<tpu>).")
  return p


def commands(argv: Sequence[str]) -> tuple[list[list[str]], argparse.Namespace]:
  """Parses the launcher's arguments into the list of commands to run, in order."""
  args, extra = _parser().parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad or (extra and args.action != "run"):
    raise SystemExit(f"Unexpected arguments {bad or extra}; only `run` takes --config.* "
                     "overrides.")
  target = Target(args.tpu, args.zone, args.project)
  cmds: list[list[str]] = []
  if args.action == "create" or (args.action == "run" and args.create):
    if not args.accelerator_type:
      raise SystemExit("create needs --accelerator_type (e.g. v4-32).")
    cmds.append(create_cmd(target, args.accelerator_type, args.version, args.spot))
  if args.action in ("setup", "copy") or (args.action == "run" and args.setup):
    cmds += copy_cmds(target, args.repo)
  if args.action in ("setup", "install") or (args.action == "run" and args.setup):
    cmds.append(install_cmd(target, args.python))
  if args.action == "run":
    if not args.config or not args.workdir:
      raise SystemExit("run needs --config FILE.py[:ARG] and --workdir DIR.")
    if not args.workdir.startswith("gs://"):
      print(f"Warning: --workdir {args.workdir!r} is not a gs:// path; every worker must "
            "see the same directory.", file=sys.stderr)
    args.job = args.job or _job_name(args.workdir)
    flags = [f"--config={args.config}", *extra, f"--workdir={args.workdir}"]
    cmds.append(train_cmd(target, flags, job=args.job, python=args.python,
                          detach=args.detach, env=args.env))
  if args.action in ("logs", "kill"):
    if not args.job:
      raise SystemExit(f"{args.action} needs --job NAME.")
    local = args.log_dir or f"tpu_logs/{args.tpu}"
    cmds.append(logs_cmd(target, args.job, local) if args.action == "logs"
                else kill_cmd(target, args.job))
  if args.action == "stop":
    cmds.append(stop_cmd(target))
  if args.action == "delete":
    cmds.append(delete_cmd(target))
  return cmds, args


def main(argv: Sequence[str] | None = None) -> None:
  cmds, args = commands(sys.argv[1:] if argv is None else argv)
  log_file = None
  if args.action == "run" and not args.detach:
    log_file = pathlib.Path(args.log_dir or f"tpu_logs/{args.tpu}") / f"{args.job}.log"
  if args.action == "logs" and not args.dry_run:
    pathlib.Path(args.log_dir or f"tpu_logs/{args.tpu}").mkdir(parents=True, exist_ok=True)
  execute(cmds, dry_run=args.dry_run, log_file=log_file)


if __name__ == "__main__":
  main()
