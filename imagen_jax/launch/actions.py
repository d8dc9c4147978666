"""The actions of scripts/launch_tpu.py: create | wait | setup (copy + install) | copy |
install | run | logs | kill | stop | delete | manifest.

`Options` holds every setting, one field per flag of scripts/launch_tpu.py (same name, same
default); `launch(action, overrides, options)` builds the action's steps (gcloud commands
from imagen_jax.launch.tpu_vm, or the GKE JobSet of imagen_jax.launch.gke) and runs them
(or, with `dry_run`, prints them). `overrides` are train.py's `--config.FIELD=VALUE` flags,
taken by run and manifest only.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Mapping, Sequence

from imagen_jax.launch import gke
from imagen_jax.launch import tpu_vm
from imagen_jax.launch import train_command

ACTIONS = (
    "create",
    "wait",
    "setup",
    "copy",
    "install",
    "run",
    "logs",
    "kill",
    "stop",
    "delete",
    "manifest",
)


class UsageError(ValueError):
  """A missing or wrong setting for the action (the command line's fault)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """scripts/launch_tpu.py's flags; their help texts say what each is for."""

  tpu: str | None = None
  zone: str | None = None
  project: str | None = None
  internal_ip: bool = False
  tunnel_through_iap: bool = False
  dry_run: bool = False
  accelerator_type: str | None = None
  version: str | None = None
  spot: bool = False
  best_effort: bool = False
  queued_resource: str | None = None
  wait_timeout: float = 0
  poll_seconds: float = 30
  create: bool = False
  setup: bool = False
  repo: str = "."
  python: str = "python3"
  jax_package: str = "jax[tpu]"
  config: str | None = None
  workdir: str | None = None
  train_flag: Sequence[str] = ()
  process_id_env: str | None = None
  job: str | None = None
  detach: bool = False
  env: Sequence[str] = ()
  local_log_dir: str | None = None
  image: str | None = None
  num_slices: int = 1
  topology: str | None = None
  container_dir: str = "/imagen_jax"
  max_restarts: int = 3
  manifest_out: str = "-"

  @classmethod
  def from_flags(cls, flag_values: Mapping[str, Any]) -> Options:
    """From absl FlagValues (or any mapping of name -> object with `.value`)."""
    return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})

  @property
  def job_name(self) -> str:
    return (
        train_command.check_job_name(self.job) if self.job else train_command.job_name(self.workdir)
    )

  @property
  def log_dir(self) -> str:
    return self.local_log_dir or f"tpu_logs/{self.tpu}"


def split_args(args: Sequence[str]) -> tuple[str, list[str]]:
  """The positional arguments (after absl's flags) -> (action, `--config.*` overrides)."""
  if not args or args[0] not in ACTIONS:
    raise UsageError(
        f"The first argument is the action, one of {', '.join(ACTIONS)}; "
        f"got {list(args[:1]) or 'none'}."
    )
  action, rest = args[0], list(args[1:])
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad or (rest and action not in ("run", "manifest")):
    raise UsageError(
        f"Unexpected arguments {bad or rest}; only run and manifest take "
        "--config.FIELD=VALUE overrides."
    )
  return action, rest


def train_flags(opts: Options, overrides: Sequence[str]) -> list[str]:
  if not opts.config or not opts.workdir:
    raise UsageError("run and manifest need --config FILE.py[:ARG] and --workdir DIR.")
  if not opts.workdir.startswith("gs://"):
    print(
        f"Warning: --workdir {opts.workdir!r} is not a gs:// path; every worker must "
        "see the same directory.",
        file=sys.stderr,
    )
  try:
    return train_command.train_flags(opts.config, opts.workdir, overrides, opts.train_flag)
  except ValueError as e:
    raise UsageError(str(e)) from e


def manifest(opts: Options, overrides: Sequence[str]) -> None:
  """Writes the GKE JobSet to `manifest_out` ('-': stdout)."""
  if not opts.accelerator_type or not opts.image:
    raise UsageError("manifest needs --accelerator_type (e.g. v5p-32) and --image.")
  argv = train_command.train_argv(train_flags(opts, overrides), python=opts.python, env=opts.env)
  name = gke.jobset_name(opts.job_name)
  text = gke.to_yaml(
      gke.jobset(
          name=name,
          image=opts.image,
          accelerator_type=opts.accelerator_type,
          command=argv,
          num_slices=opts.num_slices,
          topology=opts.topology,
          max_restarts=opts.max_restarts,
          working_dir=opts.container_dir,
      )
  )
  if opts.manifest_out == "-":
    sys.stdout.write(text)
  else:
    pathlib.Path(opts.manifest_out).write_text(text)
    print(f"Wrote JobSet {name} to {opts.manifest_out}: kubectl apply -f {opts.manifest_out}")


def steps(action: str, overrides: Sequence[str], opts: Options) -> list[tpu_vm.Step]:
  """The commands of a TPU VM `action`, in order (tpu_vm.execute runs them)."""
  target = tpu_vm.Target(
      opts.tpu, opts.zone, opts.project, opts.internal_ip, opts.tunnel_through_iap
  )
  queued = opts.queued_resource
  wait = tpu_vm.WaitActive(target, queued or "", opts.wait_timeout, opts.poll_seconds)
  out = []
  if action == "create" or (action == "run" and opts.create):
    if not opts.accelerator_type:
      raise UsageError("create needs --accelerator_type (e.g. v4-32).")
    if opts.best_effort and not queued:
      raise UsageError("--best_effort needs --queued_resource.")
    out += (
        [
            tpu_vm.queued_create_cmd(
                target,
                queued,
                opts.accelerator_type,
                opts.version,
                spot=opts.spot,
                best_effort=opts.best_effort,
            ),
            wait,
        ]
        if queued
        else [tpu_vm.create_cmd(target, opts.accelerator_type, opts.version, opts.spot)]
    )
  if action == "wait":
    if not queued:
      raise UsageError("wait needs --queued_resource NAME.")
    out.append(wait)
  if action in ("setup", "copy") or (action == "run" and opts.setup):
    out += tpu_vm.copy_cmds(target, opts.repo)
  if action in ("setup", "install") or (action == "run" and opts.setup):
    out.append(tpu_vm.install_cmd(target, opts.python, opts.jax_package))
  if action == "run":
    out.append(
        tpu_vm.train_cmd(
            target,
            train_flags(opts, overrides),
            job=opts.job_name,
            detach=opts.detach,
            env=opts.env,
            process_id_env=opts.process_id_env,
        )
    )
  if action in ("logs", "kill"):
    if not opts.job:
      raise UsageError(f"{action} needs --job NAME.")
    out.append(
        tpu_vm.logs_cmd(target, opts.job, opts.log_dir)
        if action == "logs"
        else tpu_vm.kill_cmd(target, opts.job)
    )
  if action == "stop":
    out.append(tpu_vm.stop_cmd(target))
  if action == "delete":
    out.append(tpu_vm.queued_delete_cmd(target, queued) if queued else tpu_vm.delete_cmd(target))
  return out


def launch(action: str, overrides: Sequence[str], opts: Options) -> None:
  """Runs `action`. UsageError for a wrong command line; ValueError or tpu_vm.LaunchError
  when a command cannot be built or fails."""
  if action == "manifest":
    manifest(opts, overrides)
    return
  if not opts.tpu or not opts.zone:
    raise UsageError(f"{action} needs --tpu NAME and --zone ZONE.")
  todo = steps(action, overrides, opts)
  log_file = None
  if action == "run" and not opts.detach:
    log_file = pathlib.Path(opts.log_dir) / f"{opts.job_name}.log"
  if action == "logs" and not opts.dry_run:
    pathlib.Path(opts.log_dir).mkdir(parents=True, exist_ok=True)
  tpu_vm.execute(todo, dry_run=opts.dry_run, log_file=log_file)
