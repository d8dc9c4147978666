r"""A stand-in `gcloud` for the pod rehearsal: each TPU worker is a local process.

What it does is what imagen_jax.launch.tpu_vm's docstring asks of one:
  * `compute tpus tpu-vm ssh NAME ... --worker=W --command CMD`: `bash -c CMD` once per worker
    (W = `all`: every worker, else the one index), all at once, each with its own HOME and
    cwd (`$REHEARSAL_WORKERS_ROOT/worker-<i>`, as each TPU VM has its own disk) and
    `TPU_WORKER_ID=i`, plus the variables of `$REHEARSAL_WORKER_ENV` (JSON; `{home}` in a
    value becomes the worker's home); output lines prefixed with the worker; exit status
    non-zero when any worker's is.
  * `compute tpus tpu-vm scp SRC NAME:DEST ...`: copies SRC to every worker's HOME/DEST;
    `scp NAME:GLOB DEST`: copies each worker's HOME/GLOB matches into DEST.
  * `create`, `delete`, `stop`, `queued-resources create|delete`: nothing, exit 0;
    `queued-resources describe ... --format=value(state.state)`: prints ACTIVE.
Every call is appended to `$REHEARSAL_WORKERS_ROOT/gcloud_calls.jsonl`.

`install(bin_dir)` writes the `gcloud` executable that runs this module.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import threading

ROOT_ENV = "REHEARSAL_WORKERS_ROOT"
COUNT_ENV = "REHEARSAL_NUM_WORKERS"
WORKER_ENV = "REHEARSAL_WORKER_ENV"


def install(bin_dir: str | os.PathLike, python: str = sys.executable) -> pathlib.Path:
  """Writes `bin_dir/gcloud` (runs this module with `python`); returns its path."""
  path = pathlib.Path(bin_dir) / "gcloud"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
      f"#!/bin/sh\nexec {shlex.quote(str(python))} -m "
      'imagen_jax.rehearsal.gcloud_stand_in "$@"\n'
  )
  path.chmod(0o755)
  return path


def worker_home(root: str | os.PathLike, i: int) -> pathlib.Path:
  return pathlib.Path(root) / f"worker-{i}"


def _option(args: list[str], name: str) -> str | None:
  for k, a in enumerate(args):
    if a == name and k + 1 < len(args):
      return args[k + 1]
    if a.startswith(name + "="):
      return a[len(name) + 1 :]
  return None


def _workers(args: list[str]) -> list[int]:
  n = int(os.environ.get(COUNT_ENV, "1"))
  w = _option(args, "--worker") or "0"
  if w == "all":
    return list(range(n))
  if not w.isdigit() or int(w) >= n:
    raise SystemExit(f"gcloud stand-in: --worker={w!r}; the slice has {n} workers")
  return [int(w)]


def _env(i: int, home: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  extra = json.loads(os.environ.get(WORKER_ENV) or "{}")
  env.update({k: str(v).replace("{home}", str(home)) for k, v in extra.items()})
  env.update(HOME=str(home), TPU_WORKER_ID=str(i), PWD=str(home))
  return env


def _pump(stream, prefix: str) -> None:
  for line in stream:
    sys.stdout.write(f"{prefix}{line}")
    sys.stdout.flush()


def ssh(args: list[str], root: pathlib.Path) -> int:
  command = _option(args, "--command")
  if command is None:
    raise SystemExit("gcloud stand-in: ssh needs --command")
  procs = []
  for i in _workers(args):
    home = worker_home(root, i)
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=home,
        env=_env(i, home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    t = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}] "), daemon=True)
    t.start()
    procs.append((proc, t))
  codes = []
  for proc, t in procs:
    codes.append(proc.wait())
    t.join()
  return max(codes, default=0)


def scp(args: list[str], root: pathlib.Path) -> int:
  positional = [
      a
      for k, a in enumerate(args)
      if not a.startswith("-")
      and (k == 0 or args[k - 1] not in ("--zone", "--project", "--worker"))
  ]
  src, dest = positional[0], positional[1]
  for i in _workers(args):
    home = worker_home(root, i)
    if ":" in dest:  # local -> worker
      target = home / dest.split(":", 1)[1]
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, target)
    else:  # worker -> local
      pathlib.Path(dest).mkdir(parents=True, exist_ok=True)
      for match in glob.glob(str(home / src.split(":", 1)[1])):
        shutil.copy2(match, pathlib.Path(dest) / os.path.basename(match))
  return 0


def main(argv: list[str]) -> int:
  root = pathlib.Path(os.environ.get(ROOT_ENV) or "")
  if not os.environ.get(ROOT_ENV):
    raise SystemExit(f"gcloud stand-in: ${ROOT_ENV} is not set")
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "gcloud_calls.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps(argv) + "\n")
  if argv[:3] == ["compute", "tpus", "tpu-vm"] and len(argv) > 3:
    verb, rest = argv[3], argv[4:]
    if verb == "ssh":
      return ssh(rest[1:], root)
    if verb == "scp":
      return scp(rest, root)
    if verb in ("create", "delete", "stop", "start", "describe"):
      return 0
  if argv[:3] == ["compute", "tpus", "queued-resources"] and len(argv) > 3:
    if argv[3] == "describe":
      print("ACTIVE")
    return 0
  raise SystemExit(f"gcloud stand-in: unsupported command {argv!r}")


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
