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
  data      the training data (default tfds:laion_subset, which you prepare
            with scripts/prepare_data.py): tfds:NAME (with
            --config.input.data_dir) | coco (TFDS coco_captions) | coco_json
            (with annotations= and path=) | folder (with path=) | shapes |
            a folder path
  path      data=folder / coco_json: the image folder (local or gs://)
  annotations  data=coco_json: the captions_*.json
  encoder   the frozen T5 encoder: a local Hugging Face or t5x directory
            (default: t5-v1_1-xxl, a directory you provide) or a built-in name

From the paper (`variant=paper`): the ~400M Efficient U-Net without
self-attention (T5-XXL text cross-attention at the lowest level only), trained
on 256x256 crops of the 1024x1024 target with the matching 64x64 crops of the
256x256 low-res image (the network is convolutional, so it samples at full
size), batch 2048, Adam with lr 1e-4 after 10k linear warm-up steps, 10%
caption dropout, and noise-conditioning augmentation: the low-res input is
noised to a level drawn uniformly from [0, 1] during training, and the level
is given to the network. Ours (not confirmed in the paper): the linear noise
schedule (as imagen-pytorch's SR stages, `beta_schedules=('cosine', 'linear')`; the
base uses cosine), EMA decay 0.9999, gradient clipping at 1.0, 128 text tokens, bfloat16 compute, the FSDP axis size, the schedule of
the augmentation noise (linear, as imagen-pytorch), 2.5M steps (as the base),
and the sampling defaults (the paper sweeps the augmentation level at
sampling time).
"""

from imagen_jax import config_check
from imagen_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(
      arg, variant="paper", runlocal=False, steps=0, batch=0, encoder="", **config_lib.DATA_ARGS
  )
  return config_check.validate(
      config_lib.imagen_sr_config(
          arg,
          model="imagen_sr1024",
          resolution=1024,
          lowres_resolution=256,
          crop_size=256,
          sampling_steps=64,
      )
  )


def sweep(add, arg=None):
  """Learning rate x training crop size, 4 runs."""
  del arg
  for lr in (5e-5, 1e-4):
    for crop in (128, 256):
      add(**{"optim.lr": lr, "input.crop_size": crop})


def metrics():
  return ["loss"]
