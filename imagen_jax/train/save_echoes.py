"""Quiets the echoes of one failed asynchronous Orbax save, so that its error is read once.

When a write fails (full disk, lost bucket access), Orbax ends its event loop with the
other writes of that save still pending. Their remains then report the same failure again,
from other threads and at any time up to interpreter shutdown, after the trainer's own
`CheckpointSaveError` has been printed:

- Orbax's error log records, each with a traceback (while a Checkpointer is open: their
  one-line message is kept, the traceback dropped);
- asyncio's "exception was never retrieved" records of the pending writes;
- tensorstore's write callbacks, which report `RuntimeError: Event loop is closed` (as an
  unraisable exception, or through `sys.excepthook`) when they resume a write on the closed
  loop;
- the pending write coroutines, finalized by the garbage collector (`sys.unraisablehook`,
  at shutdown with `ImportError: sys.meta_path is None`).

`SaveEchoes.install()` filters the log records for an open Checkpointer and hooks the last
two for the process (once): until a save has failed, the first report of each kind passes
and later ones are dropped; once `failed()` (the save's error is being raised) none pass,
for the rest of the process, and the log says so before the error. Anything that is not
this debris passes unchanged.
"""

from __future__ import annotations

import atexit
import collections
import gc
import logging as logging_std
import sys
import threading
import types

_LOGGERS = ("absl", "asyncio")


def _in_orbax(path: str) -> bool:
  return "/orbax/" in path.replace("\\", "/")


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
  """tensorstore resuming a write on a closed loop: asyncio's `_check_closed` raised."""
  if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
    return False
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def _is_orphaned_write(obj) -> bool:
  """A pending Orbax write coroutine, finalized after its loop closed."""
  return isinstance(obj, types.CoroutineType) and _in_orbax(obj.cr_code.co_filename)


class _Debris:
  """The process-wide part: `sys.excepthook` / `sys.unraisablehook` wrappers (installed once)."""

  def __init__(self):
    self.failed = False
    self.seen = collections.Counter()
    self._lock = threading.Lock()
    self._installed = False

  def admit(self, kind: str) -> bool:
    """Whether this report of `kind` is printed: the first before any failure, else none."""
    with self._lock:
      self.seen[kind] += 1
      return not self.failed and self.seen[kind] == 1

  def install(self) -> None:
    with self._lock:
      if self._installed:
        return
      self._installed = True
    previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc, tb):
      if not _is_closed_loop_callback(exc_type, exc, tb) or self.admit("closed_loop"):
        previous_excepthook(exc_type, exc, tb)

    def unraisablehook(unraisable):
      kind = None
      if _is_orphaned_write(unraisable.object):
        kind = "orphaned_write"
      elif _is_closed_loop_callback(
          unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
      ):
        kind = "closed_loop"
      if kind is None or self.admit(kind):
        previous_unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    atexit.register(gc.collect)  # finalize orphaned writes while imports and hooks still work


_DEBRIS = _Debris()


class SaveEchoes(logging_std.Filter):
  """One Checkpointer's log filter, and the process hooks; see the module docstring."""

  def __init__(self):
    super().__init__()
    self._failed = False
    self._unretrieved = 0

  def install(self) -> None:
    for name in _LOGGERS:
      logging_std.getLogger(name).addFilter(self)
    _DEBRIS.install()

  def uninstall(self) -> None:
    """At close: the filter stays for the rest of the process once a save has failed."""
    if not self._failed:
      for name in _LOGGERS:
        logging_std.getLogger(name).removeFilter(self)

  def filter(self, record):
    if record.name == "asyncio" and "never retrieved" in str(record.msg):
      self._unretrieved += 1
      return not self._failed and self._unretrieved == 1
    if record.levelno >= logging_std.ERROR and _in_orbax(record.pathname):
      record.exc_info, record.exc_text = None, None
    return True

  def failed(self) -> None:
    """The save's error is being raised: its debris is not printed from now on."""
    self._failed = _DEBRIS.failed = True
    logging_std.getLogger("absl").warning(
        "The failed save's pending writes may report the same failure again; those reports "
        "are not printed."
    )
