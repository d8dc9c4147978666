"""The real stage (shapes base, frozen ByT5, the input pipeline, the diffusion loss) trains the
same on 1 x 8, 2 x 4 and 4 x 2 processes x devices, and a 2-process run resumed on one process
continues the same stream: a pod run can be reproduced and debugged on one machine.

Each layout is `scripts/train.py` with the explicit process flags on 127.0.0.1, as a user runs
it outside a TPU pod (slow tier: every process compiles the stage's step).
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "shapes.py") + ":stage=base,runlocal"
# A constant learning rate, so a run continued to more total steps follows the same schedule.
OVERRIDES = [
    "--config.optim.decay=constant",
    "--config.optim.warmup_steps=0",
    "--config.checkpoint.every_steps=100",
    "--config.log_every_steps=1",
]

pytestmark = pytest.mark.slow


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(workdir, processes, total_steps):
  devices = 8 // processes
  env = dict(
      os.environ,
      PYTHONPATH=str(REPO),
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  cmd = [
      sys.executable,
      str(REPO / "scripts" / "train.py"),
      "--config",
      CONFIG,
      "--workdir",
      str(workdir),
      f"--config.total_steps={total_steps}",
      *OVERRIDES,
  ]
  if processes > 1:
    port = _free_port()
    cmds = [
        cmd
        + [
            "--coordinator_address",
            f"127.0.0.1:{port}",
            "--num_processes",
            str(processes),
            "--process_id",
            str(i),
            "--heartbeat_timeout_s",
            "900",
        ]
        for i in range(processes)
    ]
  else:
    cmds = [cmd]
  procs = [
      subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for c in cmds
  ]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return outs[0][1]


def _params(workdir, step):
  """The committed params and EMA as numpy arrays (whatever layout wrote them)."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  state = checkpointer.restore(
      path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  )
  return {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(
          {"params": state["params"], "ema_params": state["ema_params"]}
      )
  }


# The attention-pooling key bias adds the same q.b to every key's logit, which the softmax
# cancels: its gradient is 0 in exact arithmetic, so Adam turns float noise into +-lr steps
# on any layout (or XLA fusion). It is left out; every other tensor must match.
_ZERO_GRADIENT = ("['pool_key']['bias']",)


def _assert_close(a, b, what):
  """Equal to float32 reduction-order noise: |a - b| <= 1e-5 (1 + |b|) element-wise."""
  assert sorted(a) == sorted(b)
  a = {k: v for k, v in a.items() if not k.endswith(_ZERO_GRADIENT)}
  assert len(a) == len(b) - 2  # params and EMA of the one tensor
  worst = max((float(np.max(np.abs(a[k] - b[k]))), k) for k in a)
  print(
      f"{what}: {len(a)} tensors, max |difference| {worst[0]:.2e} ({worst[1]}, max |value| "
      f"{float(np.max(np.abs(b[worst[1]]))):.3g})"
  )
  assert max(float(np.max(np.abs(a[k]))) for k in a) > 0
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=f"{what}: {k}")


def test_process_layouts_train_the_same_and_resume_across_them(tmp_path):
  reference = None
  for processes in (1, 2, 4):
    workdir = tmp_path / f"{processes}x{8 // processes}"
    log = _train(workdir, processes, total_steps=3)
    assert "Start at step 0 (from scratch)" in log
    params = _params(workdir, 3)
    if reference is None:
      reference = params
    else:
      _assert_close(params, reference, f"{processes} x {8 // processes} vs 1 x 8")

  resumed = tmp_path / "2x4_then_1x8"
  _train(resumed, 2, total_steps=2)
  log = _train(resumed, 1, total_steps=3)
  assert "Start at step 2 (resumed from" in log
  assert "resharded to 1" in log
  _assert_close(_params(resumed, 3), reference, "2 x 4 to step 2, then 1 x 8")
