"""One trainer per workdir: a live holder refuses another trainer before it writes anything;
locks of trainers that are gone are taken over. (Two real trainers racing: loop_test.)"""

import json
import os
import socket
import subprocess
import time

import pytest

from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import loop, toy_task
from imagen_jax.train import workdir_lock


def committed_steps(workdir):
  ckpt, _ = ckpt_lib.checkpointer_at(str(workdir))
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def _write_lock(workdir, **record):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(record))


def _dead_pid():
  child = subprocess.Popen(["true"])
  child.wait()
  return child.pid


def test_live_holder_refuses_before_anything_is_written(tmp_path):
  holder = workdir_lock.WorkdirLock(str(tmp_path))
  holder.acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
      loop.train(toy_task.toy_config(total_steps=2), str(tmp_path), toy_task.toy_task_factory)
    assert not (tmp_path / "config.json").exists()
  finally:
    holder.release()
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


# (host, pid, seconds since the heartbeat): times are taken when the test runs, not when it is
# collected (a default run takes minutes).
@pytest.mark.parametrize(
    "host, pid, age, taken_over",
    [
        (socket.gethostname(), "dead", 0, True),  # same host, its process is gone
        ("other-vm", 1, 0, False),  # another host, a fresh heartbeat: alive
        ("other-vm", 1, 3600, True),  # another host, silent for an hour
    ],
)
def test_stale_locks_are_taken_over(tmp_path, host, pid, age, taken_over):
  now = time.time()
  holder = dict(
      host=host, pid=_dead_pid() if pid == "dead" else pid, started=now - age, heartbeat=now - age
  )
  _write_lock(tmp_path, **holder)
  config = toy_task.toy_config(total_steps=2, log_every_steps=1)
  if not taken_over:
    with pytest.raises(workdir_lock.WorkdirLocked, match="host 'other-vm'"):
      loop.train(config, str(tmp_path), toy_task.toy_task_factory)
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text()) == holder
    return
  loop.train(config, str(tmp_path), toy_task.toy_task_factory)
  assert committed_steps(tmp_path) == [2]
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_a_write_cut_short_leaves_no_torn_lock(tmp_path, monkeypatch):
  """A trainer killed (or a disk full) while writing its record must not leave an empty lock
  that blocks every restart until it is stale (the reliability probe's finding)."""
  lock = workdir_lock.WorkdirLock(str(tmp_path))

  def cut_short():
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(lock, "_payload", cut_short)
  with pytest.raises(OSError, match="No space left"):
    lock.acquire()
  assert sorted(p.name for p in tmp_path.iterdir()) == []
  monkeypatch.undo()
  restart = workdir_lock.WorkdirLock(str(tmp_path))
  restart.acquire()  # at once, not after stale_after_s
  try:
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
  finally:
    restart.release()
