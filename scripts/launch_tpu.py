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
`--config.FIELD=VALUE` overrides and every `--train_flag` to train.py. What each action
does: imagen_jax/launch/actions.py; the commands, what runs on the workers and what a
stand-in gcloud must do: imagen_jax/launch/tpu_vm.py; the JobSet's fields:
imagen_jax/launch/gke.py.
"""

import pathlib

from absl import app
from absl import flags

from imagen_jax.launch import actions
from imagen_jax.launch import tpu_vm

REPO = pathlib.Path(__file__).resolve().parents[1]

# One flag per field of actions.Options, same name (main reads them by name).
flags.DEFINE_string("tpu", None, "TPU VM (slice) name; a queued resource's node id.")
flags.DEFINE_string("zone", None, "The slice's zone.")
flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
flags.DEFINE_bool("internal_ip", False, "ssh/scp: --internal-ip.")
flags.DEFINE_bool("tunnel_through_iap", False, "ssh/scp: --tunnel-through-iap.")
flags.DEFINE_bool("dry_run", False, "Print the commands, run none.")
flags.DEFINE_string(
    "accelerator_type", None, "create/manifest: v4-32, v5litepod-16, v5p-64, v6e-8, ..."
)
flags.DEFINE_string("version", None, "create: TPU VM software version.")
flags.DEFINE_bool("spot", False, "create: a Spot slice.")
flags.DEFINE_bool("best_effort", False, "create --queued_resource: best effort.")
flags.DEFINE_string(
    "queued_resource",
    None,
    "create/wait/delete: through this queued resource (`gcloud compute tpus queued-resources`).",
)
flags.DEFINE_float("wait_timeout", 0, "create/wait: seconds to wait for ACTIVE (0: no limit).")
flags.DEFINE_float("poll_seconds", 30, "create/wait: seconds between state checks.")
flags.DEFINE_bool("create", False, "run: create the slice first.")
flags.DEFINE_bool("setup", False, "run: copy the code and install first.")
flags.DEFINE_string("repo", str(REPO), "copy/setup: the checkout to copy.")
flags.DEFINE_string(
    "python",
    "python3",
    "install: the workers' Python (>= 3.11) "
    "that creates ~/imagen_jax/.venv; manifest: the image's Python.",
)
flags.DEFINE_string("jax_package", "jax[tpu]", "install: the JAX requirement.")
flags.DEFINE_string("config", None, "run/manifest: FILE.py[:ARG] (in the repo).")
flags.DEFINE_string("workdir", None, "run/manifest: a gs:// path all workers see.")
flags.DEFINE_multi_string(
    "train_flag", [], "run/manifest: a train.py flag passed on verbatim (--num_processes=2)."
)
flags.DEFINE_string(
    "process_id_env",
    None,
    'run: pass --process_id="$VAR" ' "from this variable of each worker's shell.",
)
flags.DEFINE_string("job", None, "Name of the job's logs (default: from workdir).")
flags.DEFINE_bool("detach", False, "run: start and return at once.")
flags.DEFINE_multi_string("env", [], "run/manifest: KEY=VALUE for train.py.")
flags.DEFINE_string(
    "local_log_dir", None, "run/logs: the log directory here (default tpu_logs/<tpu>)."
)
flags.DEFINE_string("image", None, "manifest: the container image.")
flags.DEFINE_integer("num_slices", 1, "manifest: slices (JobSet replicas).")
flags.DEFINE_string(
    "topology", None, "manifest: the slice topology (default: from --accelerator_type)."
)
flags.DEFINE_string("container_dir", "/imagen_jax", "manifest: the checkout in the image.")
flags.DEFINE_integer("max_restarts", 3, "manifest: JobSet restarts.")
flags.DEFINE_string("manifest_out", "-", "manifest: YAML file ('-': stdout).")


def _parse(argv):
  """absl's flags, with train.py's `--config.FIELD=VALUE` overrides kept out of them."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  rest = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
  return app.parse_flags_with_usage(rest) + overrides


def main(argv):
  try:
    action, overrides = actions.split_args(argv[1:])
    actions.launch(action, overrides, actions.Options.from_flags(flags.FLAGS))
  except actions.UsageError as e:
    raise app.UsageError(str(e)) from e
  except (ValueError, tpu_vm.LaunchError) as e:
    raise SystemExit(f"launch_tpu {action}: {e}") from e


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
