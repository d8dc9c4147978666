"""End-to-end trainer tests on the toy task (8 virtual CPU devices; subprocesses where a fresh
process or a signal is the point)."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from imagen_jax.train import loop, toy_task
from imagen_jax.train import metrics as metrics_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
TOY_RUN = REPO / "tests" / "train" / "toy_run.py"


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _cmd(workdir, overrides=None, **kw):
  cmd = [
      sys.executable,
      str(TOY_RUN),
      "--workdir",
      str(workdir),
      "--overrides",
      json.dumps(overrides or {}),
  ]
  for k, v in kw.items():
    cmd += [f"--{k}", str(v)]
  return cmd


def run_toy(workdir, overrides=None, timeout=180, **kw):
  return subprocess.run(
      _cmd(workdir, overrides, **kw),
      env=_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


def committed_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def test_short_run_loss_falls_and_writes_outputs(tmp_path):
  config = toy_task.toy_config(
      total_steps=40, log_every_steps=10, sample_every_steps=20, **{"checkpoint.every_steps": 20}
  )
  state = loop.train(config, str(tmp_path), toy_task.toy_task_factory)
  assert int(jax.device_get(state.step)) == 40
  events = metrics_lib.read_events(tmp_path)
  losses = [v for _, v in events["loss"]]
  assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses
  for tag in (
      "grad_norm",
      "lr",
      "steps_per_sec",
      "images_per_sec",
      "skipped_total",
      "bad_examples",
      "tflops_per_device",
  ):
    assert tag in events, tag
  assert "mfu" not in events  # "n/a" on CPU: not a scalar
  assert [s for s, _ in events["samples"]] == [20, 40]
  assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
      "step_00000020.png",
      "step_00000040.png",
  ]
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 40
  assert committed_steps(tmp_path) == [20, 40]


def test_bad_inputs_fail_before_compiling(tmp_path):
  with pytest.raises(ValueError, match=r"Global batch size 12 is not divisible by the 8"):
    loop.train(toy_task.toy_config(batch_size=12), str(tmp_path), toy_task.toy_task_factory)
  with pytest.raises(ValueError, match=r"input.resolution=16 but the toy model.s resolution is 8"):
    loop.train(
        toy_task.toy_config(**{"input.resolution": 16}), str(tmp_path), toy_task.toy_task_factory
    )
  with pytest.raises(ValueError, match="parallel.mode"):
    loop.train(
        toy_task.toy_config(**{"parallel.mode": "bogus"}), str(tmp_path), toy_task.toy_task_factory
    )
  assert not (tmp_path / "checkpoints").exists() or not committed_steps(tmp_path)


def test_unknown_config_key_in_override_is_rejected(tmp_path):
  cfg_file = tmp_path / "toy_cfg.py"
  cfg_file.write_text(
      "from imagen_jax.train import toy_task\n\n"
      "def get_config(arg=None):\n  return toy_task.toy_config()\n"
  )
  proc = subprocess.run(
      [
          sys.executable,
          str(REPO / "scripts" / "train.py"),
          f"--config={cfg_file}",
          "--config.optim.learning_rate=1e-3",
          f"--workdir={tmp_path / 'wd'}",
      ],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode != 0
  assert "learning_rate" in proc.stderr
  assert not (tmp_path / "wd").exists()


def test_unwritable_workdir_reported_before_first_step(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="not writable"):
    loop.train(toy_task.toy_config(), str(blocker / "wd"), toy_task.toy_task_factory)


def test_nonfinite_skip_leaves_state_unchanged_and_counts(tmp_path):
  config = toy_task.toy_config(
      total_steps=6, log_every_steps=3, **{"input.nan_steps": [2, 3], "checkpoint.every_steps": 100}
  )
  before = loop.train(config, str(tmp_path / "a"), toy_task.toy_task_factory, stop_at=1)
  before = jax.device_get(before)
  state = loop.train(config, str(tmp_path / "a"), toy_task.toy_task_factory, stop_at=3)
  state = jax.device_get(state)
  assert int(state.step) == 3 and int(state.skipped) == 2
  for field in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(before, field), getattr(state, field))
  final = loop.train(config, str(tmp_path / "a"), toy_task.toy_task_factory)
  assert int(jax.device_get(final.skipped)) == 2
  events = metrics_lib.read_events(tmp_path / "a")
  assert dict(events["skipped_total"])[3] == 2.0


def test_nonfinite_halt_names_step_and_metric(tmp_path):
  config = toy_task.toy_config(total_steps=6, nonfinite="halt", **{"input.nan_steps": [4]})
  with pytest.raises(loop.TrainingHalted, match=r"Non-finite loss .* at step 4"):
    loop.train(config, str(tmp_path), toy_task.toy_task_factory)
  proc = run_toy(tmp_path / "sub", {"nonfinite": "halt", "input.nan_steps": [4], "total_steps": 6})
  assert proc.returncode != 0
  assert "at step 4" in proc.stderr


def test_bit_identical_resume(tmp_path):
  overrides = {"total_steps": 8, "checkpoint.every_steps": 100, "log_every_steps": 3}
  straight = run_toy(tmp_path / "straight", overrides, out=tmp_path / "straight.npz")
  assert straight.returncode == 0, straight.stderr[-3000:]
  first = run_toy(tmp_path / "resumed", overrides, stop_at=4)
  assert first.returncode == 0, first.stderr[-3000:]
  assert committed_steps(tmp_path / "resumed") == [4]
  second = run_toy(tmp_path / "resumed", overrides, out=tmp_path / "resumed.npz")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Start at step 4 (resumed from" in second.stderr
  a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
  assert sorted(a.files) == sorted(b.files)
  assert any("opt_state" in k for k in a.files) and any("ema_params" in k for k in a.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert int(a[".step"]) == 8


def test_sigterm_saves_current_step_and_restart_continues(tmp_path):
  overrides = {"total_steps": 100000, "checkpoint.every_steps": 100000, "log_every_steps": 5}
  proc = subprocess.Popen(
      _cmd(tmp_path, overrides),
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if " 10/100000 " in line:  # a console line: training is running
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  out = "".join(seen) + out
  assert proc.returncode == 0, out[-3000:]
  assert "Preempted at step" in out
  steps = committed_steps(tmp_path)
  assert len(steps) == 1 and 10 <= steps[0] < 100000, steps
  saved = steps[0]
  resumed = run_toy(tmp_path, dict(overrides, total_steps=saved + 3))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Start at step {saved} (resumed from" in resumed.stderr
  assert committed_steps(tmp_path)[-1] == saved + 3


def test_kill_during_save_resumes_from_last_committed(tmp_path):
  overrides = {
      "total_steps": 12,
      "checkpoint.every_steps": 4,
      "checkpoint.keep": 3,
      "log_every_steps": 4,
  }
  proc = subprocess.Popen(
      _cmd(tmp_path, overrides, hang_commit_step=8),
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  marker = tmp_path / "HANGING"
  deadline = time.time() + 120
  while not marker.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert marker.exists(), "the save of step 8 never started"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  ckpt_dir = tmp_path / "checkpoints"
  assert any("orbax-checkpoint-tmp" in p.name for p in ckpt_dir.iterdir())
  assert committed_steps(tmp_path) == [4]
  resumed = run_toy(tmp_path, overrides)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Start at step 4 (resumed from" in resumed.stderr
  assert committed_steps(tmp_path) == [4, 8, 12]
  assert not any("orbax-checkpoint-tmp" in p.name for p in ckpt_dir.iterdir())


def test_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
  overrides = {"total_steps": 60, "log_every_steps": 10, "checkpoint.every_steps": 30}
  # The first trainer holds the workdir, stopped in the commit of step 30 (alive, locked).
  first = subprocess.Popen(
      _cmd(tmp_path, overrides, hang_commit_step=30),
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + 180
    while not (tmp_path / "HANGING").exists():
      assert first.poll() is None and time.time() < deadline, "the first trainer never hung"
      time.sleep(0.2)
    second = run_toy(tmp_path, overrides)
    assert second.returncode != 0
    assert "is in use by another trainer" in second.stderr
    assert f"pid {first.pid}" in second.stderr
  finally:
    first.kill()
    first.wait()
  assert (tmp_path / "trainer.lock").exists()  # left behind by the killed trainer
  third = run_toy(tmp_path, overrides)
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Taking over the workdir lock" in third.stderr
  assert "Start at step 0 (from scratch)" in third.stderr  # step 30 was never committed
  assert committed_steps(tmp_path) == [30, 60]
  assert not (tmp_path / "trainer.lock").exists()  # released at the end


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (needs root and mount rights, as the CI machine has)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  proc = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
      capture_output=True,
      text=True,
      check=False,
  )
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_stops_the_run_at_the_failed_save_and_loses_nothing(small_disk):
  workdir, overrides = small_disk / "w", {
      "total_steps": 400,
      "checkpoint.every_steps": 10,
      "log_every_steps": 5,
  }
  assert run_toy(workdir, overrides, stop_at=10).returncode == 0
  free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
  (small_disk / "fill").write_bytes(b"\0" * (free - 100 * 1024))  # room for logs, not a save
  full = run_toy(workdir, overrides)
  assert full.returncode != 0
  last = full.stderr.strip().splitlines()[-1]
  assert "CheckpointSaveError: Saving the checkpoint of step 20" in last, last
  assert "No space left on device" in last and "GiB free there" in last
  assert "The last committed checkpoint, step 10, is intact" in last
  logged = [int(m) for m in re.findall(r"\]\s+(\d+)/400 loss", full.stderr)]
  assert logged and max(logged) <= 30, logged  # stopped at the latest when step 30's save waits
  assert full.stderr.count("Save Finalize thread (save_finalize) failed") <= 1
  (small_disk / "fill").unlink()
  resumed = run_toy(workdir, {**overrides, "total_steps": 30})
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Start at step 10 (resumed from" in resumed.stderr
  assert committed_steps(workdir) == [20, 30]
