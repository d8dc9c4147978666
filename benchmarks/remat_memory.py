r"""What rematerialisation saves: XLA's compiled memory analysis of a stage's train step for
each remat setting, without running anything.

For each setting (`remat` or `remat:policy`, models/remat.py) this compiles, on the devices
present, up to two programs at the given batch:
  grad  the loss and its gradient (forward + backward: where the activations live);
  step  the trainer's whole step as the loop compiles it (`parallel.placement`, donated state:
        grad, clipping, optimizer, EMA, non-finite guard);
and prints `compiled.memory_analysis()` per device: temporaries (what remat reduces),
arguments, outputs, and temporaries as a fraction of the first setting's. Nothing is
initialised or run: the state is abstract (`state.state_spec`), so a setting costs one XLA
compile per program.

The forward's saved residuals (the leaves of `jax.vjp`'s backward function, traced only) are
summed too, with the attention tensors' share: what the backward keeps of each setting before
XLA schedules it.

  python benchmarks/remat_memory.py --config configs/base64.py:variant=small,data=shapes \
      --batch 8 --settings none,block,full,block:dots_saveable [--programs grad,step] \
      [--json OUT]
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from imagen_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (path[:arg]).", lock_config=True
)
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch the programs are compiled at.")
_SETTINGS = flags.DEFINE_list(
    "settings",
    ["none", "block", "full"],
    "remat settings, each `remat` or `remat:policy` (a jax.checkpoint_policies name).",
)
_PROGRAMS = flags.DEFINE_list("programs", ["grad", "step"], "Which of grad, step to compile.")
_RESIDUALS = flags.DEFINE_bool(
    "residuals", True, "Also sum the forward's saved residuals (jax.vjp, traced only)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the figures here.")
flags.mark_flag_as_required("config")

_MIB = 2**20


def _programs(config, batch_size):
  """(pipeline, residual-bytes thunk, {name: lowering thunk}) for `config` as it stands."""
  # pylint: disable=import-outside-toplevel
  from imagen_jax import pipeline as pipeline_lib
  from imagen_jax.parallel import mesh as mesh_lib
  from imagen_jax.parallel import placement as placement_lib
  from imagen_jax.perf import benchmark
  from imagen_jax.train import optim
  from imagen_jax.train import state as state_lib
  from imagen_jax.train import step as step_lib

  pipe = pipeline_lib.StagePipeline.from_config(config)
  placement = placement_lib.for_config(config.parallel, mesh_lib.create_mesh(config.parallel.mesh))
  text_len = int(config.text.max_length)
  tx, lr_schedule = optim.make_optimizer(config.optim, int(config.total_steps))
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(0))
  spec = state_lib.state_spec(
      placement, lambda r: pipe.init(r, batch_size=1, text_len=text_len), tx, init_rng, state_rng
  )
  host = benchmark.synthetic_batch(
      pipe, batch_size, text_len, float(config.input.get("cond_drop_prob", 0.1))
  )
  batch = placement.batch_putter()(host)
  body = step_lib.make_train_step(
      pipe.loss_fn,
      tx,
      ema_decay=float(config.ema.decay),
      ema_warmup=bool(config.ema.warmup),
      lr_schedule=lr_schedule,
  )
  loss = lambda p, b, r: pipe.loss_fn(p, b, r)[0]
  residuals = lambda: _residual_bytes(
      lambda p: loss(p, batch, jax.random.PRNGKey(1)), spec.abstract.params, batch_size
  )
  return (
      pipe,
      residuals,
      {
          "grad": lambda: jax.jit(jax.value_and_grad(loss)).lower(
              spec.abstract.params, batch, jax.random.PRNGKey(1)
          ),
          "step": lambda: placement.lower_step(body, spec.shardings, spec.abstract, batch),
      },
  )


def _residual_bytes(loss, params, batch_size):
  """(activation, attention) bytes the forward saves for the backward: the leaves of
  `jax.vjp`'s backward function (shapes only) whose leading dim is the batch; attention:
  those shaped [B, heads, queries, keys] or [B, tokens, heads, head_dim] (rank 4 with unequal
  middle dims, where an image activation is [B, H, W, C] with H == W)."""
  leaves = jax.tree.leaves(jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params))
  acts = [x for x in leaves if x.ndim and x.shape[0] == batch_size]
  size = lambda xs: sum(x.size * x.dtype.itemsize for x in xs)
  attn = [x for x in acts if x.ndim == 4 and x.shape[1] != x.shape[2]]
  return size(acts), size(attn)


def main(argv):
  del argv
  config = _CONFIG.value
  unknown = sorted(set(_PROGRAMS.value) - {"grad", "step"})
  if unknown:
    raise app.UsageError(f"--programs: unknown {unknown}; expected some of grad, step")
  rows, first = [], {}
  for setting in _SETTINGS.value:
    remat, _, policy = setting.partition(":")
    config.model.overrides.remat = remat
    config.model.overrides.remat_policy = policy or None
    pipe, residuals, programs = _programs(config, _BATCH.value)
    if _RESIDUALS.value:
      acts, attn = residuals()
      rows.append(
          {"setting": setting, "program": "residuals", "bytes": acts, "attention_bytes": attn}
      )
      print(
          f"{setting:28s} saved residuals {acts / _MIB:9.1f} MiB, of which attention "
          f"{attn / _MIB:.1f} MiB",
          flush=True,
      )
    for name in _PROGRAMS.value:
      start = time.perf_counter()
      compiled = programs[name]().compile()
      seconds = time.perf_counter() - start
      m = compiled.memory_analysis()
      if m is None:
        raise RuntimeError(f"{jax.default_backend()} gives no compiled memory analysis")
      row = {
          "setting": setting,
          "program": name,
          "temp_bytes": int(m.temp_size_in_bytes),
          "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes),
          "alias_bytes": int(m.alias_size_in_bytes),
          "compile_seconds": seconds,
      }
      first.setdefault(name, row["temp_bytes"])
      row["temp_ratio"] = row["temp_bytes"] / first[name]
      rows.append(row)
      print(
          f"{setting:28s} {name:5s} temporaries {row['temp_bytes'] / _MIB:9.1f} MiB "
          f"({row['temp_ratio']:.2f}x)  arguments {row['argument_bytes'] / _MIB:8.1f} MiB  "
          f"outputs {row['output_bytes'] / _MIB:8.1f} MiB  compiled in {seconds:.0f} s",
          flush=True,
      )
  record = {
      "model": f"{config.model.name}/{config.model.variant}",
      "batch": _BATCH.value,
      "dtype": str(jnp.dtype(pipe.model.dtype)),
      "optimizer": str(config.optim.name),
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "jax": jax.__version__,
      "rows": rows,
  }
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(record, f, indent=2)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
