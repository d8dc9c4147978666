r"""The unCLIP / DALL-E 2 diffusion prior (Ramesh et al. 2022, §2.1): caption -> CLIP image
embedding, on the frozen T5-XXL encoder's tokens, with imported CLIP ViT-L/14 weights.

  python scripts/train.py --config configs/unclip.py:variant=paper,data=coco \
      --config.input.data_dir=gs://BUCKET/tfds \
      --config.text.encoder=/ckpt/t5-v1_1-xxl \
      --config.prior.clip=/ckpt/clip-vit-large-patch14 --workdir gs://BUCKET/prior
  python scripts/train.py --config configs/unclip.py:variant=tiny,runlocal \
      --config.prior.clip=/tmp/shapes_clip --workdir /tmp/prior_tiny

`config.prior.clip` (or `clip=` in the arg) is required: a Hugging Face CLIPModel directory
(openai/clip-vit-large-patch14: projection_dim 768, images resized to its 224), or, with
runlocal, a shapes CLIP run (configs/shapes.py:stage=clip; embed_dim 64, 16x16 input).
`imagen_jax.sampling.unclip.PriorSampler` samples a trained prior.

Args (`:k=v,...`):
  variant   paper | small | tiny (model size and the run's scale)
  runlocal  shrink to test size: shapes world, built-in text encoder, 3 steps
  steps     total steps (0: the variant's default)
  batch     global batch size (0: the variant's default)
  data      the training data (as configs/base64.py; default tfds:laion_subset)
  path, annotations  data=folder / coco_json (as configs/base64.py)
  encoder   the frozen T5 encoder directory (default: t5-v1_1-xxl, a directory you provide)
  clip      the CLIP directory (config.prior.clip)

From the paper: the prior's shape (unclip_prior/paper: width 2048, 24 blocks, 32 heads, ~1B
params; models/registry.py), x0 prediction with an unweighted MSE, the cosine schedule,
caption dropout for classifier-free guidance, 64 sampling steps. The paper's prior also reads
the CLIP text embedding and predicts with a causal transformer; ours reads the T5 tokens only
(full attention, a final query token). Ours (not from the paper): the optimizer settings,
batch sizes, EMA decay, bfloat16 compute and the FSDP axis size.
"""

import ml_collections

from imagen_jax import config_check
from imagen_jax import config_lib

# variant: global batch, total steps, warm-up steps, FSDP axis size, dtype.
_SIZES = {
    "paper": dict(batch=4096, steps=1_000_000, warmup=10_000, fsdp=8, dtype="bfloat16"),
    "small": dict(batch=256, steps=200_000, warmup=5_000, fsdp=1, dtype="bfloat16"),
    "tiny": dict(batch=8, steps=2_000, warmup=100, fsdp=1, dtype="float32"),
}
VIT_L14_DIM, VIT_L14_SIZE = 768, 224
SHAPES_CLIP_DIM, SHAPES_CLIP_SIZE = 64, 16  # configs/shapes.py:stage=clip (shapes_clip16/tiny)


def get_config(arg=None):
  arg = config_lib.parse_arg(
      arg,
      variant="paper",
      runlocal=False,
      steps=0,
      batch=0,
      encoder="",
      clip="",
      **config_lib.DATA_ARGS,
  )
  if arg.variant not in _SIZES:
    raise ValueError(f"Unknown variant {arg.variant!r}; allowed: {', '.join(_SIZES)}")
  size = _SIZES[arg.variant]
  tiny_text = arg.variant == "tiny" or arg.runlocal
  c = config_lib.stage_defaults()
  c.task = "prior"
  c.seed = 0
  c.total_steps = arg.steps or size["steps"]
  c.batch_size = arg.batch or size["batch"]
  c.log_every_steps = 100
  c.nonfinite = "skip" if arg.variant == "paper" else "halt"

  c.model.name = "unclip_prior"
  c.model.variant = arg.variant
  c.model.overrides.text_dim = config_lib.BUILTIN_DIM if tiny_text else config_lib.T5_XXL_DIM
  c.model.overrides.embed_dim = SHAPES_CLIP_DIM if arg.runlocal else VIT_L14_DIM
  c.model.overrides.dtype = size["dtype"]
  c.prior = ml_collections.ConfigDict({"clip": arg.clip})

  c.text.encoder = arg.encoder or (config_lib.BUILTIN_ENCODER if tiny_text else config_lib.T5_XXL)
  c.text.max_length = 128  # tokens (T5) or bytes (built-in ByT5)

  c.diffusion.schedule = "cosine"
  c.diffusion.prediction = "x0"
  c.diffusion.loss_weighting = "none"

  config_lib.set_dataset(c, arg.data, arg.path, arg.annotations)
  c.input.resolution = VIT_L14_SIZE  # the CLIP resizes and centre-crops to its own size
  c.input.lowres_resolution = None
  c.input.cond_drop_prob = 0.1
  c.input.crop = "centre"
  c.input.random_flip = False

  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.warmup_steps = size["warmup"]
  c.optim.decay = "cosine"
  c.optim.grad_clip_norm = 1.0
  c.ema.decay = 0.9999
  c.ema.warmup = True

  c.parallel.mode = "jit"
  c.parallel.mesh = (("data", -1), ("fsdp", size["fsdp"]))
  c.checkpoint.every_steps = 5_000 if arg.variant == "paper" else 1_000
  c.checkpoint.keep = 3

  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 64
  c.sampling.guidance_scale = 1.0  # PriorSampler.sample(guidance_scale=) sets it
  c.sampling.threshold = "none"  # embeddings at unit variance per dim, not in [-1, 1]

  if arg.runlocal:
    config_lib.set_dataset(c, "shapes")
    c.input.max_objects = 1
    c.input.resolution = SHAPES_CLIP_SIZE
    c.text.max_length = 80  # one-object shapes captions in bytes, + EOS
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
  """Learning rate x caption dropout (the CFG trade-off), 4 runs."""
  del arg
  for lr in (1e-4, 3e-4):
    for drop in (0.1, 0.2):
      add(**{"optim.lr": lr, "input.cond_drop_prob": drop})


def metrics():
  return ["loss", "cosine"]
