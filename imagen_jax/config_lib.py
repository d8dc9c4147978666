"""Shared config helpers: the `:arg` parser of `configs/*.py:arg` strings,
`get` (a config field or its default), periods and the stage defaults.

Semantics follow big_vision's ``configs/common.py:parse_arg``:
* ``parse_arg("variant=tiny,runlocal", variant="paper", runlocal=False)`` gives
  a ConfigDict with typed fields (types come from the defaults);
* a bare key (``runlocal``) means True for a boolean field;
* a single unnamed value fills the first field (``"tiny"`` -> variant);
* unknown keys raise ``ValueError`` naming the key and the known ones.
"""

import sys

from absl import flags
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
    raise ValueError(f"Config arg {key}={value!r} is not a {type(default).__name__}") from None
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
      raise ValueError(f"Unknown config arg {key!r} in {arg!r}; known: {', '.join(spec)}")
    if not eq:
      if not isinstance(spec[key], bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...)")
      value = "true"
    result[key] = _convert(key, value.strip(), spec[key])
  return result


def get(group, key, default=None):
  """`group`'s field `key`, or `default` when it is missing or None.

  `group` may be a ConfigDict or dict (`.get`), any other object (an
  attribute), or None (then `default`).
  """
  if group is None:
    return default
  if hasattr(group, "get"):
    value = group.get(key, default)
  else:
    value = getattr(group, key, default)
  return default if value is None else value


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
  # Imported here so that `import imagen_jax.config_lib` stays free of jax
  # (data.input_pipeline imports it for `get`); diffusion imports no config.
  from imagen_jax import diffusion  # pylint: disable=import-outside-toplevel

  placeholder = ml_collections.config_dict.placeholder
  c = ml_collections.ConfigDict()
  c.task = "diffusion"  # "diffusion" | "classifier" (train/task.py: TASKS)
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32  # global, over all processes and devices
  c.log_every_steps = 50
  c.sample_every_steps = 0  # 0: no periodic sample grids
  c.sample_prompts = ()
  c.nonfinite = "halt"  # "skip" | "halt"
  c.nonfinite_max_skips = 0  # under "skip": halt past this many skipped steps (0: no bound)
  c.init_from = placeholder(str)  # a checkpoint dir: params only
  c.resume_from = placeholder(str)  # a checkpoint dir: full state

  c.model = ml_collections.ConfigDict(dict(name="", variant="tiny"))
  c.model.overrides = ml_collections.ConfigDict()

  c.diffusion = ml_collections.ConfigDict(
      dict(
          schedule="cosine",
          prediction="eps",
          loss_weighting="none",
          min_snr_gamma=5.0,
          log_snr_min=-20.0,
          log_snr_max=20.0,
          log_snr_shift=0.0,  # diffusion.get_schedule(shift=): + 2 log(r_ref / r)
          aug_schedule="cosine",
          aug_range=(0.0, 1.0),
          lowres_blur=(0.0, 0.0),  # SR stages: Gaussian blur of the low-res input (pipeline)
      )
  )

  c.text = ml_collections.ConfigDict(
      dict(encoder="byt5-tiny-random", max_length=placeholder(int), cache_dir=placeholder(str))
  )

  c.input = ml_collections.ConfigDict(
      dict(
          dataset="shapes",
          split="train",
          max_objects=3,
          labels=False,  # shapes: also yield scene labels (the classifier task)
          resolution=64,
          lowres_resolution=placeholder(int),
          cond_drop_prob=0.1,
          num_workers=2,
          prefetch_batches=2,
          # Bad data (data/input_pipeline.py): images decoding to more MB are skipped
          # (from their header); "skip" | "error" for a caption file that is not UTF-8;
          # manifest/COCO paths that are absolute or have '..' are refused unless
          # allowed; a record not read within read_timeout_s stops the run.
          max_decoded_mb=256.0,
          bad_caption="skip",
          allow_outside_root=False,
          read_timeout_s=300.0,
      )
  )

  c.optim = ml_collections.ConfigDict(
      dict(
          name="adam",
          lr=1e-4,
          warmup_steps=0,
          decay="constant",
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.0,
          grad_clip_norm=1.0,
          # "off" | "auto" | "on": the step's update on flat buffers, not tensor by tensor
          # (train/fused_update.py; Adam/AdamW, replicated params; the same values). Off: on
          # XLA:CPU it compiles slower, with several times the temp memory (BENCHMARKS.md).
          fused_update="off",
      )
  )
  c.ema = ml_collections.ConfigDict(dict(decay=0.9999, warmup=True))

  c.parallel = ml_collections.ConfigDict(
      dict(mode="jit", mesh=(("data", -1), ("fsdp", 1)), min_fsdp_size_mb=4.0, logical_rules=())
  )

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))

  c.sampling = ml_collections.ConfigDict(
      dict(
          sampler="ddpm",
          num_steps=256,
          guidance_scale=1.0,
          threshold="dynamic",
          percentile=diffusion.DEFAULT_PERCENTILE,
          aug_level=0.0,
      )
  )
  c.evals = ml_collections.ConfigDict()
  return c


# Imagen's text encoder, and the built-in one that tiny/runlocal runs use.
T5_XXL = "t5-v1_1-xxl"
T5_XXL_DIM = 4096
BUILTIN_ENCODER = "byt5-tiny-random"
BUILTIN_DIM = 64


# The paper stages' default training data: a dataset the user prepares with
# scripts/prepare_data.py (e.g. LAION-style webdataset tars), not COCO, whose
# 2014 val split is the zero-shot FID-30K reference (docs/evaluation.md).
DEFAULT_DATA = "tfds:laion_subset"
DATA_HELP = (
    "tfds:NAME (a TFDS or prepare_data.py dataset; "
    "--config.input.data_dir) | coco (tfds:coco_captions) | "
    "coco_json (with annotations= and path= args) | folder (with "
    "path=) | shapes | a folder path"
)
# The `:arg` fields of a stage config that name the data (parse_arg specs).
DATA_ARGS = dict(data=DEFAULT_DATA, path="", annotations="")


def set_dataset(c, data, path="", annotations=""):
  """Points `c.input` at the data named by a config's `data=` arg.

  `data` is one of DATA_HELP's forms; `path` (folder, coco_json's images)
  and `annotations` (coco_json's captions_*.json) come from the config arg,
  e.g. `configs/base64.py:data=coco_json,annotations=A.json,path=DIR`
  (local or gs://). Every source field (path, manifest, annotations,
  data_dir) exists in the config either way, so the locked config also takes
  `--config.input.<field>=...` for any of them.
  """
  placeholder = ml_collections.config_dict.placeholder
  for field, default in (
      ("path", ""),
      ("manifest", placeholder(str)),
      ("annotations", placeholder(str)),
      ("data_dir", placeholder(str)),
  ):
    if field not in c.input:
      c.input[field] = default
  c.input.split = "train"
  if path:
    c.input.path = path
  if annotations:
    c.input.annotations = annotations
  if data == "coco":
    c.input.dataset = "tfds:coco_captions"
  elif data == "shapes":
    c.input.dataset = "shapes"
  elif data in ("folder", "coco_json"):
    needs = ["path"] + (["annotations"] if data == "coco_json" else [])
    missing = [k for k in needs if not c.input[k]]
    if missing:
      raise ValueError(
          f"data={data} needs {' and '.join(f'{k}=...' for k in missing)} in "
          "the config arg, e.g. configs/base64.py:data=coco_json,annotations="
          "captions_train2014.json,path=train2014 (or data=folder,path=DIR)"
      )
    c.input.dataset = data
  elif data.startswith("tfds:"):
    if len(data) == len("tfds:"):
      raise ValueError(f"data={data!r} needs a dataset name: tfds:NAME")
    c.input.dataset = data
  elif data:
    c.input.dataset = "folder"
    c.input.path = data
  else:
    raise ValueError(f"data={data!r}; expected {DATA_HELP}")


def grid_every(total_steps: int) -> int:
  """The default `sample_every_steps` of a run of `total_steps`: about ten grids per run,
  at least 500 and at most 10,000 steps apart."""
  return min(10_000, max(500, int(total_steps) // 10))


# SR stages, per variant: global batch, total steps, warm-up, FSDP size, dtype.
SR_SIZES = {
    "paper": dict(batch=2048, steps=2_500_000, warmup=10_000, fsdp=4, dtype="bfloat16"),
    "small": dict(batch=32, steps=300_000, warmup=10_000, fsdp=1, dtype="bfloat16"),
    "tiny": dict(batch=8, steps=2_000, warmup=100, fsdp=1, dtype="float32"),
}


def imagen_sr_config(
    arg, *, model, resolution, lowres_resolution, crop_size=None, sampling_steps=128
):
  """The shared body of Imagen's SR stage configs (configs/sr256.py, sr1024.py).

  `arg` comes from `parse_arg(arg, variant=, runlocal=, steps=, batch=,
  encoder=, **DATA_ARGS)`; `crop_size` trains on random crops of the full-resolution
  target (the 256->1024 stage), `sampling_steps` is the default sampler length.
  """
  if arg.variant not in SR_SIZES:
    raise ValueError(f"Unknown variant {arg.variant!r}; allowed: {', '.join(SR_SIZES)}")
  size = SR_SIZES[arg.variant]
  tiny_text = arg.variant == "tiny" or arg.runlocal
  c = stage_defaults()
  c.seed = 0
  c.total_steps = arg.steps or size["steps"]
  c.batch_size = arg.batch or size["batch"]
  c.log_every_steps = 100
  # A grid of fixed low-res inputs and their samples (train/stage_samples.py).
  c.sample_every_steps = grid_every(c.total_steps)
  c.nonfinite = "skip" if arg.variant == "paper" else "halt"

  c.model.name = model
  c.model.variant = arg.variant
  c.model.overrides.text_dim = BUILTIN_DIM if tiny_text else T5_XXL_DIM
  c.model.overrides.dtype = size["dtype"]

  c.text.encoder = arg.encoder or (BUILTIN_ENCODER if tiny_text else T5_XXL)
  c.text.max_length = 128  # tokens (T5) or bytes (built-in ByT5)

  c.diffusion.schedule = "linear"  # super-resolution stages: linear
  c.diffusion.prediction = "eps"
  c.diffusion.loss_weighting = "none"
  c.diffusion.aug_schedule = "linear"
  c.diffusion.aug_range = (0.0, 1.0)  # training augmentation level ~ U[0, 1]

  set_dataset(c, arg.data, arg.get("path", ""), arg.get("annotations", ""))
  c.input.resolution = resolution
  c.input.lowres_resolution = lowres_resolution
  c.input.crop_size = ml_collections.config_dict.placeholder(int)
  if crop_size:
    c.input.crop_size = crop_size
  c.input.cond_drop_prob = 0.1
  c.input.crop = "centre"
  c.input.random_flip = False

  c.optim.name = "adam"  # Adam for the super-resolution stages
  c.optim.lr = 1e-4
  c.optim.warmup_steps = size["warmup"]
  c.optim.decay = "constant"
  c.optim.grad_clip_norm = 1.0
  c.ema.decay = 0.9999
  c.ema.warmup = True

  c.parallel.mode = "jit"
  c.parallel.mesh = (("data", -1), ("fsdp", size["fsdp"]))

  c.checkpoint.every_steps = 5_000 if arg.variant == "paper" else 1_000
  c.checkpoint.keep = 3

  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = sampling_steps
  c.sampling.guidance_scale = 5.0
  c.sampling.threshold = "dynamic"  # at stage_defaults' DEFAULT_PERCENTILE
  c.sampling.aug_level = 0.0

  if arg.runlocal:
    set_dataset(c, "shapes")
    c.sample_every_steps = 0
    c.input.max_objects = 1
    c.input.crop_size = 64
    c.total_steps = arg.steps or 3
    c.batch_size = arg.batch or 8
    c.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 1
    c.optim.warmup_steps = 1
    c.parallel.mesh = (("data", -1), ("fsdp", 1))
    c.model.overrides.dtype = "float32"
    c.sampling.num_steps = 4
    c.input.num_workers = 0
    c.input.prefetch_batches = 1
  return c


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run(main, flags_parser=config_lib.parse_flags)`: absl's flag parsing, where a bad
  `--config.*` override (a typo in a key, a value of the wrong type) ends on one line naming
  it instead of ml_collections' traceback (absl's own parser only catches `flags.Error`)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = " ".join(str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").split())
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    message = f"bad --config override ({type(e).__name__}: {message}); given: {' '.join(bad)}"
  print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
  print("Pass --helpfull to see help on flags.", file=sys.stderr)
  sys.exit(1)
