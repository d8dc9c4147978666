"""Two local processes (4 CPU devices each, jax.distributed on 127.0.0.1) train exactly like
one 8-device process, and write one consistent checkpoint."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from imagen_jax.train import loop, toy_task

REPO = pathlib.Path(__file__).resolve().parents[2]
TOY_RUN = REPO / "tests" / "train" / "toy_run.py"
OVERRIDES = {
    "total_steps": 6,
    "checkpoint.every_steps": 3,
    "log_every_steps": 3,
    "parallel.mesh": [["data", -1], ["fsdp", 2]],
}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, out, **kw):
  cmd = [
      sys.executable,
      str(TOY_RUN),
      "--workdir",
      str(workdir),
      "--out",
      str(out),
      "--overrides",
      json.dumps(OVERRIDES),
  ]
  for k, v in kw.items():
    cmd += [f"--{k}", str(v)]
  return cmd


def test_two_processes_match_one_process(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  single = subprocess.run(
      _cmd(tmp_path / "single", tmp_path / "single.npz", devices=8),
      env=env,
      capture_output=True,
      text=True,
      timeout=180,
      check=False,
  )
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  procs = [
      subprocess.Popen(
          _cmd(
              tmp_path / "multi",
              tmp_path / "multi.npz",
              devices=4,
              num_processes=2,
              process_id=i,
              port=port,
          ),
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in outs[1][1]

  a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)

  # One checkpoint directory per step, committed once; it restores in this (8-device) process
  # to the same values.
  steps = sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir())
  assert steps == [3, 6]
  config = toy_task.toy_config(**{k: v for k, v in OVERRIDES.items() if k != "parallel.mesh"})
  restored = loop.train(config, str(tmp_path / "multi"), toy_task.toy_task_factory)
  host = jax.device_get(restored)
  flat = {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_flatten_with_path(host)[0]
  }
  for k in a.files:
    np.testing.assert_array_equal(flat[k], b[k], err_msg=k)
  # Both processes' iterator states are in the checkpoint.
  data = json.loads((tmp_path / "multi" / "checkpoints" / "6" / "data" / "metadata").read_text())
  assert data == {"process_count": 2, "states": [{"index": 6}, {"index": 6}]}
