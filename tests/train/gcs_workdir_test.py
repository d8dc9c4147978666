"""Training to a `gs://` workdir on a real GCS API server (fake-gcs-server), reached only
through the standard client variables: checkpoints through tensorstore, config and events
through gcsfs; a restart resumes from the bucket; TensorBoard events can be read while the
run goes on and survive a kill."""

import json
import pathlib
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from imagen_jax.storage import paths
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import loop, toy_task
from imagen_jax.train import metrics as metrics_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
TOY_RUN = REPO / "tests" / "train" / "toy_run.py"


def _steps(workdir):
  root = paths.path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def test_train_to_bucket_and_resume_from_it(gcs_bucket):
  workdir = f"{gcs_bucket}/runs/toy"
  config = toy_task.toy_config(total_steps=8, **{"checkpoint.every_steps": 4})
  loop.train(config, workdir, toy_task.toy_task_factory, stop_at=4)
  assert _steps(workdir) == [4]
  assert json.loads((paths.path(workdir) / "config.json").read_text())["total_steps"] == 8
  state = loop.train(config, workdir, toy_task.toy_task_factory)
  assert int(jax.device_get(state.step)) == 8 and _steps(workdir) == [4, 8]
  events = metrics_lib.read_events(workdir)
  assert [s for s, _ in events["loss"]] == [2, 4, 6, 8]  # both runs' events, in order
  assert json.loads((paths.path(workdir) / "final_metrics.json").read_text())["step"] == 8


def test_events_readable_mid_run_and_after_a_kill(gcs_bucket):
  workdir = f"{gcs_bucket}/runs/live"
  overrides = {"total_steps": 100000, "log_every_steps": 5, "checkpoint.every_steps": 100000}
  env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  proc = subprocess.Popen(
      [sys.executable, str(TOY_RUN), "--workdir", workdir, "--overrides", json.dumps(overrides)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  try:
    deadline, seen = time.time() + 240, {}
    while time.time() < deadline and len(seen.get("loss", [])) < 3:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      time.sleep(1.0)
      seen = metrics_lib.read_events(workdir) if paths.path(workdir).exists() else {}
    assert len(seen.get("loss", [])) >= 3, "no events visible in the bucket while training"
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  after = metrics_lib.read_events(workdir)
  assert after["loss"][: len(seen["loss"])] == seen["loss"]  # nothing already written is lost
  assert [s for s, _ in after["loss"]] == list(range(5, 5 * len(after["loss"]) + 1, 5))


def test_unwritable_bucket_is_named_before_training(gcs_emulator, monkeypatch):
  for key, value in gcs_emulator.env.items():
    monkeypatch.setenv(key, value)
  with pytest.raises(PermissionError, match="gs://no-such-bucket-here/run"):
    ckpt_lib.check_writable("gs://no-such-bucket-here/run")
