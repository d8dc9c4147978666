"""`validate(config)`: cheap checks of a stage config, before anything is built.

Every `configs/*.py:get_config` ends with `validate(c)`, and the stage trainer
(`train.loop.train_and_evaluate`) calls it again after command-line overrides.
Each error names the offending field, e.g.

  config.input.resolution=32 but model imagen_base64/paper has resolution 64

Checked: the model name, variant and overrides (through the registry); the
resolution chain (input resolution and low-res resolution against the model,
divisibility by the network's downsampling, the `crop_size` crop); positive
step counts and batch size; batch size against the fixed data mesh axes;
known schedule, prediction, loss weighting, sampler, threshold, optimizer,
fused-update and decay names; the noise-augmentation range; the parallel mode and mesh; the
caption dropout probability and the input dataset form; the evals entries.

Each name table is read from its owner, so there is one gate per name:
optimizer, fused-update and decay names from `train.optim`, nonfinite policies from
`train.step`, parallel modes (and aliases) from `parallel.placement`, data mesh
axes from `parallel.mesh`, evaluator types from `evaluation.evaluators`,
dataset names from `data.input_pipeline`, bad-caption policies from
`data.sources`, the rest from `diffusion` and the
model registry. Nothing here allocates arrays or builds a model.
"""

import math
from typing import Any

import numpy as np
from ml_collections import config_dict

from imagen_jax import config_lib
from imagen_jax import diffusion
from imagen_jax.data import input_pipeline
from imagen_jax.data import sources
from imagen_jax.diffusion import losses as diffusion_losses
from imagen_jax.evaluation import evaluators
from imagen_jax.models import registry
from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import placement
from imagen_jax.parallel import sharding
from imagen_jax.train import optim
from imagen_jax.train import step as step_lib
from imagen_jax.train import task as task_lib


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def _one_of(field: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r}; expected one of {', '.join(map(str, allowed))}")


def _positive(field: str, value: Any, *, allow_zero: bool = False) -> None:
  try:
    ok = int(value) >= 0 if allow_zero else int(value) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    what = "non-negative" if allow_zero else "positive"
    raise ConfigError(f"config.{field}={value!r} must be a {what} integer")


def expose_model_overrides(config: Any) -> None:
  """Adds every field of the config's model to `config.model.overrides` as a typed
  placeholder (None: the variant's value; `registry.override_types`), so that each can be
  set on a locked config (`--config.model.overrides.remat=block`). Fields the config
  already sets are left as they are."""
  m = config.model
  name = config_lib.get(m, "name", "")
  if name not in registry.model_names() or not hasattr(m.overrides, "unlocked"):
    return  # model_fields names a bad model; plain dicts are not ConfigDicts
  missing = {k: t for k, t in registry.override_types(name).items() if k not in m.overrides}
  if missing:
    with m.overrides.unlocked():
      for key, kind in missing.items():
        m.overrides[key] = config_dict.placeholder(kind)


def model_fields(config: Any) -> dict:
  """The registry's field dict for `config.model` (name, variant, overrides)."""
  m = config.model
  name, variant = config_lib.get(m, "name", ""), config_lib.get(m, "variant", "")
  if name not in registry.model_names():
    raise ConfigError(
        f"config.model.name={name!r}; expected one of {', '.join(registry.model_names())}"
    )
  if variant not in registry.variants(name):
    raise ConfigError(
        f"config.model.variant={variant!r} for model {name}; "
        f"expected one of {', '.join(registry.variants(name))}"
    )
  overrides = dict(config_lib.get(m, "overrides", {}) or {})
  try:
    return registry.model_config(name, variant, **overrides)
  except ValueError as e:
    raise ConfigError(f"config.model.overrides: {e}") from None


def _downsampling(fields: dict) -> int:
  if "strides" in fields:
    strides = fields["strides"]
    if isinstance(strides, int):
      strides = (strides,) * len(fields.get("channels", (1,)))
    return int(math.prod(int(s) for s in strides))
  if "channel_mult" in fields:
    return 2 ** (len(fields["channel_mult"]) - 1)
  return 1


def _model_task(fields: dict) -> str:
  """The `config.task` a model's fields belong to."""
  if "num_classes" in fields:
    return "classifier"
  if "projection_dim" in fields:
    return "clip"
  if "resolution" not in fields:  # the unCLIP prior: embeddings, not images
    return "prior"
  return "diffusion"


def _check_model_and_input(config: Any) -> None:
  fields = model_fields(config)
  label = f"{config.model.name}/{config.model.variant}"
  task = config_lib.get(config, "task", "diffusion")
  kind = _model_task(fields)
  if task != kind and task in task_lib.TASKS:
    if task == "classifier":  # the wording the classifier's callers know
      what = "not a classifier"
    else:
      what = {
          "classifier": "a classifier",
          "clip": "a noise-aware CLIP",
          "prior": "a diffusion prior",
      }.get(kind, "a diffusion network")
    raise ConfigError(
        f"config.task={task!r} but config.model {label} is {what} (a config.task={kind!r} model)"
    )
  if kind == "prior":  # no image size of its own: the task checks the input against the CLIP
    if not isinstance(config_lib.get(config_lib.get(config, "prior", {}), "clip"), str):
      raise ConfigError(
          "config.prior.clip must be a string: the CLIP run directory "
          "(configs/shapes.py:stage=clip) or a Hugging Face CLIPModel directory"
      )
    return
  res, lowres = int(fields["resolution"]), fields.get("lowres_resolution")
  inp = config.input
  data_res = config_lib.get(inp, "resolution")
  if data_res is not None and int(data_res) != res:
    raise ConfigError(f"config.input.resolution={data_res} but model {label} has resolution {res}")
  data_lowres = config_lib.get(inp, "lowres_resolution")
  if lowres is None and data_lowres is not None:
    raise ConfigError(
        f"config.input.lowres_resolution={data_lowres} but model "
        f"{label} is not a super-resolution stage"
    )
  if lowres is not None and data_lowres is not None and int(data_lowres) != int(lowres):
    raise ConfigError(
        f"config.input.lowres_resolution={data_lowres} but model "
        f"{label} takes a {lowres}x{lowres} low-res input"
    )
  if lowres is not None and not 0 < int(lowres) < res:
    raise ConfigError(
        f"config.model: {label} has lowres_resolution {lowres} not below its resolution {res}"
    )
  down = _downsampling(fields)
  size = config_lib.get(inp, "crop_size") or res
  size_field = (
      "config.input.crop_size" if config_lib.get(inp, "crop_size") else ("config.input.resolution")
  )
  if not 0 < int(size) <= res:
    raise ConfigError(f"{size_field}={size} must be in (0, {res}] for model {label}")
  if int(size) % down:
    raise ConfigError(
        f"{size_field}={size} is not divisible by {down}, the "
        f"total downsampling of model {label}"
    )
  if lowres is not None and (int(size) * int(lowres)) % res:
    raise ConfigError(
        f"{size_field}={size}: the low-res crop {size} x {lowres} / {res} is not an integer"
    )


def _check_input(inp: Any) -> None:
  dataset = config_lib.get(inp, "dataset", "shapes")
  names = input_pipeline.DATASETS
  if not (
      dataset in names
      or (isinstance(dataset, str) and dataset.startswith("tfds:") and len(dataset) > len("tfds:"))
  ):
    raise ConfigError(
        f"config.input.dataset={dataset!r}; expected one of {', '.join(names)} or 'tfds:<name>'"
    )
  if dataset == "folder" and not config_lib.get(inp, "path"):
    raise ConfigError(
        "config.input.path must name the image folder when config.input.dataset='folder'"
    )
  if dataset == "coco_json" and not (
      config_lib.get(inp, "path") and config_lib.get(inp, "annotations")
  ):
    raise ConfigError(
        "config.input.path and config.input.annotations must be "
        "set when config.input.dataset='coco_json'"
    )
  p = float(config_lib.get(inp, "cond_drop_prob", 0.1))
  if not 0.0 <= p <= 1.0:
    raise ConfigError(f"config.input.cond_drop_prob={p} must be in [0, 1]")
  for field in ("max_decoded_mb", "read_timeout_s"):
    value = config_lib.get(inp, field)
    if value is not None and not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
      raise ConfigError(f"config.input.{field}={value!r} must be positive and finite")
  _one_of(
      "input.bad_caption", config_lib.get(inp, "bad_caption", "skip"), sources.BAD_CAPTION_POLICIES
  )
  outside = config_lib.get(inp, "allow_outside_root", False)
  if not isinstance(outside, bool):
    raise ConfigError(f"config.input.allow_outside_root={outside!r} must be True or False")
  if dataset == "shapes":
    n = int(config_lib.get(inp, "max_objects", 3))
    if not 1 <= n <= 3:
      raise ConfigError(f"config.input.max_objects={n} must be in [1, 3]")


def _check_diffusion(d: Any) -> None:
  _one_of("diffusion.schedule", config_lib.get(d, "schedule"), diffusion.SCHEDULES)
  _one_of(
      "diffusion.aug_schedule", config_lib.get(d, "aug_schedule", "cosine"), diffusion.SCHEDULES
  )
  _one_of("diffusion.prediction", config_lib.get(d, "prediction"), diffusion.PREDICTIONS)
  _one_of(
      "diffusion.loss_weighting",
      config_lib.get(d, "loss_weighting", "none"),
      diffusion_losses.WEIGHTINGS,
  )
  if float(config_lib.get(d, "min_snr_gamma", 5.0)) <= 0:
    raise ConfigError(
        f"config.diffusion.min_snr_gamma={config_lib.get(d, 'min_snr_gamma')} must be positive"
    )
  lo = float(config_lib.get(d, "log_snr_min", -20.0))
  hi = float(config_lib.get(d, "log_snr_max", 20.0))
  if not lo < hi:
    raise ConfigError(
        f"config.diffusion.log_snr_min={lo} must be below config.diffusion.log_snr_max={hi}"
    )
  shift = float(config_lib.get(d, "log_snr_shift", 0.0))
  if not math.isfinite(shift):
    raise ConfigError(f"config.diffusion.log_snr_shift={shift} must be finite")
  aug = tuple(config_lib.get(d, "aug_range", (0.0, 1.0)))
  if len(aug) != 2 or not 0.0 <= float(aug[0]) <= float(aug[1]) <= 1.0:
    raise ConfigError(
        f"config.diffusion.aug_range={aug} must be (min, max) with 0 <= min <= max <= 1"
    )


def _check_sampling(s: Any) -> None:
  if s is None:
    return
  _one_of("sampling.sampler", config_lib.get(s, "sampler", "ddpm"), diffusion.SAMPLERS)
  _one_of("sampling.threshold", config_lib.get(s, "threshold", "dynamic"), diffusion.THRESHOLDS)
  _positive("sampling.num_steps", config_lib.get(s, "num_steps", 1))
  p = float(config_lib.get(s, "percentile", diffusion.DEFAULT_PERCENTILE))
  if not 0.0 < p <= 1.0:
    raise ConfigError(f"config.sampling.percentile={p} must be in (0, 1]")
  if float(config_lib.get(s, "guidance_scale", 1.0)) < 0:
    raise ConfigError(
        f"config.sampling.guidance_scale={config_lib.get(s, 'guidance_scale')} must be >= 0"
    )
  level = float(config_lib.get(s, "aug_level", 0.0))
  if not 0.0 <= level <= 1.0:
    raise ConfigError(f"config.sampling.aug_level={level} must be in [0, 1]")


def _check_optim(o: Any, ema: Any) -> None:
  _one_of("optim.name", config_lib.get(o, "name"), optim.OPTIMIZERS)
  _one_of("optim.decay", config_lib.get(o, "decay", "cosine"), optim.DECAYS)
  lr = float(config_lib.get(o, "lr", 0.0))
  # float32 is what the update computes in: 1e39 is inf there, and compiling the step (tens
  # of seconds) only to skip or halt at step 1 is a waste.
  if not (lr > 0 and math.isfinite(lr) and lr < float(np.finfo(np.float32).max)):
    raise ConfigError(
        f"config.optim.lr={config_lib.get(o, 'lr')} must be positive and finite in float32"
    )
  eps = config_lib.get(o, "eps")
  if eps is not None and not float(eps) > 0:
    raise ConfigError(
        f"config.optim.eps={eps} must be positive (Adam divides by "
        "sqrt(nu) + eps: 0 gives NaN where a gradient is 0)"
    )
  _positive("optim.warmup_steps", config_lib.get(o, "warmup_steps", 0), allow_zero=True)
  if config_lib.get(o, "name") == "adam" and float(config_lib.get(o, "weight_decay", 0.0)):
    raise ConfigError("config.optim.weight_decay is set for optim.name='adam'; use 'adamw'")
  fused = config_lib.get(o, "fused_update", "off")
  _one_of("optim.fused_update", fused, optim.FUSED_UPDATE_MODES)
  if fused == "on" and config_lib.get(o, "name") not in optim.ELEMENTWISE_OPTIMIZERS:
    raise ConfigError(
        f"config.optim.fused_update='on' needs optim.name in "
        f"{', '.join(optim.ELEMENTWISE_OPTIMIZERS)} (elementwise); "
        f"{config_lib.get(o, 'name')!r} is not: use 'auto' or 'off'"
    )
  if float(config_lib.get(o, "grad_clip_norm", 0.0)) < 0:
    raise ConfigError(
        f"config.optim.grad_clip_norm={config_lib.get(o, 'grad_clip_norm')} must be >= 0"
    )
  decay = float(config_lib.get(ema, "decay", 0.9999))
  if not 0.0 <= decay < 1.0:
    raise ConfigError(f"config.ema.decay={decay} must be in [0, 1)")


def _check_parallel(config: Any) -> None:
  par = config.parallel
  try:  # the canonical modes and their aliases ("pjit" for "jit")
    placement.canonical_mode(config_lib.get(par, "mode"))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  mesh = config_lib.get(par, "mesh", ())
  if not mesh:
    raise ConfigError("config.parallel.mesh is empty; expected e.g. (('data', -1), ('fsdp', 1))")
  if isinstance(mesh, str) or all(isinstance(e, str) for e in mesh):
    # ml_collections turns --config.parallel.mesh=data into ('d', 'a', 't', 'a')
    raise ConfigError(
        f"config.parallel.mesh={''.join(mesh)!r} is a string; expected (name, size) pairs, e.g. "
        "--config.parallel.mesh=\"(('data',-1),('fsdp',1))\""
    )
  used = set(mesh_lib.DATA_AXES) | _rule_axes(config_lib.get(par, "logical_rules", ()))
  names, fixed = [], 1
  for entry in mesh:
    if isinstance(entry, str) or len(entry) != 2 or not isinstance(entry[0], str):
      raise ConfigError(f"config.parallel.mesh entry {tuple(entry)!r} is not a (name, size) pair")
    name, size = entry[0], int(entry[1])
    if name in names:
      raise ConfigError(f"config.parallel.mesh names axis {name!r} twice")
    if size == 0 or size < -1:
      raise ConfigError(
          f"config.parallel.mesh axis {name!r} has size {size}; sizes are positive or -1"
      )
    if name not in used and size != 1:
      raise ConfigError(
          f"config.parallel.mesh axis {name!r} (size {size}) is neither a data axis "
          f"({', '.join(mesh_lib.DATA_AXES)}) nor named by config.parallel.logical_rules, so "
          "nothing would be split over it (every device would hold the same data)"
      )
    names.append(name)
    if name in mesh_lib.DATA_AXES and size > 0:
      fixed *= size
  if [int(s) for _, s in mesh].count(-1) > 1:
    raise ConfigError("config.parallel.mesh has more than one -1 axis")
  if int(config.batch_size) % fixed:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible"
        f" by the fixed data-parallel mesh axes (product {fixed}"
        " of the 'data'/'fsdp' sizes in config.parallel.mesh)"
    )


def _rule_axes(rules: Any) -> set[str]:
  """The mesh axes `logical_rules` maps logical axes to ((logical, mesh axis | (axes) | None))."""
  try:
    normalized = sharding.normalize_rules(rules)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.parallel.logical_rules: {e}") from None
  axes = set()
  for _, target in normalized:
    axes.update(a for a in (target if isinstance(target, tuple) else (target,)) if a is not None)
  return axes


def _check_evals(evals: Any) -> None:
  for name in evals or {}:
    entry = evals[name]
    if not config_lib.get(entry, "type"):
      raise ConfigError(f"config.evals.{name}.type is missing")
    if entry["type"] not in evaluators.EVALUATORS:
      raise ConfigError(
          f"config.evals.{name}.type={entry['type']!r} is not an evaluator; "
          f"known: {', '.join(evaluators.EVALUATORS)}"
      )
    _positive(f"evals.{name}.log_steps", config_lib.get(entry, "log_steps", 0))


def validate(config: Any) -> Any:
  """Raises `ConfigError` (a ValueError) naming the first bad field; returns
  `config` so a config file can end with `return config_check.validate(c)`."""
  expose_model_overrides(config)
  _one_of("task", config_lib.get(config, "task", "diffusion"), task_lib.TASKS)
  for key in ("total_steps", "batch_size", "log_every_steps"):
    _positive(key, config[key])
  _positive(
      "checkpoint.every_steps", config_lib.get(config.checkpoint, "every_steps"), allow_zero=True
  )
  _positive("checkpoint.keep", config_lib.get(config.checkpoint, "keep", 1))
  _one_of("nonfinite", config_lib.get(config, "nonfinite", "halt"), step_lib.NONFINITE_POLICIES)
  _positive(
      "nonfinite_max_skips", config_lib.get(config, "nonfinite_max_skips", 0), allow_zero=True
  )
  if not config_lib.get(config.text, "encoder"):
    raise ConfigError(
        "config.text.encoder is empty; give a T5 checkpoint "
        "directory or a built-in name (byt5-tiny-random)"
    )
  if config_lib.get(config.text, "max_length") is not None:
    _positive("text.max_length", config.text.max_length)
  _check_model_and_input(config)
  _check_input(config.input)
  _check_diffusion(config.diffusion)
  _check_sampling(config_lib.get(config, "sampling"))
  _check_optim(config.optim, config_lib.get(config, "ema"))
  _check_parallel(config)
  _check_evals(config_lib.get(config, "evals"))
  return config
