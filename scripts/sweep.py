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

What `sweep(add, arg)` returns, run names, the files in each run's workdir and when a run
counts as finished: imagen_jax/launch/sweep.py; the table: imagen_jax/launch/sweep_summary.py.
"""

import pathlib

from absl import app
from absl import flags

from imagen_jax.launch import sweep
from imagen_jax.launch import sweep_summary

REPO = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = flags.DEFINE_string("config", None, "Config file and arg: FILE.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
_MODE = flags.DEFINE_enum(
    "mode",
    "print",
    ["print", "local", "tpu"],
    "print the commands, run them here, or on a TPU VM slice.",
)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "--mode local: runs at the same time.")
_SUMMARIZE = flags.DEFINE_string("summarize", None, "Print the table of the runs under DIR.")
_SORT_BY = flags.DEFINE_string(
    "sort_by",
    None,
    "Metric to sort by (default: the config's "
    "first headline metric that the runs have, else loss).",
)
_ORDER = flags.DEFINE_enum(
    "order",
    "auto",
    ["auto", "asc", "desc"],
    "Sort order; auto: descending for accuracy-like metrics.",
)
_CSV = flags.DEFINE_string("csv", None, "CSV path for --summarize (default DIR/summary.csv).")
_PYTHON = flags.DEFINE_string(
    "python",
    None,
    "Python for the runs (default: this one "
    "locally, the launcher's ~/imagen_jax/.venv on TPU VMs).",
)
_TPU = flags.DEFINE_string("tpu", None, "--mode tpu: the TPU VM name.")
_ZONE = flags.DEFINE_string("zone", None, "--mode tpu: its zone.")
_PROJECT = flags.DEFINE_string("project", None, "--mode tpu: its project.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "--mode tpu: print the gcloud commands only.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SUMMARIZE.value:
    sweep_summary.summarize(
        _SUMMARIZE.value, sort_by=_SORT_BY.value, order=_ORDER.value, csv_path=_CSV.value
    )
    return
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required (or --summarize DIR).")
  spec, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "print":
    sweep.print_commands(spec, workdir, python=_PYTHON.value)
  elif _MODE.value == "local":
    status = sweep.run_local(
        spec, workdir, repo=REPO, parallel=_PARALLEL.value, python=_PYTHON.value
    )
    failed = [n for n, s in status.items() if s.startswith("failed")]
    if failed:
      raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")
  else:
    if not _TPU.value or not _ZONE.value:
      raise app.UsageError("--mode tpu needs --tpu and --zone.")
    sweep.run_tpu(
        spec,
        workdir,
        tpu=_TPU.value,
        zone=_ZONE.value,
        project=_PROJECT.value,
        dry_run=_DRY_RUN.value,
        python=_PYTHON.value,
    )


if __name__ == "__main__":
  app.run(main)
