"""Trains one cascade stage: `python scripts/train.py --config configs/X.py:arg --workdir DIR`.

Multi-process outside a TPU pod: add `--coordinator_address HOST:PORT --num_processes N
--process_id I` (every process gets the same --workdir). All logic lives in imagen_jax.train.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from imagen_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (path[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (jax.distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s",
    None,
    "With the three flags above: seconds a silent process counts as alive (JAX: 100).",
)
_CONNECT_TIMEOUT = flags.DEFINE_float(
    "connect_timeout_s",
    300.0,
    "With the three flags above: "
    "seconds the processes wait for each other to join; "
    "past it, an unreachable coordinator is named.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:  # Keep TensorFlow (used by some input pipelines) off the accelerators.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_threefry_partitionable", True)
  from imagen_jax.parallel import multihost  # pylint: disable=import-outside-toplevel

  multihost.initialize(
      _COORDINATOR.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
      heartbeat_timeout_s=_HEARTBEAT.value,
      connect_timeout_s=_CONNECT_TIMEOUT.value,
  )
  from imagen_jax.train import loop  # pylint: disable=import-outside-toplevel

  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
