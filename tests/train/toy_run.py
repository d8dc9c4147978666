"""Runs the trainer on the toy task in a fresh process (used by the multi-process tests).

python tests/train/toy_run.py --workdir DIR [--overrides JSON] [--stop_at N] [--out F.npz]
    [--num_processes 2 --process_id I --port P] [--devices 8] [--hang_commit_step S]
"""

import argparse
import json
import os
import sys


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--overrides", default="{}")
  p.add_argument("--stop_at", type=int, default=None)
  p.add_argument("--out", default=None)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--hang_commit_step", type=int, default=None)
  args = p.parse_args()

  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = " ".join(
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if "xla_force_host_platform_device_count" not in f
  )
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_num_cpu_devices", args.devices)
  jax.config.update("jax_threefry_partitionable", True)
  from absl import logging  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  from imagen_jax.parallel import multihost  # pylint: disable=import-outside-toplevel

  if args.num_processes > 1:
    multihost.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  if args.hang_commit_step is not None:
    _hang_commit(args.hang_commit_step, args.workdir)

  import numpy as np  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import loop, toy_task  # pylint: disable=import-outside-toplevel

  overrides = {
      k: (tuple(tuple(e) for e in v) if k == "parallel.mesh" else v)
      for k, v in json.loads(args.overrides).items()
  }
  config = toy_task.toy_config(**overrides)
  state = loop.train(config, args.workdir, toy_task.toy_task_factory, stop_at=args.stop_at)
  if args.out:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    host = (
        multihost_utils.process_allgather(state, tiled=True)
        if jax.process_count() > 1
        else jax.device_get(state)
    )
    flat = {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(host)[0]
    }
    if jax.process_index() == 0:
      np.savez(args.out, **flat)
  print("TOY_RUN_DONE", flush=True)


def _hang_commit(step, workdir):
  """Blocks the commit (final rename) of checkpoint `step`, after writing a marker file."""
  import time  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self):
    if self.get_final().name == str(step):
      with open(os.path.join(workdir, "HANGING"), "w") as f:
        f.write(str(self.get()))
      time.sleep(3600)
    return await original(self)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


if __name__ == "__main__":
  sys.exit(main())
