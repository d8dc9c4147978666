"""Steady-state throughput of one stage: train step, sampler and input pipeline.

What `scripts/benchmark.py` measures on our side. The train step is the trainer's own: the
state built by `state.state_spec` and compiled by the same `parallel.placement` as the loop's
(jit with shardings, or pmap, as `config.parallel.mode` says), `step.make_train_step` with the
config's optimizer, EMA and non-finite guard, donated state. Its batch is synthetic and already on the devices, with the text
embeddings given (the frozen encoder's cost is not part of the step, as with imagen-pytorch's
`text_embeds=`); its numbers are random, so the model's weights do not matter for speed.

Timings exclude compilation and a warm-up; each figure is the median over `repeats` timings
of a block of calls ended by `block_until_ready`.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import diffusion
from imagen_jax import pipeline as pipeline_lib
from imagen_jax.parallel import batch as batch_lib
from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import placement as placement_lib
from imagen_jax.perf import trace_summary
from imagen_jax.train import flops as flops_lib
from imagen_jax.train import optim
from imagen_jax.train import state as state_lib
from imagen_jax.train import step as step_lib


def median_seconds(call: Callable[[], Any], *, repeats: int, inner: int = 1) -> tuple[float, list]:
  """(median seconds per call, every timing): `repeats` timings of `inner` calls each."""
  if repeats < 1 or inner < 1:
    raise ValueError(f"repeats={repeats} and inner={inner} must be >= 1.")
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for _ in range(inner):
      out = call()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return statistics.median(times), times


def peak_device_memory() -> int | None:
  """Peak bytes in use on the first local device, where the backend reports it (not CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without memory stats
    return None
  if not stats:
    return None
  peak = stats.get("peak_bytes_in_use")
  return int(peak) if peak is not None else None


def synthetic_batch(
    pipe: pipeline_lib.StagePipeline,
    batch_size: int,
    text_len: int,
    cond_drop_prob: float,
    seed: int = 0,
) -> dict[str, np.ndarray]:
  """A host batch in the loss's format: images in [-1, 1], random text embeddings with
  random-length masks, `drop_text` at the config's caption-dropout rate, `lowres` for SR."""
  rng = np.random.default_rng(seed)
  r = pipe.resolution
  lengths = rng.integers(1, text_len + 1, size=batch_size)
  out = {
      "image": rng.uniform(-1, 1, (batch_size, r, r, 3)).astype(np.float32),
      "text_emb": rng.standard_normal((batch_size, text_len, pipe.model.text_dim)).astype(
          np.float32
      ),
      "text_mask": np.arange(text_len)[None, :] < lengths[:, None],
      "drop_text": rng.uniform(size=batch_size) < cond_drop_prob,
  }
  if pipe.is_super_resolution:
    lr = pipe.lowres_resolution
    out["lowres"] = rng.uniform(-1, 1, (batch_size, lr, lr, 3)).astype(np.float32)
  return out


def count_params(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def train_step(
    config: Any,
    *,
    batch_size: int,
    repeats: int = 5,
    inner: int = 5,
    warmup: int = 2,
    profile_dir: str | None = None,
    profile_steps: int = 3,
) -> dict[str, Any]:
  """Times the trainer's step for `config` at global `batch_size`; a dict of figures.

  With `profile_dir`, `profile_steps` more steps are traced there after the timing (so the
  profiler's overhead is not in the figures) and `out["profile"]` folds the trace by op kind
  and model scope (`trace_summary`).
  """
  pipe = pipeline_lib.StagePipeline.from_config(config)
  mesh = mesh_lib.create_mesh(config.parallel.mesh)
  placement = placement_lib.for_config(config.parallel, mesh)
  batch_lib.check_batch_size(batch_size, mesh)
  text_len = int(config.text.max_length)
  tx, lr_schedule = optim.make_optimizer(config.optim, int(config.total_steps))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(int(config.seed)))
  spec = state_lib.state_spec(
      placement,
      lambda rng: pipe.init(rng, batch_size=1, text_len=text_len),
      tx,
      init_rng,
      state_rng,
  )
  start = time.perf_counter()
  state = jax.block_until_ready(
      jax.jit(spec.init, out_shardings=spec.shardings)(init_rng, state_rng)
  )
  init_s = time.perf_counter() - start
  # The initialiser is a program of its own (a threefry hash per parameter) that can take
  # as long to compile as the step on a CPU: logged, so a stopped run shows where it was.
  logging.info("train state initialised in %.1f s (compile included)", init_s)
  body = step_lib.make_train_step(
      pipe.loss_fn,
      tx,
      ema_decay=float(config.ema.decay),
      ema_warmup=bool(config.ema.warmup),
      lr_schedule=lr_schedule,
  )
  host = synthetic_batch(
      pipe, batch_size, text_len, float(config.input.get("cond_drop_prob", 0.1)), int(config.seed)
  )
  batch = placement.batch_putter()(host)
  state = placement.put_state(state)

  start = time.perf_counter()
  lowered = placement.lower_step(body, spec.shardings, state, batch)
  lower_s = time.perf_counter() - start
  # Logged as it happens: a run stopped by a time limit still shows which phase it was in.
  logging.info("train step traced and lowered in %.1f s; compiling ...", lower_s)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  logging.info("train step compiled in %.1f s", compile_s - lower_s)
  flops = flops_lib.step_flops_per_device(lowered, compiled, placement.flops_devices)

  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics

  for _ in range(warmup):
    jax.block_until_ready(one_step())
  seconds, times = median_seconds(one_step, repeats=repeats, inner=inner)
  loss = float(np.asarray(jax.device_get(one_step()["loss"])).reshape(-1)[0])
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"The benchmarked step's loss is {loss}; the figures would be "
        "of a step that skips its update."
    )
  out = {
      "model": f"{config.model.name}/{config.model.variant}",
      "resolution": pipe.resolution,
      "lowres_resolution": pipe.lowres_resolution,
      "dtype": str(jnp.dtype(pipe.model.dtype)),
      "optimizer": str(config.optim.name),
      "mode": placement.mode,
      "mesh": dict(mesh.shape),
      "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "batch_size": batch_size,
      "text_len": text_len,
      "params": spec.num_params,
      "init_seconds": init_s,  # the state's initialiser: compile + run
      "compile_seconds": compile_s,  # tracing + lowering + XLA compile
      "lower_seconds": lower_s,
      "step_seconds": seconds,
      "step_seconds_all": times,
      "img_per_s": batch_size / seconds,
      "flops_per_step_per_device": flops,
      "flops_per_image": flops * jax.device_count() / batch_size if flops else None,
      "memory_analysis": flops_lib.memory_summary(compiled),
      "peak_device_memory_bytes": peak_device_memory(),
      "loss": loss,
  }
  out.update(flops_lib.throughput(flops, 1.0 / seconds))
  if profile_dir:
    hlo_text = compiled.as_text()
    trace_summary.capture(one_step, profile_steps, profile_dir)
    with open(os.path.join(profile_dir, "train_step.hlo.txt"), "w") as f:
      f.write(hlo_text)  # the op names of the trace, for digging further
    out["profile"] = trace_summary.summarize(profile_dir, hlo_text, steps=profile_steps)
    out["profile"]["log_dir"] = profile_dir
  return out


def sampling(
    config: Any,
    *,
    batch_size: int,
    num_steps: int,
    guidance_scale: float,
    sampler: str = "ddpm",
    repeats: int = 3,
) -> dict[str, Any]:
  """Times whole jitted sampling loops (`num_steps` steps) at guidance 1 (the conditional pass
  alone) and at `guidance_scale` (conditional + unconditional as one batched pass)."""
  pipe = pipeline_lib.StagePipeline.from_config(config)
  text_len = int(config.text.max_length)
  params = jax.jit(lambda rng: pipe.init(rng, batch_size=1, text_len=text_len)["params"])(
      jax.random.PRNGKey(0)
  )
  from flax.core import meta  # pylint: disable=import-outside-toplevel

  params = meta.unbox(params)
  host = synthetic_batch(pipe, batch_size, text_len, cond_drop_prob=0.0)
  emb, mask = jnp.asarray(host["text_emb"]), jnp.asarray(host["text_mask"])
  lowres = jnp.asarray(host["lowres"]) if "lowres" in host else None
  threshold = str(config.sampling.get("threshold", "dynamic"))
  percentile = float(config.sampling.get("percentile", diffusion.DEFAULT_PERCENTILE))
  out: dict[str, Any] = {
      "batch_size": batch_size,
      "num_steps": num_steps,
      "sampler": sampler,
      "threshold": threshold,
      "guidance_scale": guidance_scale,
  }
  for name, scale in (("unguided", 1.0), ("guided", float(guidance_scale))):

    def run(params, rng, scale=scale):
      return pipe.sample(
          params,
          emb,
          mask,
          rng,
          sampler=sampler,
          num_steps=num_steps,
          guidance_scale=scale,
          threshold=threshold,
          percentile=percentile,
          lowres=lowres,
      )

    start = time.perf_counter()
    compiled = jax.jit(run).lower(params, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, jax.random.PRNGKey(1)))
    seconds, _ = median_seconds(lambda: compiled(params, jax.random.PRNGKey(2)), repeats=repeats)
    out[name] = {
        "seconds": seconds,
        "step_seconds": seconds / num_steps,
        "img_per_s": batch_size / seconds,
        "compile_seconds": compile_s,
    }
  out["guided_over_unguided_step"] = out["guided"]["step_seconds"] / out["unguided"]["step_seconds"]
  out["peak_device_memory_bytes"] = peak_device_memory()
  return out


def input_pipeline(config: Any, *, batch_size: int, seconds: float = 5.0) -> dict[str, Any]:
  """Images per second from `config.input` as this process would read them for the stage."""
  from imagen_jax.data import input_pipeline as input_lib  # pylint: disable=import-outside-toplevel

  pipe = pipeline_lib.StagePipeline.from_config(config)
  it = input_lib.create_input_iterator(
      config.input,
      global_batch_size=batch_size,
      resolution=pipe.resolution,
      lowres_resolution=pipe.lowres_resolution,
      seed=int(config.seed),
      process_index=0,
      process_count=1,
      devices_per_process=1,
  )
  try:
    next(it)  # worker start-up, first decode
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      count += len(next(it)["image"])
    elapsed = time.perf_counter() - start
  finally:
    if hasattr(it, "close"):
      it.close()
  return {
      "dataset": str(config.input.dataset),
      "batch_size": batch_size,
      "workers": config.input.get("num_workers"),
      "img_per_s": count / elapsed,
  }
