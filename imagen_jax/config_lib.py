"""Shared config helpers: the `:arg` parser of `configs/*.py:arg` strings.

Semantics follow big_vision's ``configs/common.py:parse_arg``:
* ``parse_arg("variant=tiny,runlocal", variant="paper", runlocal=False)`` gives
  a ConfigDict with typed fields (types come from the defaults);
* a bare key (``runlocal``) means True for a boolean field;
* a single unnamed value fills the first field (``"tiny"`` -> variant);
* unknown keys raise ``ValueError`` naming the key and the known ones.
"""

import ml_collections

_TRUE = ("1", "true", "yes", "on", "")
_FALSE = ("0", "false", "no", "off")


def _convert(key, value, default):
  if isinstance(default, bool):
    low = value.lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"Config arg {key}={value!r} is not a boolean")
  try:
    if isinstance(default, int):
      return int(value)
    if isinstance(default, float):
      return float(value)
  except ValueError:
    raise ValueError(f"Config arg {key}={value!r} is not a "
                     f"{type(default).__name__}") from None
  return value


def parse_arg(arg, **spec):
  """Parses "k=v,k2,..." against typed defaults; see the module docstring."""
  if not spec:
    raise ValueError("parse_arg needs at least one field with a default")
  result = ml_collections.ConfigDict(dict(spec))
  if arg is None or not str(arg).strip():
    return result
  items = [item.strip() for item in str(arg).split(",") if item.strip()]
  first = next(iter(spec))
  if len(items) == 1 and "=" not in items[0] and items[0] not in spec:
    items = [f"{first}={items[0]}"]
  for item in items:
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ValueError(f"Unknown config arg {key!r} in {arg!r}; known: "
                       f"{', '.join(spec)}")
    if not eq:
      if not isinstance(spec[key], bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...)")
      value = "true"
    result[key] = _convert(key, value.strip(), spec[key])
  return result


def itstime(step, every, total, *, first=True, last=True, drop_close=0.25):
  """Whether a periodic action runs at `step` (1-based), as big_vision's.

  True on multiples of `every`, except those within `drop_close * every` steps
  before the end (the last step runs it anyway); on step 1 when `first`; on
  the final step when `last`. `every` <= 0 or None disables the action.
  """
  if not every or every <= 0:
    return False
  if (last and step == total) or (first and step == 1):
    return True
  close_to_end = 0 < total - step < drop_close * every
  return step % every == 0 and not close_to_end


def stage_defaults():
  """The fields every stage config has, with neutral defaults.

  Config files start from this and override what their stage needs; the
  groups follow STYLE.md §2.1 (model, diffusion, text, input, optim, ema,
  parallel, checkpoint, sampling, evals).
  """
  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32                 # global, over all processes and devices
  c.log_every_steps = 50
  c.sample_every_steps = 0          # 0: no periodic sample grids
  c.sample_prompts = ()
  c.nonfinite = "halt"              # "skip" | "halt"
  c.init_from = placeholder(str)    # a checkpoint dir: params only
  c.resume_from = placeholder(str)  # a checkpoint dir: full state

  c.model = ml_collections.ConfigDict(dict(name="", variant="tiny"))
  c.model.overrides = ml_collections.ConfigDict()

  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="cosine", prediction="eps", loss_weighting="none",
      min_snr_gamma=5.0, log_snr_min=-20.0, log_snr_max=20.0,
      aug_schedule="cosine", aug_range=(0.0, 1.0)))

  c.text = ml_collections.ConfigDict(dict(
      encoder="byt5-tiny-random", max_length=placeholder(int),
      cache_dir=placeholder(str)))

  c.input = ml_collections.ConfigDict(dict(
      dataset="shapes", split="train", max_objects=3, resolution=64,
      lowres_resolution=placeholder(int), cond_drop_prob=0.1, num_workers=2,
      prefetch_batches=2))

  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-4, warmup_steps=0, decay="constant", b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0))
  c.ema = ml_collections.ConfigDict(dict(decay=0.9999, warmup=True))

  c.parallel = ml_collections.ConfigDict(dict(
      mode="pjit", mesh=(("data", -1), ("fsdp", 1)), min_fsdp_size_mb=4.0,
      logical_rules=()))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True))

  c.sampling = ml_collections.ConfigDict(dict(
      sampler="ddpm", num_steps=256, guidance_scale=1.0,
      threshold="dynamic", percentile=0.995, aug_level=0.0))
  c.evals = ml_collections.ConfigDict()
  return c
