r"""Train / sampling / input throughput of one stage, optionally beside imagen-pytorch.

  python scripts/benchmark.py --config configs/base64.py:variant=tiny,data=shapes \
      --json /tmp/bench.json [--peer imagen-pytorch --peer_python .venv-peer/bin/python]

Ours (imagen_jax.perf.benchmark): the trainer's jitted, sharded train step on the devices
present (median step time, img/s, TFLOP/s per device and MFU with FLOPs from XLA's cost
analysis as the trainer logs them, peak device memory where the backend reports it), sampling
img/s over --sample_steps steps without and with guidance, and the input pipeline's img/s.

The peer (`--peer imagen-pytorch`) runs first, in a separate process with --peer_python (an
environment from requirements-bench.txt), on the same job: hyperparameters translated by
imagen_jax.perf.peer_spec, same batch, resolution, precision and optimizer, text embeddings
passed directly. The JSON holds both sides and the ratios ours / theirs (`ratio_*`);
imagen_jax.perf.run runs it all, imagen_jax.perf.report writes it.
BENCHMARKS.md records the figures and the commands that made them.

--batch_size is the global train batch (as config.batch_size); --batch is its deprecated alias.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from imagen_jax import config_lib
from imagen_jax.perf import run as run_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (path[:arg]).", lock_config=True
)
_JSON = flags.DEFINE_string("json", None, "Where to write the figures (JSON).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Global train batch (0: config.batch_size).")
_BATCH = flags.DEFINE_alias("batch", "batch_size")  # deprecated: the old name
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per figure (the median is reported).")
_INNER = flags.DEFINE_integer("inner", 5, "Train steps per timing.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 16, "Images per sampling call.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 32, "Sampler steps (ancestral DDPM).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 5.0, "Guidance weight of the guided run.")
_INPUT_SECONDS = flags.DEFINE_float("input_seconds", 5.0, "Input pipeline timing window.")
_ONLY = flags.DEFINE_list(
    "only",
    list(run_lib.PARTS),
    "Which of train, sample, input to measure on our side (empty: the "
    "peer alone). The peer samples only if `sample` is here or this is "
    "empty.",
)
_PROFILE = flags.DEFINE_string(
    "profile",
    None,
    "Also trace --profile_steps train steps into this directory "
    "(jax.profiler, with a Perfetto trace) and print where their time goes.",
)
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Train steps traced by --profile.")
_PEER = flags.DEFINE_enum("peer", "none", ["none", "imagen-pytorch"], "Peer to run beside us.")
_PEER_PYTHON = flags.DEFINE_string(
    "peer_python", sys.executable, "Python of the peer's environment (requirements-bench.txt)."
)
_PEER_DEVICE = flags.DEFINE_string("peer_device", "auto", "auto | cpu | cuda")
_PEER_THREADS = flags.DEFINE_integer("peer_threads", 0, "torch CPU threads (0: torch default).")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout", 1800, "Seconds before the peer is stopped (figures it wrote are kept)."
)
flags.mark_flags_as_required(["config", "json"])

_PEER_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks", "peer_imagen_pytorch.py"
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _BATCH.present:
    logging.warning("--batch is deprecated; use --batch_size (the same global batch).")
  try:
    run_lib.check_only(_ONLY.value)
  except ValueError as e:
    raise app.UsageError(f"--only {e}") from e
  if _PROFILE.value:  # before any figure is measured, not after
    try:
      run_lib.prepare_profile_dir(_PROFILE.value)
    except ValueError as e:
      raise app.UsageError(f"--profile {_PROFILE.value!r}: {e}") from e
  settings = run_lib.Settings(
      json_path=_JSON.value,
      batch_size=_BATCH_SIZE.value,
      repeats=_REPEATS.value,
      inner=_INNER.value,
      sample_batch=_SAMPLE_BATCH.value,
      sample_steps=_SAMPLE_STEPS.value,
      guidance_scale=_GUIDANCE.value,
      input_seconds=_INPUT_SECONDS.value,
      only=tuple(_ONLY.value),
      profile_dir=_PROFILE.value,
      profile_steps=_PROFILE_STEPS.value,
  )
  peer = None
  if _PEER.value != "none":
    peer = run_lib.Peer(
        python=_PEER_PYTHON.value,
        script=_PEER_SCRIPT,
        name=_PEER.value,
        device=_PEER_DEVICE.value,
        threads=_PEER_THREADS.value,
        timeout=_PEER_TIMEOUT.value,
    )
  run_lib.run(_CONFIG.value, settings, peer, command=" ".join(sys.argv))


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
