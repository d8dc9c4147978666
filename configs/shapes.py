r"""The embedded default: a small cascade on the synthetic shapes world.

Three stages, trained one after the other on the CPU by `scripts/demo.py`,
all conditioned on the built-in, untrained byte-level T5 encoder
`byt5-tiny-random`:
  stage=base  16x16 base U-Net (`shapes_base16`);
  stage=sr1   16 -> 32 Efficient U-Net (`shapes_sr32`) with
              noise-conditioning augmentation;
  stage=sr2   32 -> 64 Efficient U-Net (`shapes_sr64`), likewise.
And the guide of classifier guidance, trained by the same trainer:
  stage=classifier  noise-aware 16x16 classifier (`shapes_classifier16`, ADM's half
              U-Net) of the first object's colour, shape, size and place, on images noised at
              t ~ U[0, 1] (`config.task = "classifier"`).
And the guide of CLIP guidance, GLIDE's noised CLIP:
  stage=clip  noise-aware 16x16 CLIP (`shapes_clip16`: the classifier's half U-Net +
              a byte-level text transformer), symmetric InfoNCE between images noised at
              t ~ U[0, 1] and their captions, equal captions as positives
              (`config.task = "clip"`; `imagen_jax.clip.load_clip(workdir)` reads it).
And the unCLIP diffusion prior, caption -> that CLIP's image embedding:
  stage=prior  `shapes_prior` (a small transformer, x0 prediction) on the frozen text
              encoder's tokens and the frozen CLIP of `--config.prior.clip=DIR` (a
              stage=clip run; required), `config.task = "prior"`;
              `imagen_jax.sampling.unclip.PriorSampler` samples it.
And GLIDE's inpainting model:
  stage=inpaint  the 16x16 base U-Net with the masked image and the mask as 4 extra
              input channels, trained on random box masks (`config.inpaint`).
And unCLIP's decoder (the prior above maps a caption to its input):
  stage=decoder  the 16x16 base U-Net conditioned on the CLIP image embedding of
              `--config.decoder.clip=DIR` (a stage=clip run; required) and the caption.
The base works at 16x16 because on two CPU cores a 32x32 step costs 4x as
much, and the base stage is where the text has to be learned.

  python scripts/train.py --config configs/shapes.py:stage=base \
      --workdir /tmp/shapes_base
  python scripts/train.py --config configs/shapes.py:stage=sr1,runlocal \
      --workdir /tmp/shapes_sr1

Args (`:k=v,...`): stage (base|sr1|sr2|classifier|clip|inpaint|prior|decoder), variant
(tiny|small), runlocal (shrink to test size), steps (0: the stage's default), objects (max
objects per scene), shift (the noise schedule's log-SNR shift; 0: none).
"""

import ml_collections

from imagen_jax import config_check
from imagen_jax import config_lib

_STAGES = {
    # name: (model, resolution, lowres, steps, batch, lr)
    "base": ("shapes_base16", 16, None, 1500, 32, 1e-3),
    "sr1": ("shapes_sr32", 32, 16, 1500, 32, 1e-3),
    # 1000 steps: the demo's validation cascade 0.833 (background noise 6.8) vs 0.787 (12.3)
    # at 400 steps, where the 64x64 stage lost objects and left speckle.
    "sr2": ("shapes_sr64", 64, 32, 1000, 16, 1e-3),
    "classifier": ("shapes_classifier16", 16, None, 2500, 64, 1e-3),
    "clip": ("shapes_clip16", 16, None, 1500, 64, 1e-3),
    "prior": ("shapes_prior", 16, None, 1500, 64, 1e-3),
    "inpaint": ("shapes_base16", 16, None, 1500, 32, 1e-3),
    "decoder": ("shapes_base16", 16, None, 1500, 32, 1e-3),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(
      arg, stage="base", variant="tiny", runlocal=False, steps=0, objects=1, shift=0.0
  )
  if arg.stage not in _STAGES:
    raise ValueError(f"Unknown stage {arg.stage!r}; allowed: {', '.join(_STAGES)}")
  model, res, lowres, steps, batch, lr = _STAGES[arg.stage]
  c = config_lib.stage_defaults()
  c.seed = 0
  c.total_steps = arg.steps or steps
  c.batch_size = batch
  c.log_every_steps = 100

  c.model.name = model
  c.model.variant = arg.variant
  c.model.overrides.text_dim = 64  # byt5-tiny-random's d_model

  c.text.encoder = "byt5-tiny-random"
  # ByT5 counts bytes: the longest captions are 71 / 106 / 142 bytes for
  # 1 / 2 / 3 objects, plus EOS.
  c.text.max_length = {1: 80, 2: 112}.get(arg.objects, 160)

  c.diffusion.schedule = "cosine"
  # shift=S: the log-SNR shift of diffusion.get_schedule (the demo's 16x16 base takes
  # 2 log(64 / 16) = 2.77, simple diffusion's for a schedule made for 64x64; the guidance
  # family's guides are trained on the unshifted schedule, so their base keeps 0).
  c.diffusion.log_snr_shift = float(arg.shift)
  if lowres is None:
    c.diffusion.prediction = "eps"
    c.diffusion.loss_weighting = "min_snr"
    c.diffusion.min_snr_gamma = 5.0
  else:
    # SR stages: v-prediction, unweighted. Its loss weighs the x0 error by
    # 1 + snr, so even at high noise the network is pushed to read x0 off the
    # low-res input; eps (or min-SNR) weighs it by snr ~ 0 there, and an SR
    # stage trained that way ignores its input early in sampling.
    c.diffusion.prediction = "v"
    c.diffusion.loss_weighting = "none"
  # Low-res noise augmentation up to t=0.2: with 0.5 the 16->32 stage washed
  # out small objects (held-out cascade accuracy 0.58 vs 0.71 at w=3).
  c.diffusion.aug_range = (0.0, 0.2)

  c.input.dataset = "shapes"
  c.input.split = "train"  # held-out colour/shape pairs unseen
  c.input.max_objects = arg.objects
  c.input.path = ""  # dataset=folder: an image folder instead
  c.input.resolution = res
  c.input.lowres_resolution = lowres
  c.input.cond_drop_prob = 0.1

  c.optim.name = "adam"
  c.optim.lr = lr
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.optim.grad_clip_norm = 1.0
  c.ema.decay = 0.999
  c.ema.warmup = True

  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 2

  # A grid every 500 steps (workdir/samples/*.png and TensorBoard): base stages draw these
  # captions (the first four name held-out colour/shape pairs), SR stages upsample fixed
  # renders of held-out scenes (train/stage_samples.py).
  c.sample_every_steps = 500
  c.sample_prompts = (
      "a small purple triangle on the left",
      "a large yellow circle in the centre",
      "a large cyan square at the top",
      "a small yellow circle at the bottom",
      "a large red triangle on the right",
      "a small green square in the middle",
      "a large blue circle at the left",
      "a small purple square near the top",
  )

  c.sampling.sampler = "dpmpp_2m"  # the demo's base sampler: the periodic grids stay cheap
  c.sampling.num_steps = 24
  c.sampling.guidance_scale = 3.0
  c.sampling.threshold = "dynamic"
  c.sampling.aug_level = 0.0

  if arg.stage == "classifier":
    c.task = "classifier"
    c.input.labels = True
    # Half of each batch colour-permuted, for the colour-invariant heads only
    # (train/classifier_task.py: without it the shape head reads shape off colour).
    c.classifier = ml_collections.ConfigDict({"permute_channels": 0.5})
    c.input.cond_drop_prob = 0.0
    del c.model.overrides["text_dim"]

  if arg.stage == "inpaint":
    # GLIDE-style inpainting base: the masked image and the mask as 4 extra input
    # channels, trained on random boxes (pipeline.StagePipeline, diffusion.random_box_masks).
    c.model.overrides.image_cond_channels = 4
    c.inpaint = ml_collections.ConfigDict({"mask_box": (0.25, 0.75), "p_nothing_known": 0.1})

  if arg.stage == "decoder":
    # unCLIP's decoder: the base U-Net conditioned on the frozen shapes CLIP's image
    # embedding of `--config.decoder.clip=DIR` (a stage=clip run; required), dropped 10%
    # of the time, and on the caption, dropped 50% (DALL-E 2, section 2.1).
    c.model.overrides.image_embed_dim = 64  # shapes_clip16's projection_dim
    c.decoder = ml_collections.ConfigDict({"clip": "", "embed_drop_prob": 0.1})
    c.input.cond_drop_prob = 0.5

  if arg.stage == "clip":
    c.task = "clip"
    c.input.cond_drop_prob = 0.0
    del c.model.overrides["text_dim"]
    c.model.overrides.max_length = c.text.max_length  # the byte captions + EOS
    # 1500 steps (12 min on 2 shared cores): low-noise retrieval top-1 0.69 on its training
    # batch; 300 steps gave 0.22, too weak a guide (docs/guidance.md).
    c.checkpoint.every_steps = 500

  if arg.stage == "prior":
    c.task = "prior"
    # The CLIP run whose (clean) image embeddings the prior learns; "" until given
    # (train/prior_task.py refuses to start without it).
    c.prior = ml_collections.ConfigDict({"clip": ""})
    c.diffusion.prediction = "x0"  # DALL-E 2's prior predicts the clean embedding
    c.diffusion.loss_weighting = "none"
    c.sampling.guidance_scale = 1.0  # untuned; PriorSampler.sample(guidance_scale=) sets it
    c.sampling.threshold = "none"  # embeddings at unit variance per dim, not in [-1, 1]

  if c.task != "diffusion" or arg.stage == "decoder":
    c.sample_every_steps, c.sample_prompts = 0, ()  # no caption/low-res grids
  if arg.runlocal:
    c.sample_every_steps = 0
    c.total_steps = 3
    c.batch_size = 8
    c.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.sampling.num_steps = 4
    c.input.num_workers = 0
  return config_check.validate(c)


def sweep(add, arg=None):
  """Guidance-free knobs worth sweeping for the demo's base stage."""
  del arg
  for lr in (3e-4, 1e-3):
    for objects in (1, 2):
      add(**{"optim.lr": lr, "input.max_objects": objects})


def metrics():
  # alignment/accuracy is written when the config sets config.evals.alignment
  # (dict(type="alignment", log_steps=..., num_samples=...), base stage only).
  return ["loss", "alignment/accuracy"]
