r"""Imagen base stage: 64x64 text-to-image U-Net (Saharia et al. 2022, App. F).

  python scripts/prepare_data.py --source webdataset --path 'gs://BUCKET/laion/*.tar' \
      --name laion_subset --output_dir gs://BUCKET/tfds --num_shards 256
  python scripts/train.py --config configs/base64.py:variant=paper \
      --config.input.data_dir=gs://BUCKET/tfds \
      --config.text.encoder=/ckpt/t5-v1_1-xxl --workdir gs://BUCKET/base64
  python scripts/train.py --config configs/base64.py:variant=tiny,runlocal \
      --workdir /tmp/base64_tiny

Args (`:k=v,...`):
  variant   paper | small | tiny (model size and the run's scale)
  runlocal  shrink to test size: shapes world, built-in text encoder, 3 steps
  steps     total steps (0: the variant's default)
  batch     global batch size (0: the variant's default)
  data      the training data. Default tfds:laion_subset: a dataset you
            prepare with scripts/prepare_data.py (e.g. from img2dataset
            webdataset tars; docs/launching.md "Preparing data"), as Imagen
            trains on web data and keeps COCO for its zero-shot FID.
            tfds:NAME (with --config.input.data_dir) | coco (TFDS
            coco_captions) | coco_json (with annotations= and path=) | folder
            (with path=: images with .txt captions, or
            --config.input.manifest) | shapes | a folder path
  path      data=folder: the image folder; data=coco_json: the image folder
  annotations  data=coco_json: the captions_*.json (paths local or gs://)
  encoder   the frozen T5 encoder: a local Hugging Face or t5x directory
            (default: t5-v1_1-xxl, a directory you provide) or a built-in name
  inpaint   GLIDE-style inpainting base: the masked image and the mask as 4 extra
            input channels, trained on random box masks (config.inpaint)
  decoder_clip  unCLIP's 64x64 decoder: the base U-Net conditioned on this CLIP's image
            embeddings (a Hugging Face CLIPModel directory, e.g. clip-vit-large-patch14, or
            with runlocal a configs/shapes.py:stage=clip run); caption dropped 50%, the
            embedding 10% (DALL-E 2); sample it after configs/unclip.py's prior
  decoder_dim   the CLIP's projection_dim (768 for ViT-L/14; 64 for a shapes CLIP)
  inception FID Inception weights (pt_inception-2015-12-05 .pth): adds an
            in-loop FID of the 64x64 samples (evals.fid); none by default

From the paper (`variant=paper`): the 2B U-Net (models/registry.py), frozen
T5-XXL text embeddings, batch 2048, Adafactor with lr 1e-4 after 10k linear
warm-up steps (constant afterwards), 2.5M steps, 10% caption dropout for
classifier-free guidance, dynamic thresholding at the 99.5th percentile.
Ours (not confirmed in the paper): the cosine noise schedule (Nichol & Dhariwal's,
as imagen-pytorch's base stage), EMA decay 0.9999, gradient clipping at 1.0,
128 text tokens, bfloat16 compute, the FSDP axis size, the sampler step count
and the default guidance weight (the paper sweeps the guidance weight).
"""

import ml_collections

from imagen_jax import config_check
from imagen_jax import config_lib
from imagen_jax import diffusion

# variant: global batch, total steps, warm-up steps, FSDP axis size, dtype.
_SIZES = {
    "paper": dict(batch=2048, steps=2_500_000, warmup=10_000, fsdp=8, dtype="bfloat16"),
    "small": dict(batch=64, steps=300_000, warmup=10_000, fsdp=1, dtype="bfloat16"),
    "tiny": dict(batch=8, steps=2_000, warmup=100, fsdp=1, dtype="float32"),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(
      arg,
      variant="paper",
      runlocal=False,
      steps=0,
      batch=0,
      encoder="",
      inception="",
      inpaint=False,
      decoder_clip="",
      decoder_dim=768,
      **config_lib.DATA_ARGS,
  )
  if arg.variant not in _SIZES:
    raise ValueError(f"Unknown variant {arg.variant!r}; allowed: {', '.join(_SIZES)}")
  size = _SIZES[arg.variant]
  tiny_text = arg.variant == "tiny" or arg.runlocal
  c = config_lib.stage_defaults()
  c.seed = 0
  c.total_steps = arg.steps or size["steps"]
  c.batch_size = arg.batch or size["batch"]
  c.log_every_steps = 100
  c.sample_every_steps = config_lib.grid_every(c.total_steps)  # grids of sample_prompts
  c.nonfinite = "skip" if arg.variant == "paper" else "halt"

  c.model.name = "imagen_base64"
  c.model.variant = arg.variant
  c.model.overrides.text_dim = config_lib.BUILTIN_DIM if tiny_text else config_lib.T5_XXL_DIM
  c.model.overrides.dtype = size["dtype"]
  if arg.inpaint and arg.decoder_clip:
    raise ValueError("inpaint=True and decoder_clip=: one base stage is one or the other")
  if arg.decoder_clip:
    c.model.overrides.image_embed_dim = int(arg.decoder_dim)
    c.decoder = ml_collections.ConfigDict({"clip": arg.decoder_clip, "embed_drop_prob": 0.1})
  if arg.inpaint:
    c.model.overrides.image_cond_channels = 4
    c.inpaint = ml_collections.ConfigDict({"mask_box": (0.25, 0.75), "p_nothing_known": 0.1})

  c.text.encoder = arg.encoder or (config_lib.BUILTIN_ENCODER if tiny_text else config_lib.T5_XXL)
  c.text.max_length = 128  # tokens (T5) or bytes (built-in ByT5)

  c.diffusion.schedule = "cosine"  # the base model's schedule
  c.diffusion.prediction = "eps"
  c.diffusion.loss_weighting = "none"
  c.diffusion.aug_schedule = "cosine"  # unused: no low-res input
  c.diffusion.aug_range = (0.0, 1.0)

  config_lib.set_dataset(c, arg.data, arg.path, arg.annotations)
  c.input.resolution = 64
  c.input.lowres_resolution = None
  c.input.cond_drop_prob = 0.5 if arg.decoder_clip else 0.1  # caption dropout (CFG)
  c.input.crop = "centre"
  c.input.random_flip = False

  c.optim.name = "adafactor"  # Adafactor for the base model
  c.optim.lr = 1e-4
  c.optim.warmup_steps = size["warmup"]
  c.optim.decay = "constant"
  c.optim.b1 = 0.9
  c.optim.grad_clip_norm = 1.0
  c.ema.decay = 0.9999
  c.ema.warmup = True

  c.parallel.mode = "jit"
  c.parallel.mesh = (("data", -1), ("fsdp", size["fsdp"]))

  c.checkpoint.every_steps = 5_000 if arg.variant == "paper" else 1_000
  c.checkpoint.keep = 3

  c.sampling.sampler = "ddpm"
  c.sampling.num_steps = 256
  c.sampling.guidance_scale = 5.0
  c.sampling.threshold = "dynamic"
  c.sampling.percentile = diffusion.DEFAULT_PERCENTILE
  c.sample_prompts = (
      "A brown corgi wearing a red bowtie.",
      "A photo of a raccoon reading a book in a library.",
  )

  # In-loop FID of the base stage's 64x64 samples, when `inception=` names the
  # FID Inception weights (docs/evaluation.md): against the shapes world's
  # held-out split (data=shapes, runlocal), else zero-shot against COCO val2014
  # captions and images (TFDS coco_captions in the same data_dir), whatever the
  # training data. The paper's FID-30K is of the whole cascade:
  # scripts/eval_fid.py.
  if arg.inception:
    shapes = arg.data == "shapes" or arg.runlocal
    c.evals.fid = dict(
        type="fid",
        log_steps=100_000 if arg.variant == "paper" else 10_000,
        num_samples=30_000 if arg.variant == "paper" else 5_000,
        resolution=64,
        dataset="shapes" if shapes else "coco",
        tfds_name=None if shapes else "coco_captions",
        inception_weights=arg.inception,
        sample_batch_size=256,
    )
    if not shapes:
      c.evals.fid.data_dir = c.input.get_ref("data_dir")

  if arg.runlocal:
    config_lib.set_dataset(c, "shapes")
    c.input.max_objects = 1
    c.total_steps = arg.steps or 3
    c.batch_size = arg.batch or 8
    c.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 1
    c.optim.warmup_steps = 1
    c.parallel.mesh = (("data", -1), ("fsdp", 1))
    c.model.overrides.dtype = "float32"
    c.sampling.num_steps = 4
    c.sample_prompts = ()
    c.sample_every_steps = 0
    c.input.num_workers = 0
    c.input.prefetch_batches = 1
    for name in c.evals:
      c.evals[name].log_steps = c.total_steps
      c.evals[name].num_samples = 8
      c.evals[name].sample_batch_size = 8
  return config_check.validate(c)


def sweep(add, arg=None):
  """Learning rate x caption dropout (the CFG trade-off), 4 runs."""
  del arg
  for lr in (1e-4, 3e-4):
    for drop in (0.1, 0.2):
      add(**{"optim.lr": lr, "input.cond_drop_prob": drop})


def metrics():
  return ["loss", "fid/fid"]  # fid/fid: with `inception=`
