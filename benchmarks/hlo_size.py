r"""How big a stage's train step is for XLA, and where its ops come from.

Lowers four programs for one stage config at a small batch, on one device:
  init     the train state's initialiser (a threefry hash per parameter tensor);
  forward  the training loss;
  grad     the loss and its gradient (forward + backward);
  step     the trainer's whole step (grad, clipping, optimizer, EMA, non-finite guard; on
           flat buffers with --config.optim.fused_update=auto, train/fused_update.py);
and prints for each its StableHLO op count (every call to a jitted helper inlined, as XLA
does), the convolutions and dot_generals (with how many distinct signatures, which is what
GPU autotuning sees), the most common ops, and with --compile the XLA compile time on this
machine. The differences between the rows say what the backward pass and the optimizer add.

  python benchmarks/hlo_size.py --config configs/base64.py:variant=small,data=shapes \
      --config.optim.name=adam [--batch 2] [--compile] [--json OUT] [--programs step]
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (path[:arg]).", lock_config=True
)
_BATCH = flags.DEFINE_integer("batch", 2, "Batch the programs are lowered at.")
_COMPILE = flags.DEFINE_bool("compile", False, "Also time XLA's compile of each program.")
_TOP = flags.DEFINE_integer("top", 8, "Most common ops listed per program.")
_JSON = flags.DEFINE_string("json", None, "Also write the figures here.")
_PROGRAMS = flags.DEFINE_list(
    "programs", ["init", "forward", "grad", "step"], "The programs to lower (and compile)."
)
_INIT_KEY = flags.DEFINE_enum(
    "init_key",
    "threefry",
    ["threefry", "rbg", "unsafe_rbg"],
    "PRNG implementation the init program draws the params with (the trainer: threefry).",
)
flags.mark_flag_as_required("config")


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from flax.core import meta
  from imagen_jax import pipeline as pipeline_lib
  from imagen_jax.perf import benchmark
  from imagen_jax.perf import program_size
  from imagen_jax.train import optim
  from imagen_jax.train import state as state_lib
  from imagen_jax.train import step as step_lib

  config = _CONFIG.value
  pipe = pipeline_lib.StagePipeline.from_config(config)
  text_len = int(config.text.max_length)
  tx, lr_schedule = optim.make_optimizer(config.optim, int(config.total_steps))
  rng = jax.random.PRNGKey(0)

  def init_params(r):
    if _INIT_KEY.value != "threefry":  # rbg keys hold 4 words: the raw key's 2, twice
      r = jax.random.wrap_key_data(jnp.concatenate([r, r]), impl=_INIT_KEY.value)
    return meta.unbox(pipe.init(r, batch_size=1, text_len=text_len)["params"])

  init_state = lambda r: state_lib.create_train_state(init_params(r), tx, r)
  params = jax.eval_shape(init_params, rng)
  state = jax.eval_shape(init_state, rng)
  n_params, n_tensors = benchmark.count_params(params), len(jax.tree.leaves(params))
  print(
      f"{config.model.name}/{config.model.variant}: {n_params:,d} parameters in "
      f"{n_tensors} tensors; batch {_BATCH.value}",
      flush=True,
  )
  host = benchmark.synthetic_batch(
      pipe, _BATCH.value, text_len, float(config.input.get("cond_drop_prob", 0.1))
  )
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)

  loss = lambda p, b, r: pipe.loss_fn(p, b, r)[0]
  step = step_lib.make_train_step(
      pipe.loss_fn,
      tx,
      ema_decay=float(config.ema.decay),
      ema_warmup=bool(config.ema.warmup),
      lr_schedule=lr_schedule,
  )
  programs = {
      "init": (init_state, (rng,)),
      "forward": (loss, (params, batch, rng)),
      "grad": (jax.value_and_grad(loss), (params, batch, rng)),
      "step": (step, (state, batch)),
  }
  rows = {}
  for name, (fn, args) in programs.items():
    if name not in _PROGRAMS.value:
      continue
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    row = {"lower_seconds": time.perf_counter() - start}
    row.update(program_size.op_stats(lowered.as_text(), _TOP.value))
    if _COMPILE.value:
      start = time.perf_counter()
      compiled = lowered.compile()
      row["compile_seconds"] = time.perf_counter() - start
      memory = compiled.memory_analysis()
      if memory is not None:
        row["temp_mb"] = memory.temp_size_in_bytes / 2**20
    rows[name] = row
    print(
        f"{name:8s} {row['ops']:7,d} ops  convolutions {row['convolutions']:4d} "
        f"({row['distinct_convolutions']} distinct)  dot_generals {row['dot_generals']:4d} "
        f"({row['distinct_dot_generals']} distinct)  lowered in {row['lower_seconds']:.1f} s"
        + (f", compiled in {row['compile_seconds']:.1f} s" if _COMPILE.value else "")
        + (f", temp {row['temp_mb']:.0f} MiB" if "temp_mb" in row else ""),
        flush=True,
    )
    print("         " + ", ".join(f"{op} {n:,d}" for op, n in row["top"]), flush=True)
  record = {
      "model": f"{config.model.name}/{config.model.variant}",
      "batch": _BATCH.value,
      "params": n_params,
      "param_tensors": n_tensors,
      "dtype": str(jnp.dtype(pipe.model.dtype)),
      "optimizer": str(config.optim.name),
      "fused_update": optim.fused_update_mode(tx),
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "programs": rows,
  }
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(record, f, indent=2)


if __name__ == "__main__":
  app.run(main)
