"""Orbax checkpoints of the train state, the data iterator and the config; preemption.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`. Orbax writes each step to a
`<step>.orbax-checkpoint-tmp-*` directory and renames it when every process has finished
(atomic commit); uncommitted directories are never listed as steps and are deleted when a
manager is created.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from imagen_jax.parallel import multihost
from imagen_jax.storage import paths as storage_paths
from imagen_jax.train import save_echoes

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "data", "config")


class CheckpointSaveError(OSError):
  """An asynchronous save failed (full disk, lost bucket access); nothing committed is lost."""


def check_writable(workdir: str | os.PathLike) -> epath.Path:
  """Creates `<workdir>/checkpoints` and writes a probe file, or raises a clear error now."""
  path = storage_paths.path(workdir) / CHECKPOINT_DIR
  probe = path / f".write_probe_{jax.process_index()}_{uuid.uuid4().hex}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(
        f"The workdir {str(workdir)!r} is not writable ({type(e).__name__}: {e}); "
        "checkpoints could not be saved. Fix the path or permissions before training."
    ) from e
  return path


def abstract_of(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding (the restore target)."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class PreemptionWatcher:
  """SIGTERM sets a flag instead of killing the process; `stop_requested` is the loop's test.

  `reached_preemption(step)`: Orbax/JAX's preemption sync point (TPU and multi-process runs
  with the service on), when given.
  """

  def __init__(
      self,
      signals: tuple[int, ...] = (signal.SIGTERM,),
      *,
      reached_preemption: Callable[[int], bool] | None = None,
  ):
    self._event = threading.Event()
    self._previous = {}
    self._reached_preemption = reached_preemption
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # noqa: ARG002 (signal handler signature)
    logging.warning("Received signal %d: will checkpoint at the current step and exit.", signum)
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def request(self) -> None:
    self._event.set()

  def stop_requested(self, step: int, *, collective: bool) -> bool:
    """Whether the run should checkpoint and stop after `step`, the same on every process.

    One process reads its own flag every step; several agree (`any_process`, a collective)
    only at `collective` steps, which every process must reach together (logs, saves).
    """
    if jax.process_count() == 1:
      requested = self.requested
    else:
      requested = collective and multihost.any_process(self.requested)
    return requested or bool(self._reached_preemption and self._reached_preemption(step))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


class Checkpointer:
  """Wraps `ocp.CheckpointManager` for the train state + iterator state + config."""

  def __init__(
      self,
      workdir: str | os.PathLike,
      *,
      every_steps: int,
      keep: int,
      async_save: bool = True,
      read_only: bool = False,
  ):
    self.directory = storage_paths.path(workdir) / CHECKPOINT_DIR
    self._every = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1),
        max_to_keep=int(keep),
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=bool(async_save),
        read_only=read_only,
    )
    self._mngr = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
    self._last_saved = self._mngr.latest_step()
    self._in_flight = None  # the step of a started save not yet known to have committed
    self._failed = False
    self._echoes = save_echoes.SaveEchoes()
    self._echoes.install()

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    """Every `every_steps` steps (no save at step 0 or 1 by default)."""
    return step > 0 and step % self._every == 0

  def reached_preemption(self, step: int) -> bool:
    """Orbax/JAX preemption sync point (TPU and multi-process runs with the service on)."""
    return self._mngr.reached_preemption(step)

  def save(
      self,
      step: int,
      state: Any,
      *,
      data_state: Any = None,
      config: dict | None = None,
      force: bool = False,
  ) -> bool:
    """Starts a (possibly async) save when it is due; a collective, call on every process.

    The one save gate: a step is saved when `force` is set or it is a multiple of
    `every_steps`, and only once. `state` (and `data_state`) may be zero-argument functions,
    called only when the step is saved. `data_state` is this process's iterator state; every
    process's state is gathered and stored as `{"process_count": n, "states": [...]}`.
    """
    if not force and not self.should_save(step):
      return False
    if step == self._last_saved or step in self._mngr.all_steps():
      return False
    if self._in_flight is not None:  # Orbax waits for it too; its failure is ours to report
      self._finish_in_flight()
    state, data_state = (x() if callable(x) else x for x in (state, data_state))
    data = {"process_count": jax.process_count(), "states": multihost.allgather_json(data_state)}
    saved = self._mngr.save(
        step,
        force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(config or {}),
        ),
    )
    if saved:
      self._last_saved = self._in_flight = step
      logging.info("Checkpoint for step %d started (%s).", step, self.directory)
    return saved

  def check_for_errors(self) -> None:
    """CheckpointSaveError once the last started save has failed; cheap (call every step)."""
    if self._in_flight is not None and not self._mngr.is_saving_in_progress():
      self._finish_in_flight()

  def _finish_in_flight(self) -> None:
    step, self._in_flight = self._in_flight, None
    try:
      self._mngr.wait_until_finished()  # at once when the save is over; raises its error
    except Exception as e:  # pylint: disable=broad-except  # whatever the storage raised
      self._failed = True
      self._echoes.failed()
      raise CheckpointSaveError(self._failure_message(step, e)) from None

  def _failure_message(self, step: int, error: Exception) -> str:
    reason = " ".join(str(error).split())
    reason = reason if len(reason) <= 500 else f"{reason[:240]} ... {reason[-240:]}"  # the OS
    # error (e.g. "No space left on device") ends tensorstore's messages
    space = ""
    if not storage_paths.is_remote(self.directory):
      try:
        space = f" {shutil.disk_usage(os.fspath(self.directory)).free / 2**30:.2f} GiB free there."
      except OSError:
        pass
    committed = [s for s in self._mngr.all_steps() if s != step]
    last = (
        f"The last committed checkpoint, step {max(committed)}, is intact"
        if committed
        else "No checkpoint was committed before it"
    )
    return (
        f"Saving the checkpoint of step {step} to {self.directory} failed "
        f"({type(error).__name__}: {reason}).{space} {last}; free space (or fix the "
        "bucket's access) and rerun the same command to resume."
    )

  def restore(
      self, step: int | None, abstract_state: Any, *, reshard: Callable[[list], Any] | None = None
  ) -> tuple[Any, Any]:
    """Returns `(state, this process's data state or None)` at `step` (default: latest);
    `reshard`: see `_own_data_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    out = self._mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
    )
    return out.state, _own_data_state(out.data, reshard)

  def restore_params(self, step: int | None, abstract_params: Any, *, field: str = "params") -> Any:
    """Only `state.<field>` ("params" or "ema_params"); other items are not read."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if field not in ("params", "ema_params"):
      raise ValueError(f"field={field!r}; expected 'params' or 'ema_params'")
    item = {field: abstract_params}
    restored = self._mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        ),
    )
    return restored.state[field]

  def restore_config(self, step: int | None = None) -> dict:
    """The config (JSON) saved with checkpoint `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    out = self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out.config

  def wait(self) -> None:
    """Blocks until the last save has committed; CheckpointSaveError if it failed."""
    if self._in_flight is not None:
      self._finish_in_flight()
    self._mngr.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save and closes; a failure already raised is not raised again."""
    reported = self._failed
    try:
      self.wait()
    except Exception:  # pylint: disable=broad-except  # the failure's echo in Orbax's wait
      if not reported:
        raise
    finally:
      self._echoes.uninstall()
      try:
        self._mngr.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise


def _own_data_state(data: Any, reshard: Callable[[list], Any] | None = None) -> Any:
  """This process's iterator state; from a run with another process count, `reshard(every
  old process's state)` when the iterator can (`InputIterator.reshard_state`)."""
  if not data or not data.get("states"):
    return None
  states = data["states"]
  if data.get("process_count") == jax.process_count():
    return states[jax.process_index()]
  if reshard is not None:
    try:
      state = reshard(states)
    except (ValueError, KeyError, TypeError) as e:
      logging.warning("Could not reshard the iterator states (%s).", e)
    else:
      logging.info(
          "Iterator states of %s processes resharded to %d.", len(states), jax.process_count()
      )
      return state
  logging.warning(
      "Checkpoint has iterator states of %s processes, this run has %d; the data "
      "iterators start fresh.",
      data.get("process_count"),
      jax.process_count(),
  )
  return None


def checkpointer_at(path: str) -> tuple[Checkpointer, int | None]:
  """A read-only Checkpointer for `path` = a workdir, its `checkpoints/` dir, or a step dir."""
  p = storage_paths.path(path)
  step = None
  if p.name.isdigit() and p.parent.exists():
    step, p = int(p.name), p.parent
  if (p / CHECKPOINT_DIR).exists():
    p = p / CHECKPOINT_DIR
  workdir = p.parent if p.name == CHECKPOINT_DIR else p
  if p.name != CHECKPOINT_DIR:
    raise FileNotFoundError(f"No {CHECKPOINT_DIR}/ directory at {path!r}.")
  return Checkpointer(workdir, every_steps=1, keep=1, read_only=True), step


def restore_or_initialize(
    ckpt: Checkpointer,
    config: Any,
    abstract_state: Any,
    init_fn: Callable[[], Any],
    *,
    reshard: Callable[[list], Any] | None = None,
) -> tuple[Any, Any, str]:
  """Resume order: workdir latest -> `config.resume_from` -> `config.init_from` -> scratch.

  Returns `(state, data_state or None, description)`. `init_fn()` builds a fresh sharded state;
  `reshard` converts iterator states saved by another number of processes.
  """
  latest = ckpt.latest_step()
  if latest is not None:
    state, data_state = ckpt.restore(latest, abstract_state, reshard=reshard)
    return state, data_state, f"resumed from {ckpt.directory} step {latest}"
  resume_from = config.get("resume_from") if hasattr(config, "get") else None
  if resume_from:
    other, step = checkpointer_at(resume_from)
    state, data_state = other.restore(step, abstract_state, reshard=reshard)
    other.close()
    return state, data_state, f"resumed from {resume_from} step {int(jax.device_get(state.step))}"
  init_from = config.get("init_from") if hasattr(config, "get") else None
  other, step = checkpointer_at(init_from) if init_from else (None, None)  # a bad path: now
  state = init_fn()
  if other is not None:
    params = other.restore_params(step, abstract_of(state.params))
    other.close()
    state = state.replace(params=params, ema_params=jax.tree.map(lambda x: x.copy(), params))
    return state, None, f"params from {init_from}; fresh optimizer state"
  return state, None, "from scratch"
