"""`train_and_evaluate(config, workdir)`: one cascade stage, one CPU to a multi-host pod.

The loop is generic over a `TrainTask` (init, loss, data, host->device conversion, sampling);
`build_stage_task` makes one from the config with the stage pipeline, the frozen text encoder
and the input pipeline. Tests pass their own task factory to `train`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.core import meta
from jax.sharding import Mesh, NamedSharding

from imagen_jax import config_lib
from imagen_jax.parallel import batch as batch_lib
from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import multihost
from imagen_jax.parallel import pmap_step
from imagen_jax.parallel import sharding as sharding_lib
from imagen_jax.storage import paths as storage_paths
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import flops as flops_lib
from imagen_jax.train import metrics as metrics_lib
from imagen_jax.train import optim
from imagen_jax.train import step as step_lib
from imagen_jax.train.state import TrainState, create_train_state

MODES = ("pjit", "pmap")


@dataclasses.dataclass
class TrainTask:
  """What the loop trains.

  init_variables: rng -> boxed Flax variables with a `params` collection (eval_shape-able).
  loss_fn: (params, device_batch, rng) -> (loss, metrics).
  iterator: yields this process's host batches; `get_state()` / `set_state(state)`.
  host_to_numeric: host batch -> dict of numeric numpy arrays (tokenize, drop strings).
  preprocess: optional pure (frozen_params, global_batch) -> loss batch, jitted by the loop and
    run outside the gradient (frozen text encoder, caption nulling, uint8 -> [-1, 1]).
  frozen_params: the preprocess's params, already on devices (never in the optimizer).
  sample_fn: optional (ema_params, rng) -> images (uint8 or float in [-1, 1]) [N, H, W, 3].
  caption_sample_fn: optional (ema_params, captions, seed) -> uint8 images [N, H, W, 3]; what
    the `config.evals` evaluators (imagen_jax.evaluation.evaluators) sample through.
  """
  init_variables: Callable[[jax.Array], Any]
  loss_fn: step_lib.LossFn
  iterator: Iterator[dict]
  host_to_numeric: Callable[[dict], dict]
  preprocess: Callable[[Any, dict], dict] | None = None
  frozen_params: Any = None
  sample_fn: Callable[[Any, jax.Array], Any] | None = None
  caption_sample_fn: Callable[[Any, list, int], np.ndarray] | None = None


TaskFactory = Callable[[Any, Mesh, int], TrainTask]


class TrainingHalted(FloatingPointError):
  """A non-finite loss or gradient norm under `config.nonfinite = "halt"`."""


def check_resolutions(model_res: int, data_res: int | None, model_lowres: int | None = None,
                      data_lowres: int | None = None) -> None:
  """ValueError when the stage's model and data resolutions disagree."""
  if data_res is not None and int(data_res) != int(model_res):
    raise ValueError(f"The model's resolution is {model_res} but the data resolution "
                     f"(config.input.resolution) is {data_res}.")
  if data_lowres is not None and model_lowres is not None and int(data_lowres) != int(model_lowres):
    raise ValueError(f"The model's low-res input is {model_lowres} but the data's low-res "
                     f"resolution (config.input.lowres_resolution) is {data_lowres}.")


def validate_config(config: Any) -> None:
  """Cheap checks that fail before anything is built or compiled."""
  mode = config.parallel.mode
  if mode not in MODES:
    raise ValueError(f"config.parallel.mode={mode!r}; expected one of {MODES}.")
  if config.nonfinite not in step_lib.NONFINITE_POLICIES:
    raise ValueError(f"config.nonfinite={config.nonfinite!r}; expected one of "
                     f"{step_lib.NONFINITE_POLICIES}.")
  for key in ("total_steps", "batch_size", "log_every_steps"):
    if int(config[key]) <= 0:
      raise ValueError(f"config.{key} must be positive, got {config[key]}.")
  if config.optim.name not in optim.OPTIMIZERS:
    raise ValueError(f"config.optim.name={config.optim.name!r}; expected one of "
                     f"{optim.OPTIMIZERS}.")


def _config_dict(config: Any) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
      else dict(config)


def _every(step: int, every: int | None, total: int) -> bool:
  """Logging and sample grids: on every multiple of `every` and on the last step."""
  return config_lib.itstime(step, every, total, first=False, drop_close=0.0)


def _to_global(tree: Any, shardings: Any) -> Any:
  """Host values (identical on every process) -> global arrays with `shardings`."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def state_shardings(config: Any, init_variables: Callable[[jax.Array], Any], mesh: Mesh,
                    tx: Any, init_rng: jax.Array, state_rng: jax.Array):
  """(init_state(init_rng, state_rng) -> TrainState, the state's shardings, its abstract value).

  "pjit": params (and EMA params) sharded from their logical axes with FSDP over the mesh,
  optimizer state like the params it tracks; "pmap": everything replicated. Both keys are
  arguments of `init_state`, not constants in it, so runs that differ only in their seed
  compile the same initialiser (and share it through JAX's compilation cache).
  """
  def init_state(rng, step_rng):
    params = meta.unbox(init_variables(rng)["params"])
    return create_train_state(params, tx, step_rng)

  rep = sharding_lib.replicated(mesh)
  abstract_state = jax.eval_shape(init_state, init_rng, state_rng)
  if config.parallel.mode != "pjit":
    return init_state, jax.tree.map(lambda _: rep, abstract_state), abstract_state
  min_fsdp_mb = float(config.parallel.get("min_fsdp_size_mb", 4.0))
  boxed = jax.eval_shape(init_variables, init_rng)["params"]
  p_sh = sharding_lib.param_shardings(boxed, mesh, config.parallel.get("logical_rules"),
                                      min_fsdp_mb)
  opt_sh = sharding_lib.opt_state_shardings(tx, abstract_state.opt_state, abstract_state.params,
                                            p_sh, mesh, min_fsdp_mb)
  logging.info("Largest params and their shardings:\n%s",
               sharding_lib.describe(p_sh, abstract_state.params))
  state_sh = TrainState(step=rep, params=p_sh, ema_params=p_sh, opt_state=opt_sh, rng=rep,
                        skipped=rep)
  return init_state, state_sh, abstract_state


def train(config: Any, workdir: str, task_factory: TaskFactory, *,
          stop_at: int | None = None) -> TrainState:
  """Trains to `config.total_steps` (or `stop_at`, saving there as a preemption would).

  Returns the final state (global arrays in "pjit" mode, host arrays in "pmap" mode).
  """
  validate_config(config)
  ckpt_lib.check_writable(workdir)
  workdir_path = storage_paths.path(workdir)
  if multihost.is_primary():
    (workdir_path / "config.json").write_text(json.dumps(_config_dict(config), indent=2))

  mode = config.parallel.mode
  mesh = mesh_lib.create_mesh(config.parallel.mesh)
  local_batch_size = batch_lib.check_batch_size(int(config.batch_size), mesh)
  task = task_factory(config, mesh, local_batch_size)
  _check_evals(config, task)
  total_steps = int(config.total_steps)

  tx, lr_schedule = optim.make_optimizer(config.optim, total_steps)
  rng = jax.random.PRNGKey(int(config.seed))
  init_rng, state_rng = jax.random.split(rng)

  init_state, state_sh, abstract_state = state_shardings(config, task.init_variables, mesh, tx,
                                                         init_rng, state_rng)
  abstract_sharded = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract_state.params))
  logging.info("Model has %d parameters.", n_params)

  ckpt = ckpt_lib.Checkpointer(workdir, every_steps=int(config.checkpoint.every_steps),
                               keep=int(config.checkpoint.keep),
                               async_save=bool(config.checkpoint.get("async_save", True)))
  watcher = ckpt_lib.PreemptionWatcher()
  writer = metrics_lib.MetricWriter(workdir)
  try:
    state, data_state, how = ckpt_lib.restore_or_initialize(
        ckpt, config, abstract_sharded,
        lambda: jax.jit(init_state, out_shardings=state_sh)(init_rng, state_rng))
    if data_state is not None:
      task.iterator.set_state(data_state)
    step = int(jax.device_get(state.step))
    logging.info("Start at step %d (%s).", step, how)
    if step >= total_steps:
      logging.info("Nothing to do: step %d >= total_steps %d.", step, total_steps)
      return state
    return _run(config, workdir_path, task, mesh, mode, tx, lr_schedule, state, state_sh, step,
                ckpt, watcher, writer, stop_at)
  finally:
    ckpt.close()
    writer.close()
    watcher.close()
    if hasattr(task.iterator, "close"):
      task.iterator.close()


def _run(config, workdir_path, task, mesh, mode, tx, lr_schedule, state, state_sh, step, ckpt,
         watcher, writer, stop_at):
  """The step loop proper (state already built or restored)."""
  total_steps = int(config.total_steps)
  stop_at = total_steps if stop_at is None else min(int(stop_at), total_steps)
  batch_sh = sharding_lib.batch_sharding(mesh)
  body = step_lib.make_train_step(task.loss_fn, tx, ema_decay=float(config.ema.decay),
                                  ema_warmup=bool(config.ema.warmup),
                                  nonfinite=config.nonfinite, lr_schedule=lr_schedule)
  prep = None
  if task.preprocess is not None:
    prep = jax.jit(task.preprocess, out_shardings=batch_sh)

  if mode == "pjit":
    step_fn = jax.jit(body, in_shardings=(state_sh, batch_sh),
                      out_shardings=(state_sh, sharding_lib.replicated(mesh)),
                      donate_argnums=(0,))
  else:
    step_fn = pmap_step.make_pmap_train_step(body)
    state = pmap_step.replicate(jax.device_get(state))

  def to_device(host_batch):
    numeric = task.host_to_numeric(host_batch)
    if mode == "pmap" and prep is None:
      return pmap_step.shard_batch(numeric)
    batch = batch_lib.make_global_batch(numeric, batch_sh)
    if prep is not None:
      batch = prep(task.frozen_params, batch)
    if mode == "pmap":
      n = jax.local_device_count()
      batch = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    return batch

  def save(at_step, force):
    host_state = state
    if mode == "pmap":
      host_state = _to_global(pmap_step.unreplicate(state), state_sh)
    return ckpt.save(at_step, host_state, data_state=task.iterator.get_state(),
                     config=_config_dict(config), force=force)

  batch = to_device(next(task.iterator))
  t0 = time.time()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()
  flops = flops_lib.step_flops_per_device(lowered, compiled,
                                          jax.device_count() if mode == "pjit" else 1)
  logging.info("Compiled the train step in %.1f s; %s", time.time() - t0,
               flops_lib.memory_summary(compiled))
  logging.info("Step FLOPs per device (XLA cost analysis, lowered step): %s; "
               "peak %s TFLOP/s (%s).",
               f"{flops:.3g}" if flops else "n/a", flops_lib.peak_tflops() or "n/a",
               jax.devices()[0].device_kind)

  multihost.barrier(f"imagen_jax_train_step_compiled_{step}")
  evals, eval_params = _make_evaluators(config, task)

  history: list[dict] = []
  final_summary: dict = {}
  first_pending = step
  last_log_time, last_log_step = time.time(), step
  last_saved = ckpt.latest_step()
  rng_sample = jax.random.PRNGKey(int(config.seed) + 1)

  def flush():
    """Reads the pending step metrics (the only host sync); enforces the non-finite policy."""
    nonlocal history, first_pending
    host = jax.device_get(history)
    if mode == "pmap":
      host = [jax.tree.map(lambda x: np.asarray(x)[0], h) for h in host]
    for i, m in enumerate(host):
      if m["nonfinite"] > 0:
        bad_step = first_pending + i + 1
        name = "loss" if not np.isfinite(m["loss"]) else "grad_norm"
        if config.nonfinite == "halt":
          raise TrainingHalted(f"Non-finite {name} ({m[name]}) at step {bad_step}; "
                               "config.nonfinite='halt'.")
        logging.warning("Skipped step %d: non-finite %s.", bad_step, name)
    history, first_pending = [], first_pending + len(host)
    return host

  while step < stop_at:
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      if batch is None:
        try:
          batch = to_device(next(task.iterator))
        except StopIteration:
          logging.warning("The input pipeline is exhausted after step %d.", step)
          if last_saved != step:
            save(step, force=True)
          break
      state, m = compiled(state, batch)
      batch = None
    step += 1
    history.append(m)

    preempted = watcher.requested if jax.process_count() == 1 else False
    is_log = _every(step, config.log_every_steps, total_steps)
    is_ckpt = ckpt.should_save(step) or step == total_steps
    if jax.process_count() > 1 and (is_log or is_ckpt):
      preempted = multihost.any_process(watcher.requested)
    preempted = preempted or ckpt.reached_preemption(step)

    if is_log or is_ckpt or preempted or step == stop_at:
      host = flush()
      if is_log:
        now = time.time()
        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
        last_log_time, last_log_step = now, step
        summary = metrics_lib.mean_metrics(host)
        summary.update(steps_per_sec=rate, images_per_sec=rate * int(config.batch_size),
                       skipped_total=host[-1]["skipped_total"],
                       bad_examples=sum(float(h["bad_examples"]) for h in host),
                       **flops_lib.throughput(flops, rate))
        writer.write_scalars(step, summary)
        final_summary = dict(summary)
        writer.flush()
        metrics_lib.log_console(metrics_lib.console_line(step, total_steps, summary))

    if (is_ckpt or preempted or step == stop_at) and last_saved != step:
      if save(step, force=preempted or step in (stop_at, total_steps)):
        last_saved = step
    if preempted or (step == stop_at and stop_at < total_steps):
      ckpt.wait()
      logging.info("Preempted at step %d: checkpoint saved to %s; exiting.", step, ckpt.directory)
      break

    for name, evaluator, every in evals:
      if config_lib.itstime(step, every, total_steps):
        eval_params["params"] = _ema_for_sampling(state, mode)
        scalars = {f"{name}/{k}": v for k, v in evaluator.run(step)}
        writer.write_scalars(step, scalars)
        writer.flush()
        final_summary.update(scalars)
        logging.info("eval %s at step %d: %s", name, step,
                     ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))

    if task.sample_fn is not None and _every(step, config.get("sample_every_steps"), total_steps):
      _write_samples(task, state, mode, step, jax.random.fold_in(rng_sample, step), workdir_path,
                     writer)

  ckpt.wait()
  if step == total_steps and multihost.is_primary():  # read by scripts/sweep.py --summarize
    (workdir_path / "final_metrics.json").write_text(
        json.dumps({"step": step, **final_summary}, indent=2, default=float))
  if mode == "pmap":
    return pmap_step.unreplicate(state)
  return state


def _ema_for_sampling(state, mode):
  if mode == "pmap":
    return jax.device_put(pmap_step.unreplicate(state.ema_params))
  return state.ema_params


def _check_evals(config, task):
  if config.get("evals") and task.caption_sample_fn is None:
    raise ValueError(f"config.evals={list(config.evals)} needs a stage that samples from "
                     "captions alone (a base stage); evaluate SR stages in the cascade "
                     "(scripts/eval_fid.py).")


def _make_evaluators(config, task):
  """(`config.evals` -> [(name, evaluator, log_steps)], holder): the evaluators sample with
  the params the loop puts in `holder["params"]` (the current EMA params)."""
  if not config.get("evals"):
    return [], {}
  _check_evals(config, task)
  from imagen_jax.evaluation import evaluators  # pylint: disable=import-outside-toplevel
  holder = {}

  def sample_fn(captions, seed):
    return task.caption_sample_fn(holder["params"], list(captions), int(seed))

  return evaluators.from_config(config.evals, sample_fn), holder


def _write_samples(task, state, mode, step, rng, workdir_path, writer):
  ema = _ema_for_sampling(state, mode)
  images = np.asarray(jax.device_get(task.sample_fn(ema, rng)))
  if images.dtype != np.uint8:
    images = metrics_lib.to_uint8(images)
  grid = metrics_lib.image_grid(images)
  if multihost.is_primary():
    out = workdir_path / "samples"
    out.mkdir(parents=True, exist_ok=True)
    metrics_lib.save_png(out / f"step_{step:08d}.png", grid)
  writer.write_images(step, {"samples": grid})
  writer.flush()


def train_and_evaluate(config: Any, workdir: str) -> TrainState:
  """Trains the stage described by `config` in `workdir` (resuming if possible)."""
  # Imported here so the generic loop (and its tests) need none of the stage's packages.
  from imagen_jax import config_check  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import stage_task  # pylint: disable=import-outside-toplevel
  config_check.validate(config)  # the full stage checks, after command-line overrides
  return train(config, workdir, stage_task.build_stage_task)
