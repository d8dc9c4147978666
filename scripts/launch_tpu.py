r"""Runs scripts/train.py on every worker of a Cloud TPU VM slice, or writes a GKE JobSet.

  # create a slice, copy this checkout to every worker, install into ~/imagen_jax/.venv, train
  python scripts/launch_tpu.py run --tpu my-v4 --zone us-central2-b \
      --create --accelerator_type v4-32 --setup \
      --config configs/base64.py:variant=paper \
      --config.text.encoder=/mnt/t5-v1_1-xxl --workdir gs://BUCKET/base64
  # the same slice from a queued resource (waits until ACTIVE), over internal IPs
  python scripts/launch_tpu.py create --tpu my-v5p --zone us-east5-a --accelerator_type v5p-64 \
      --queued_resource my-v5p-qr --spot --internal_ip
  python scripts/launch_tpu.py logs --tpu my-v4 --zone us-central2-b --job base64
  python scripts/launch_tpu.py kill --tpu my-v4 --zone us-central2-b --job base64
  python scripts/launch_tpu.py delete --tpu my-v4 --zone us-central2-b [--queued_resource QR]
  # GKE: a JobSet of 2 v5p-32 slices running the same train command
  python scripts/launch_tpu.py manifest --accelerator_type v5p-32 --num_slices 2 \
      --image us-docker.pkg.dev/P/imagen/train:latest --config configs/base64.py:variant=paper \
      --workdir gs://BUCKET/base64 --manifest_out base64.yaml && kubectl apply -f base64.yaml

Actions: create | wait | setup (copy + install) | copy | install | run | logs | kill | stop |
delete | manifest. `--dry_run` prints every command and runs none. `run` forwards
`--config.FIELD=VALUE` overrides and every `--train_flag` to train.py. The commands, what
runs on the workers and what a stand-in gcloud must do: imagen_jax/launch/tpu_vm.py; the
JobSet's fields: imagen_jax/launch/gke.py.
"""
from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags

from imagen_jax.launch import gke
from imagen_jax.launch import tpu_vm
from imagen_jax.launch import train_command

REPO = pathlib.Path(__file__).resolve().parents[1]
ACTIONS = ("create", "wait", "setup", "copy", "install", "run", "logs", "kill", "stop",
           "delete", "manifest")

_TPU = flags.DEFINE_string("tpu", None, "TPU VM (slice) name; a queued resource's node id.")
_ZONE = flags.DEFINE_string("zone", None, "The slice's zone.")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
_INTERNAL_IP = flags.DEFINE_bool("internal_ip", False, "ssh/scp: --internal-ip.")
_IAP = flags.DEFINE_bool("tunnel_through_iap", False, "ssh/scp: --tunnel-through-iap.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, run none.")
_ACCEL = flags.DEFINE_string("accelerator_type", None, "create/manifest: v4-32, v5litepod-16, "
                             "v5p-64, v6e-8, ...")
_VERSION = flags.DEFINE_string("version", None, "create: TPU VM software version.")
_SPOT = flags.DEFINE_bool("spot", False, "create: a Spot slice.")
_BEST_EFFORT = flags.DEFINE_bool("best_effort", False, "create --queued_resource: best effort.")
_QUEUED = flags.DEFINE_string("queued_resource", None, "create/wait/delete: through this "
                              "queued resource (`gcloud compute tpus queued-resources`).")
_WAIT_TIMEOUT = flags.DEFINE_float("wait_timeout", 0, "create/wait: seconds to wait for "
                                   "ACTIVE (0: no limit).")
_POLL = flags.DEFINE_float("poll_seconds", 30, "create/wait: seconds between state checks.")
_CREATE = flags.DEFINE_bool("create", False, "run: create the slice first.")
_SETUP = flags.DEFINE_bool("setup", False, "run: copy the code and install first.")
_REPO = flags.DEFINE_string("repo", str(REPO), "copy/setup: the checkout to copy.")
_PYTHON = flags.DEFINE_string("python", "python3", "install: the workers' Python (>= 3.11) "
                              "that creates ~/imagen_jax/.venv; manifest: the image's Python.")
_JAX = flags.DEFINE_string("jax_package", "jax[tpu]", "install: the JAX requirement.")
_CONFIG = flags.DEFINE_string("config", None, "run/manifest: FILE.py[:ARG] (in the repo).")
_WORKDIR = flags.DEFINE_string("workdir", None, "run/manifest: a gs:// path all workers see.")
_TRAIN_FLAGS = flags.DEFINE_multi_string("train_flag", [], "run/manifest: a train.py flag "
                                         "passed on verbatim (--num_processes=2).")
_PROCESS_ID_ENV = flags.DEFINE_string("process_id_env", None, "run: pass --process_id=\"$VAR\" "
                                      "from this variable of each worker's shell.")
_JOB = flags.DEFINE_string("job", None, "Name of the job's logs (default: from workdir).")
_DETACH = flags.DEFINE_bool("detach", False, "run: start and return at once.")
_ENV = flags.DEFINE_multi_string("env", [], "run/manifest: KEY=VALUE for train.py.")
_LOG_DIR = flags.DEFINE_string("local_log_dir", None, "run/logs: the log directory here "
                               "(default tpu_logs/<tpu>).")
_IMAGE = flags.DEFINE_string("image", None, "manifest: the container image.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "manifest: slices (JobSet replicas).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "manifest: the slice topology (default: "
                                "from --accelerator_type).")
_CONTAINER_DIR = flags.DEFINE_string("container_dir", "/imagen_jax", "manifest: the checkout "
                                     "in the image.")
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 3, "manifest: JobSet restarts.")
_OUT = flags.DEFINE_string("manifest_out", "-", "manifest: YAML file ('-': stdout).")


def _parse(argv):
  """absl's flags, with train.py's `--config.FIELD=VALUE` overrides kept out of them."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  rest = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
  return app.parse_flags_with_usage(rest) + overrides


def _train_flags(overrides):
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("run and manifest need --config FILE.py[:ARG] and --workdir DIR.")
  if not _WORKDIR.value.startswith("gs://"):
    print(f"Warning: --workdir {_WORKDIR.value!r} is not a gs:// path; every worker must "
          "see the same directory.", file=sys.stderr)
  try:
    return train_command.train_flags(_CONFIG.value, _WORKDIR.value, overrides,
                                     _TRAIN_FLAGS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def _manifest(overrides) -> None:
  if not _ACCEL.value or not _IMAGE.value:
    raise app.UsageError("manifest needs --accelerator_type (e.g. v5p-32) and --image.")
  argv = train_command.train_argv(_train_flags(overrides), python=_PYTHON.value,
                                  env=_ENV.value)
  name = gke.jobset_name(_JOB.value or train_command.job_name(_WORKDIR.value))
  text = gke.to_yaml(gke.jobset(
      name=name, image=_IMAGE.value, accelerator_type=_ACCEL.value, command=argv,
      num_slices=_NUM_SLICES.value, topology=_TOPOLOGY.value,
      max_restarts=_MAX_RESTARTS.value, working_dir=_CONTAINER_DIR.value))
  if _OUT.value == "-":
    sys.stdout.write(text)
  else:
    pathlib.Path(_OUT.value).write_text(text)
    print(f"Wrote JobSet {name} to {_OUT.value}: kubectl apply -f {_OUT.value}")


def _steps(action, overrides, target):
  """The commands of `action`, in order (tpu_vm.execute runs them)."""
  queued = _QUEUED.value
  wait = tpu_vm.WaitActive(target, queued or "", _WAIT_TIMEOUT.value, _POLL.value)
  steps = []
  if action == "create" or (action == "run" and _CREATE.value):
    if not _ACCEL.value:
      raise app.UsageError("create needs --accelerator_type (e.g. v4-32).")
    if _BEST_EFFORT.value and not queued:
      raise app.UsageError("--best_effort needs --queued_resource.")
    steps += ([tpu_vm.queued_create_cmd(target, queued, _ACCEL.value, _VERSION.value,
                                        spot=_SPOT.value, best_effort=_BEST_EFFORT.value), wait]
              if queued else
              [tpu_vm.create_cmd(target, _ACCEL.value, _VERSION.value, _SPOT.value)])
  if action == "wait":
    if not queued:
      raise app.UsageError("wait needs --queued_resource NAME.")
    steps.append(wait)
  if action in ("setup", "copy") or (action == "run" and _SETUP.value):
    steps += tpu_vm.copy_cmds(target, _REPO.value)
  if action in ("setup", "install") or (action == "run" and _SETUP.value):
    steps.append(tpu_vm.install_cmd(target, _PYTHON.value, _JAX.value))
  if action == "run":
    flags_ = _train_flags(overrides)
    steps.append(tpu_vm.train_cmd(target, flags_, job=_job(), detach=_DETACH.value,
                                  env=_ENV.value, process_id_env=_PROCESS_ID_ENV.value))
  if action in ("logs", "kill"):
    if not _JOB.value:
      raise app.UsageError(f"{action} needs --job NAME.")
    steps.append(tpu_vm.logs_cmd(target, _JOB.value, _log_dir()) if action == "logs"
                 else tpu_vm.kill_cmd(target, _JOB.value))
  if action == "stop":
    steps.append(tpu_vm.stop_cmd(target))
  if action == "delete":
    steps.append(tpu_vm.queued_delete_cmd(target, queued) if queued
                 else tpu_vm.delete_cmd(target))
  return steps


def _job():
  return _JOB.value or train_command.job_name(_WORKDIR.value)


def _log_dir():
  return _LOG_DIR.value or f"tpu_logs/{_TPU.value}"


def main(argv):
  if len(argv) < 2 or argv[1] not in ACTIONS:
    raise app.UsageError(f"The first argument is the action, one of {', '.join(ACTIONS)}; "
                         f"got {argv[1:2] or 'none'}.")
  action, rest = argv[1], argv[2:]
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad or (rest and action not in ("run", "manifest")):
    raise app.UsageError(f"Unexpected arguments {bad or rest}; only run and manifest take "
                         "--config.FIELD=VALUE overrides.")
  try:
    if action == "manifest":
      _manifest(rest)
      return
    if not _TPU.value or not _ZONE.value:
      raise app.UsageError(f"{action} needs --tpu NAME and --zone ZONE.")
    target = tpu_vm.Target(_TPU.value, _ZONE.value, _PROJECT.value, _INTERNAL_IP.value,
                           _IAP.value)
    steps = _steps(action, rest, target)
    log_file = None
    if action == "run" and not _DETACH.value:
      log_file = pathlib.Path(_log_dir()) / f"{_job()}.log"
    if action == "logs" and not _DRY_RUN.value:
      pathlib.Path(_log_dir()).mkdir(parents=True, exist_ok=True)
    tpu_vm.execute(steps, dry_run=_DRY_RUN.value, log_file=log_file)
  except (ValueError, tpu_vm.LaunchError) as e:
    raise SystemExit(f"launch_tpu {action}: {e}") from e


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
