"""One trainer per workdir: `<workdir>/trainer.lock`, held by the job's primary process.

Two trainers writing the same checkpoints corrupt each other (both commit into one Orbax
temporary directory), so a second one is refused at start, naming the holder. The lock is one
per job, not per process: the primary process takes it and every process learns the outcome
(a collective). It holds the holder's host, pid, start time and a heartbeat, which a daemon
thread refreshes every `refresh_s`; it is removed on exit. A lock left by a dead trainer is
taken over: on the same host when its pid is gone, from any host when its heartbeat is older
than `stale_after_s` (a killed job on a recreated VM, a crashed pod).

Local workdirs write the record to a private file and hard-link it into place (exclusive and
never torn); on object stores (gs://) the file is
written and read back, so two trainers starting in the same instant leave one holder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from imagen_jax.parallel import multihost
from imagen_jax.storage import paths as storage_paths

LOCK_NAME = "trainer.lock"


class WorkdirLocked(RuntimeError):
  """Another live trainer holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


class WorkdirLock:
  """`acquire()` on every process (a collective), `release()` at the end."""

  def __init__(self, workdir: str, *, stale_after_s: float = 300.0, refresh_s: float = 60.0):
    self.path = storage_paths.path(workdir) / LOCK_NAME
    self.remote = storage_paths.is_remote(workdir)
    self.stale_after_s, self.refresh_s = float(stale_after_s), float(refresh_s)
    self.token = uuid.uuid4().hex
    self.record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": self.token,
        "started": time.time(),
    }
    self._held = False
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> None:
    error = None
    if multihost.is_primary():
      try:
        self._take()
      except WorkdirLocked as e:
        error = e
    if multihost.any_process(error is not None):
      raise error or WorkdirLocked(f"The primary process could not lock {self.path}; see its log.")
    if self._held:
      self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if self._held:
      self._held = False
      try:
        if self._read_token() == self.token:
          self.path.unlink()
      except OSError as e:  # the run's result matters more than the lock file
        logging.warning("Could not remove the workdir lock %s: %s", self.path, e)

  def _take(self) -> None:
    for _ in range(3):
      holder = self._holder()
      if holder is not None and not self._stale(holder):
        age = time.time() - float(holder.get("heartbeat", holder.get("started", 0)))
        raise WorkdirLocked(
            f"The workdir {str(self.path.parent)!r} is in use by another trainer (host "
            f"{holder.get('host')!r}, pid {holder.get('pid')}, started "
            f"{time.ctime(float(holder.get('started', 0)))}, heartbeat {age:.0f} s ago; "
            f"lock file {self.path}). Stop it or use another workdir; if it is gone, delete "
            f"the lock file (a lock whose heartbeat is older than {self.stale_after_s:.0f} s "
            "is taken over)."
        )
      if holder is not None:
        logging.warning(
            "Taking over the workdir lock %s of a trainer that is gone: %s", self.path, holder
        )
        self.path.unlink(missing_ok=True)
      if self._create() and self._read_token() == self.token:
        self._held = True
        return
    raise WorkdirLocked(
        f"Could not take the workdir lock {self.path}: another trainer is "
        "taking it at the same time."
    )

  def _holder(self) -> dict | None:
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except ValueError:  # a torn or foreign file: treat as a lock of unknown age
      return {"host": "?", "pid": None, "started": self.path.stat().mtime}

  def _stale(self, holder: dict) -> bool:
    beat = float(holder.get("heartbeat", holder.get("started", 0)))
    if time.time() - beat > self.stale_after_s:
      return True
    pid = holder.get("pid")
    return holder.get("host") == self.record["host"] and isinstance(pid, int) and not _alive(pid)

  def _payload(self) -> str:
    return json.dumps({**self.record, "heartbeat": time.time()})

  def _create(self) -> bool:
    if self.remote:
      self.path.write_text(self._payload())
      return True
    # The whole record goes to a private file first, then is linked into place (atomic, and
    # refused if the lock exists): a trainer killed (or a disk full) mid-write never leaves a
    # torn lock that would block restarts until it is stale.
    path = os.fspath(self.path)
    tmp = f"{path}.{self.token}.tmp"
    try:
      with open(tmp, "x") as f:
        f.write(self._payload())
      os.link(tmp, path)
    except FileExistsError:
      return False
    finally:
      try:
        os.unlink(tmp)
      except FileNotFoundError:
        pass
    return True

  def _read_token(self) -> str | None:
    holder = self._holder()
    return None if holder is None else holder.get("token")

  def _beat(self) -> None:
    while not self._stop.wait(self.refresh_s):
      try:
        storage_paths.write_atomic(self.path, self._payload())
      except OSError as e:
        logging.warning("Could not refresh the workdir lock %s: %s", self.path, e)
