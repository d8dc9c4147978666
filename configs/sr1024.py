r"""Imagen super-resolution stage 256 -> 1024: Efficient U-Net on crops.

  python scripts/train.py --config configs/sr1024.py:variant=paper \
      --config.text.encoder=/ckpt/t5-v1_1-xxl --workdir gs://BUCKET/sr1024
  python scripts/train.py --config configs/sr1024.py:variant=tiny,runlocal \
      --workdir /tmp/sr1024_tiny

Args (`:k=v,...`):
  variant   paper | small | tiny (model size and the run's scale)
  runlocal  shrink to test size: shapes world, built-in text encoder, 3 steps
            on 64x64 crops (16x16 low-res) of the 1024x1024 image
  steps     total steps (0: the variant's default)
  batch     global batch size (0: the variant's default)
  data      coco (TFDS coco_captions) | shapes | a folder path
  encoder   the frozen T5 encoder: a local Hugging Face or t5x directory
            (default: t5-v1_1-xxl, a directory you provide) or a built-in name

From the paper (`variant=paper`): the ~400M Efficient U-Net without
self-attention (T5-XXL text cross-attention at the lowest level only), trained
on 256x256 crops of the 1024x1024 target with the matching 64x64 crops of the
256x256 low-res image (the network is convolutional, so it samples at full
size), batch 2048, Adam with lr 1e-4 after 10k linear warm-up steps, the linear
noise schedule for the super-resolution stages (the base uses cosine), 10%
caption dropout, and noise-conditioning augmentation: the low-res input is
noised to a level drawn uniformly from [0, 1] during training, and the level
is given to the network. Ours (the paper does not say): gradient clipping at
1.0, 128 text tokens, bfloat16 compute, the FSDP axis size, the schedule of
the augmentation noise (linear, as imagen-pytorch), 2.5M steps (as the base),
and the sampling defaults (the paper sweeps the augmentation level at
sampling time).
"""

import ml_collections

from imagen_jax import config_check
from imagen_jax import config_lib

T5_XXL = "t5-v1_1-xxl"
T5_XXL_DIM = 4096
BUILTIN_ENCODER = "byt5-tiny-random"
BUILTIN_DIM = 64

_SIZES = {
    "paper": dict(batch=2048, steps=2_500_000, warmup=10_000, fsdp=4,
                  dtype="bfloat16"),
    "small": dict(batch=32, steps=300_000, warmup=10_000, fsdp=1,
                  dtype="bfloat16"),
    "tiny": dict(batch=8, steps=2_000, warmup=100, fsdp=1, dtype="float32"),
}


def _dataset(c, data):
  if data == "coco":
    c.input.dataset = "tfds:coco_captions"
    c.input.split = "train"
  elif data == "shapes":
    c.input.dataset = "shapes"
    c.input.split = "train"
  else:
    c.input.dataset = "folder"
    c.input.path = data


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="paper", runlocal=False, steps=0,
                             batch=0, data="coco", encoder="")
  if arg.variant not in _SIZES:
    raise ValueError(f"Unknown variant {arg.variant!r}; allowed: "
                     f"{', '.join(_SIZES)}")
  size = _SIZES[arg.variant]
  tiny_text = arg.variant == "tiny" or arg.runlocal
  c = config_lib.stage_defaults()
  c.seed = 0
  c.total_steps = arg.steps or size["steps"]
  c.batch_size = arg.batch or size["batch"]
  c.log_every_steps = 100
  c.sample_every_steps = 0             # SR stages sample only in the cascade
  c.nonfinite = "skip" if arg.variant == "paper" else "halt"

  c.model.name = "imagen_sr1024"
  c.model.variant = arg.variant
  c.model.overrides.text_dim = BUILTIN_DIM if tiny_text else T5_XXL_DIM
  c.model.overrides.dtype = size["dtype"]

  c.text.encoder = arg.encoder or (BUILTIN_ENCODER if tiny_text else T5_XXL)
  c.text.max_length = 128               # tokens (T5) or bytes (built-in ByT5)

  c.diffusion.schedule = "linear"      # super-resolution stages: linear
  c.diffusion.prediction = "eps"
  c.diffusion.loss_weighting = "none"
  c.diffusion.aug_schedule = "linear"
  c.diffusion.aug_range = (0.0, 1.0)   # training augmentation level ~ U[0, 1]

  c.input.path = ""                    # dataset=folder: the image folder
  c.input.manifest = ml_collections.config_dict.placeholder(str)
  c.input.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir
  _dataset(c, arg.data)
  c.input.resolution = 1024
  c.input.lowres_resolution = 256
  c.input.crop_size = ml_collections.config_dict.placeholder(int)
  c.input.crop_size = 256              # 256x256 crops (64x64 low-res crops)
  c.input.cond_drop_prob = 0.1
  c.input.crop = "centre"
  c.input.random_flip = False

  c.optim.name = "adam"                # Adam for the super-resolution stages
  c.optim.lr = 1e-4
  c.optim.warmup_steps = size["warmup"]
  c.optim.decay = "constant"
  c.optim.grad_clip_norm = 1.0
  c.ema.decay = 0.9999
  c.ema.warmup = True

  c.parallel.mode = "pjit"
  c.parallel.mesh = (("data", -1), ("fsdp", size["fsdp"]))

  c.checkpoint.every_steps = 5_000 if arg.variant == "paper" else 1_000
  c.checkpoint.keep = 3

  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 64
  c.sampling.guidance_scale = 5.0
  c.sampling.threshold = "dynamic"
  c.sampling.percentile = 0.995
  c.sampling.aug_level = 0.0

  if arg.runlocal:
    _dataset(c, "shapes")
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
  return config_check.validate(c)


def sweep(add, arg=None):
  """Learning rate x training crop size, 4 runs."""
  del arg
  for lr in (5e-5, 1e-4):
    for crop in (128, 256):
      add(**{"optim.lr": lr, "input.crop_size": crop})


def metrics():
  return ["loss"]
