r"""Imagen super-resolution stage 64 -> 256: Efficient U-Net (Saharia et al. 2022).

  python scripts/train.py --config configs/sr256.py:variant=paper \
      --config.text.encoder=/ckpt/t5-v1_1-xxl --workdir gs://BUCKET/sr256
  python scripts/train.py --config configs/sr256.py:variant=tiny,runlocal \
      --workdir /tmp/sr256_tiny

Args (`:k=v,...`):
  variant   paper | small | tiny (model size and the run's scale)
  runlocal  shrink to test size: shapes world, built-in text encoder, 3 steps
            on 64x64 crops (16x16 low-res)
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

From the paper (`variant=paper`): the ~600M Efficient U-Net conditioned on
the 64x64 image and on T5-XXL text (cross-attention at the lowest level),
batch 2048, Adam with lr 1e-4 after 10k linear warm-up steps, 10%
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
          arg, model="imagen_sr256", resolution=256, lowres_resolution=64, sampling_steps=128
      )
  )


def sweep(add, arg=None):
  """Noise-conditioning augmentation range x prediction target, 4 runs."""
  del arg
  for top in (0.5, 1.0):
    for prediction in ("eps", "v"):
      add(**{"diffusion.aug_range": (0.0, top), "diffusion.prediction": prediction})


def metrics():
  return ["loss"]
