r"""Prints a network's parameter count and forward GFLOPs, never allocating it.

  python scripts/summary.py --config configs/sr256.py:variant=paper
  python scripts/summary.py --model imagen_base64 --variant paper

With --config, the network is `config.model.name` / `config.model.variant`;
the fields of `config.model.overrides` and any other field of `config.model`
are passed to `get_model` as overrides (e.g. `text_dim`, `dtype`, `remat`;
dtypes may be strings such as "bfloat16"). The text length is
`config.text.max_length` when the config has it, else --text_len.

Output lines: `model: ...`, `params: N` (exact), `forward GFLOPs per example:
X` and a per-top-level-module breakdown. Shapes come from `jax.eval_shape` of
`init`; FLOPs from XLA's cost analysis of the *lowered* (not compiled)
forward at batch 1, so even the 2B model summarises in seconds on a CPU box.
XLA counts a multiply-add as 2 FLOPs.
"""

import collections
import math
import os

# Nothing here needs an accelerator (shapes and a lowered HLO only).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from imagen_jax import config_lib
from imagen_jax.models import registry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file (path:arg).", lock_config=True
)
_MODEL = flags.DEFINE_string("model", None, "Registry name, without --config.")
_VARIANT = flags.DEFINE_string("variant", "paper", "Registry variant.")
_TEXT_LEN = flags.DEFINE_integer("text_len", 128, "Text tokens per example.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True, "Per-module param counts.")


def model_from_flags():
  """(model, text_len) from --config or --model/--variant."""
  text_len = _TEXT_LEN.value
  if _CONFIG.value is not None:
    cfg = _CONFIG.value
    fields = dict(cfg.model)
    name, variant = fields.pop("name"), fields.pop("variant")
    fields.update(dict(fields.pop("overrides", None) or {}))
    if "text" in cfg and "max_length" in cfg.text:
      text_len = int(cfg.text.max_length)
    return registry.get_model(name, variant, **fields), text_len
  if _MODEL.value is None:
    raise app.UsageError("pass --config or --model")
  return registry.get_model(_MODEL.value, _VARIANT.value), text_len


def abstract_inputs(model, batch: int, text_len: int):
  """ShapeDtypeStructs for the network call: (args, kwargs)."""
  r, f32 = model.resolution, jnp.float32
  args = (
      jax.ShapeDtypeStruct((batch, r, r, model.in_channels), f32),
      jax.ShapeDtypeStruct((batch,), f32),
      jax.ShapeDtypeStruct((batch, text_len, model.text_dim), f32),
      jax.ShapeDtypeStruct((batch, text_len), jnp.bool_),
  )
  kwargs = {}
  if model.lowres_resolution is not None:
    lr = model.lowres_resolution
    kwargs = dict(
        lowres=jax.ShapeDtypeStruct((batch, lr, lr, model.lowres_channels), f32),
        lowres_log_snr=jax.ShapeDtypeStruct((batch,), f32),
    )
  return args, kwargs


def summarize(model, text_len: int = 128):
  """(abstract params, param count, forward GFLOPs per example)."""
  args, kwargs = abstract_inputs(model, 1, text_len)
  variables = jax.eval_shape(
      lambda *a, **k: model.init(jax.random.key(0), *a, **k), *args, **kwargs
  )
  params = variables["params"]
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  lowered = jax.jit(model.apply).lower(variables, *args, **kwargs)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  gflops = float(cost.get("flops", float("nan"))) / 1e9
  return params, count, gflops


def main(argv):
  del argv
  model, text_len = model_from_flags()
  params, count, gflops = summarize(model, text_len)
  print(
      f"model: {type(model).__name__} resolution={model.resolution} "
      f"lowres_resolution={model.lowres_resolution} "
      f"text_dim={model.text_dim} text_len={text_len}"
  )
  if _BREAKDOWN.value:
    per_module = collections.Counter()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      per_module[jax.tree_util.keystr(path[:1])] += math.prod(leaf.shape)
    for key, n in sorted(per_module.items()):
      print(f"  {key:<24} {n:>15,}")
  print(f"params: {count}")
  print(f"params (millions): {count / 1e6:.1f}")
  print(f"forward GFLOPs per example: {gflops:.2f}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
