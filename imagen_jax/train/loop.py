"""`train_and_evaluate(config, workdir)`: one cascade stage, one CPU to a multi-host pod.

The loop is generic over a `TrainTask` (imagen_jax.train.task: init, loss, data, host->device
conversion, sampling) and a `Placement` (imagen_jax.parallel.placement: jit with shardings or
pmap), so it has no branch on either. `stage_task.build_stage_task` makes the cascade
stage's task; tests pass their own factory to `train`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from imagen_jax import config_check
from imagen_jax import config_lib
from imagen_jax.evaluation import evaluators as evaluators_lib
from imagen_jax.parallel import batch as batch_lib
from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import multihost
from imagen_jax.parallel import placement as placement_lib
from imagen_jax.storage import paths as storage_paths
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import classifier_task
from imagen_jax.train import clip_task
from imagen_jax.train import flops as flops_lib
from imagen_jax.train import metrics as metrics_lib
from imagen_jax.train import optim
from imagen_jax.train import prior_task
from imagen_jax.train import stage_task
from imagen_jax.train import state as state_lib
from imagen_jax.train import step as step_lib
from imagen_jax.train import workdir_lock
from imagen_jax.train.task import TaskFactory, TrainingHalted, TrainTask


def train(
    config: Any, workdir: str, task_factory: TaskFactory, *, stop_at: int | None = None
) -> state_lib.TrainState:
  """Trains to `config.total_steps` (or `stop_at`, saving there as a preemption would).

  Returns the final state (global arrays; host arrays under pmap).
  """
  ckpt_lib.check_writable(workdir)
  mesh = mesh_lib.create_mesh(config.parallel.mesh)
  placement = placement_lib.for_config(config.parallel, mesh)
  task = task_factory(config, mesh, batch_lib.check_batch_size(int(config.batch_size), mesh))
  total_steps = int(config.total_steps)
  stop_at = total_steps if stop_at is None else min(int(stop_at), total_steps)
  tx, lr_schedule = optim.make_optimizer(config.optim, total_steps)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  spec = state_lib.state_spec(placement, task.init_variables, tx, init_rng, state_rng)
  logging.info("Model has %d parameters.", spec.num_params)

  run = _Run(config, workdir, task, placement, spec)
  try:
    state, step = run.restore_or_init(init_rng, state_rng)
    if step >= total_steps:
      logging.info("Nothing to do: step %d >= total_steps %d.", step, total_steps)
      return state
    state = placement.put_state(state)
    batch = run.next_batch()
    train_step = run.compile(
        step_lib.make_train_step(
            task.loss_fn,
            tx,
            ema_decay=float(config.ema.decay),
            ema_warmup=bool(config.ema.warmup),
            lr_schedule=lr_schedule,
        ),
        state,
        batch,
        step,
    )

    while step < stop_at:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = run.next_batch() if batch is None else batch
        if batch is None:
          logging.warning("The input pipeline is exhausted after step %d.", step)
          run.save(step, state, force=True)
          break
        state, metrics = train_step(state, batch)
        batch = None
      step += 1
      run.pending.append(metrics)
      run.ckpt.check_for_errors()  # a failed asynchronous save stops the run here

      is_log = _every(step, config.log_every_steps, total_steps)
      final = step in (stop_at, total_steps)
      due = run.ckpt.should_save(step)
      stop = run.watcher.stop_requested(step, collective=is_log or due or final)
      if is_log or due or final or stop:
        host = run.flush()
        if is_log:
          run.log(step, host)
      run.save(step, state, force=stop or final)
      if stop or step == stop_at < total_steps:
        run.ckpt.wait()
        logging.info(
            "Preempted at step %d: checkpoint saved to %s; exiting.", step, run.ckpt.directory
        )
        break
      run.evaluate(step, state)
      run.write_samples(step, state)

    run.finish(step)
    return placement.result(state)
  finally:
    run.close()


def train_and_evaluate(config: Any, workdir: str) -> state_lib.TrainState:
  """Trains the stage described by `config` in `workdir` (resuming if possible)."""
  config_check.validate(config)  # the one validation gate, after command-line overrides
  factories = {
      "diffusion": stage_task.build_stage_task,
      "classifier": classifier_task.build_classifier_task,
      "clip": clip_task.build_clip_task,
      "prior": prior_task.build_prior_task,
  }
  return train(config, workdir, factories[config_lib.get(config, "task", "diffusion")])


def _every(step: int, every: int | None, total: int) -> bool:
  """Logging and sample grids: on every multiple of `every` and on the last step."""
  return config_lib.itstime(step, every, total, first=False, drop_close=0.0)


def _config_dict(config: Any) -> dict:
  return (
      json.loads(config.to_json_best_effort())
      if hasattr(config, "to_json_best_effort")
      else dict(config)
  )


class _Run:
  """One run's services around the step: data, compile, metrics, saves, evals, samples."""

  def __init__(
      self,
      config: Any,
      workdir: str,
      task: TrainTask,
      placement: placement_lib.JitPlacement,
      spec: state_lib.StateSpec,
  ):
    self.config, self.task, self.placement, self.spec = config, task, placement, spec
    self.workdir = storage_paths.path(workdir)
    self.total_steps = int(config.total_steps)
    self.config_dict = _config_dict(config)
    self.evaluators = _make_evaluators(config, task)
    self.put_batch = placement.batch_putter(task.preprocess, task.frozen_params)
    self.lock = workdir_lock.WorkdirLock(workdir)
    self.lock.acquire()  # before anything is written
    self.ckpt = self.watcher = self.writer = None
    try:
      if multihost.is_primary():
        (self.workdir / "config.json").write_text(json.dumps(self.config_dict, indent=2))
      self.ckpt = ckpt_lib.Checkpointer(
          workdir,
          every_steps=int(config.checkpoint.every_steps),
          keep=int(config.checkpoint.keep),
          async_save=bool(config.checkpoint.get("async_save", True)),
      )
      self.watcher = ckpt_lib.PreemptionWatcher(reached_preemption=self.ckpt.reached_preemption)
      self.writer = metrics_lib.MetricWriter(workdir)
      every = int(config.get("sample_every_steps") or 0)
      logging.info(
          "TensorBoard: tensorboard --logdir %s (scalars%s)",
          workdir,
          f"; sample grids every {every} steps, also as PNGs in {self.workdir / 'samples'}"
          if every and self._grid_fn() is not None
          else "",
      )
    except BaseException:
      self.close()
      raise
    self.pending: list[dict] = []
    self.summary: dict = {}
    self.flops = None
    self.skipped = 0
    self._first_pending = self._last_log_step = 0
    self._last_log_time = time.time()
    self._sample_rng = jax.random.PRNGKey(int(config.seed) + 1)

  def restore_or_init(self, init_rng, state_rng) -> tuple[Any, int]:
    init = jax.jit(self.spec.init, out_shardings=self.spec.shardings)
    state, data_state, how = ckpt_lib.restore_or_initialize(
        self.ckpt,
        self.config,
        self.spec.abstract,
        lambda: init(init_rng, state_rng),
        reshard=getattr(self.task.iterator, "reshard_state", None),
    )
    if data_state is not None:
      self.task.iterator.set_state(data_state)
    step = int(jax.device_get(state.step))
    self._first_pending = self._last_log_step = step
    logging.info("Start at step %d (%s).", step, how)
    return state, step

  def next_batch(self) -> dict | None:
    """The next device batch, or None when the input pipeline is exhausted."""
    try:
      host = next(self.task.iterator)
    except StopIteration:
      return None
    return self.put_batch(self.task.host_to_numeric(host))

  def compile(self, step_body, state, batch, step: int):
    """The compiled step (FLOPs and memory logged); every process passes a barrier after."""
    if batch is None:
      raise ValueError(f"The input pipeline {self.config.input.get('dataset')!r} yielded no batch.")
    start = time.time()
    lowered = self.placement.lower_step(step_body, self.spec.shardings, state, batch)
    compiled = lowered.compile()
    self.flops = flops_lib.step_flops_per_device(lowered, compiled, self.placement.flops_devices)
    logging.info(
        "Compiled the train step in %.1f s; %s",
        time.time() - start,
        flops_lib.memory_summary(compiled),
    )
    logging.info(
        "Step FLOPs per device (XLA cost analysis, lowered step): %s; peak %s TFLOP/s (%s).",
        f"{self.flops:.3g}" if self.flops else "n/a",
        flops_lib.peak_tflops() or "n/a",
        jax.devices()[0].device_kind,
    )
    multihost.barrier(f"imagen_jax_train_step_compiled_{step}")
    self._last_log_time = time.time()
    return compiled

  def flush(self) -> list[dict]:
    """Reads the pending step metrics (the only host sync); applies `config.nonfinite` and
    `config.nonfinite_max_skips` (0: no bound)."""
    host = self.placement.host_metrics(self.pending)
    for i, m in enumerate(host):
      if m["nonfinite"] > 0:
        bad_step = self._first_pending + i + 1
        what = next(
            (
                f"{k} ({m[k]})"
                for k in ("loss", "grad_norm", "update_norm")
                if not np.isfinite(m[k])
            ),
            "value",
        )
        if self.config.nonfinite == "halt":
          raise TrainingHalted(f"Non-finite {what} at step {bad_step}; config.nonfinite='halt'.")
        skipped = int(m["skipped_total"])
        logging.warning(
            "Skipped step %d: non-finite %s (%d steps skipped so far).", bad_step, what, skipped
        )
        bound = int(self.config.get("nonfinite_max_skips") or 0)
        if bound and skipped > bound:
          raise TrainingHalted(
              f"{skipped} steps skipped (non-finite), more than "
              f"config.nonfinite_max_skips={bound}; the last at step "
              f"{bad_step}: non-finite {what}."
          )
    if host:
      self.skipped = int(host[-1]["skipped_total"])
    self.pending, self._first_pending = [], self._first_pending + len(host)
    return host

  def log(self, step: int, host: list[dict]) -> None:
    now = time.time()
    rate = (step - self._last_log_step) / max(now - self._last_log_time, 1e-9)
    self._last_log_time, self._last_log_step = now, step
    summary = metrics_lib.mean_metrics(host)
    summary.update(
        steps_per_sec=rate,
        images_per_sec=rate * int(self.config.batch_size),
        skipped_total=host[-1]["skipped_total"],
        bad_examples=sum(float(h["bad_examples"]) for h in host),
        **flops_lib.throughput(self.flops, rate),
    )
    skipped_records = getattr(self.task.iterator, "num_skipped", None)
    if skipped_records is not None:  # records the input pipeline skipped, every process's
      summary["input/skipped_records"] = multihost.sum_over_processes([skipped_records])[0]
    self.writer.write_scalars(step, summary)
    self.writer.flush()
    self.summary = dict(summary)
    metrics_lib.log_console(metrics_lib.console_line(step, self.total_steps, summary))

  def save(self, step: int, state: Any, *, force: bool) -> None:
    """Saves `step` when the checkpointer's gate says so (`force`: now)."""
    self.ckpt.save(
        step,
        lambda: self.placement.checkpoint_state(state, self.spec.shardings),
        data_state=self.task.iterator.get_state,
        config=self.config_dict,
        force=force,
    )

  def evaluate(self, step: int, state: Any) -> None:
    due = [
        (name, ev)
        for name, ev, every in self.evaluators
        if config_lib.itstime(step, every, self.total_steps)
    ]
    if not due:
      return
    ema = self.placement.unplaced(state.ema_params)
    for name, evaluator in due:
      scalars = {f"{name}/{k}": v for k, v in evaluator.run(ema)}
      self.writer.write_scalars(step, scalars)
      self.writer.flush()
      self.summary.update(scalars)
      logging.info(
          "eval %s at step %d: %s",
          name,
          step,
          ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
      )

  def _grid_fn(self) -> Callable[[Any, jax.Array], Any] | None:
    """The task's `grid_fn`, else its `sample_fn` on its `sample_prompts`; None: no grids."""
    if self.task.grid_fn is not None:
      return self.task.grid_fn
    prompts = list(self.task.sample_prompts)
    if self.task.sample_fn is None or not prompts:
      return None
    return lambda params, rng: self.task.sample_fn(params, prompts, rng)

  def write_samples(self, step: int, state: Any) -> None:
    grid_fn = self._grid_fn()
    if grid_fn is None or not _every(step, self.config.get("sample_every_steps"), self.total_steps):
      return
    ema = self.placement.unplaced(state.ema_params)
    rng = jax.random.fold_in(self._sample_rng, step)
    images = _host_uint8(grid_fn(ema, rng))
    factor = max(1, GRID_MIN_SIDE // images.shape[1])  # small images, nearest-upscaled
    images = np.repeat(np.repeat(images, factor, 1), factor, 2)
    grid = metrics_lib.image_grid(images, ncols=min(8, len(images)))
    if multihost.is_primary():
      out = self.workdir / "samples"
      out.mkdir(parents=True, exist_ok=True)
      metrics_lib.save_png(out / f"step_{step:08d}.png", grid)
    self.writer.write_images(step, {"samples": grid})
    self.writer.flush()

  def finish(self, step: int) -> None:
    self.ckpt.wait()
    if self.skipped:
      logging.warning(
          "%d of the %d steps trained were skipped (non-finite loss, gradient or "
          "update norm; config.nonfinite=%r).",
          self.skipped,
          step,
          self.config.nonfinite,
      )
    if step == self.total_steps and multihost.is_primary():  # read by sweep summaries
      (self.workdir / "final_metrics.json").write_text(
          json.dumps(
              {"step": step, **self.summary, "skipped_steps": self.skipped}, indent=2, default=float
          )
      )

  def close(self) -> None:
    try:
      for service in (self.ckpt, self.writer, self.watcher):
        if service is not None:
          service.close()
      if hasattr(self.task.iterator, "close"):
        self.task.iterator.close()
    finally:
      self.lock.release()


GRID_MIN_SIDE = 64  # sample grids show each image at least this many pixels wide


def _host_uint8(images: Any) -> np.ndarray:
  images = np.asarray(jax.device_get(images))
  return images if images.dtype == np.uint8 else metrics_lib.to_uint8(images)


def _make_evaluators(config: Any, task: TrainTask) -> list[tuple[str, Any, int]]:
  """`config.evals` -> [(name, evaluator, log_steps)]; each `evaluator.run(ema_params)`
  samples its captions through the task's one sampler."""
  if not config.get("evals"):
    return []
  if task.sample_fn is None:
    raise ValueError(
        f"config.evals={list(config.evals)} needs a stage that samples from "
        "captions alone (a base stage); evaluate SR stages in the cascade "
        "(scripts/eval_fid.py)."
    )

  def predict(params, captions, seed):
    return _host_uint8(task.sample_fn(params, list(captions), jax.random.PRNGKey(int(seed))))

  return evaluators_lib.from_config(config.evals, predict)
