r"""FID of a trained cascade on COCO (Imagen's FID-30K protocol by default).

  python scripts/eval_fid.py --workdir_base /ckpt/base64 --workdir_sr1 /ckpt/sr256 \
      --coco_annotations /data/coco/annotations/captions_val2014.json \
      --coco_images /data/coco/val2014 --output_dir /tmp/fid30k \
      --guidance_scale 1.35,8 --guidance_sweep 1,1.35,2,3

Draws 30,000 COCO 2014 val captions (`--seed`), samples them with the cascade at the
per-stage settings (one value, or a comma list per stage; `--guidance_sweep` varies the base
stage's scale), and compares 256x256 samples and val images with the FID Inception. Sharded
over hosts and resumable; writes `<output_dir>/fid.json` (and `fid_vs_guidance.{json,md}`);
paths may be gs://; stages trained on COCO are flagged (zero-shot protocol). `--clip_path`
adds the CLIP score (x100, max(cos, 0)) of the same samples and the FID-vs-CLIP-score curve
(`fid_vs_clip_score.{json,md}`, with the backbone). The protocol,
weights and outputs: docs/evaluation.md; the flags: imagen_jax/sampling/cli_flags.py; the run:
imagen_jax/evaluation/fid_driver.py.
"""

from absl import app
from absl import flags
import jax

from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import curve
from imagen_jax.evaluation import fid_driver
from imagen_jax.parallel import multihost
from imagen_jax.sampling import cli_flags

_WORKDIRS = cli_flags.define_workdirs()
_ANN = flags.DEFINE_string("coco_annotations", None, "captions_val2014.json.")
_IMAGES = flags.DEFINE_string("coco_images", None, "The val2014/ image folder.")
_TFDS = flags.DEFINE_string("tfds_name", None, "Use TFDS (e.g. coco_captions) instead.")
_TFDS_SPLIT = flags.DEFINE_string(
    "tfds_split", "val+restval+test", "TFDS split; coco_captions' val+restval+test = COCO 2014 val."
)
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_NUM = flags.DEFINE_integer("num_samples", 30_000, "Captions drawn (without replacement).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the caption draw and of sampling.")
_RES = flags.DEFINE_integer("resolution", 256, "Both sides are resized to this first.")
_SHARD = flags.DEFINE_integer("shard_size", 250, "Captions per resumable shard.")
_OUT = cli_flags.define_output_dir(None, "Run directory (resumable).", required=True)
_CACHE = flags.DEFINE_string(
    "reference_cache_dir",
    None,
    "Where reference statistics are cached (default: <output_dir>/reference_cache).",
)
_WEIGHTS = flags.DEFINE_string(
    "inception_weights",
    None,
    "pytorch-fid .pth or converted .npz (default: "
    "~/.cache/imagen_jax/pt_inception-2015-12-05-6726825d.{npz,pth}); "
    "'random:SEED' = random weights, for tests only (not FID).",
)
_INC_BATCH = flags.DEFINE_integer("inception_batch_size", 64, "Inception batch (per host).")
_INC_DTYPE = flags.DEFINE_enum(
    "inception_dtype",
    "float32",
    ["float32", "bfloat16"],
    "Inception compute dtype (features are float32).",
)
_INC_SIZE = flags.DEFINE_integer(
    "inception_image_size", 299, "Inception input size; anything but 299 is for tests only."
)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Sampler batch size.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder",
    None,
    "T5 directory (local or gs://) or built-in name instead of the "
    "one saved in the stages' configs (width checked against every stage).",
)
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False, "Keep the 256px samples in the shards.")
_SWEEP = flags.DEFINE_string("guidance_sweep", None, "Base guidance scales, e.g. 1,1.35,2,3.")
_CLIP = flags.DEFINE_string(
    "clip_path", None, "CLIP score beside FID: local HF CLIPModel dir or project CLIP workdir."
)
_CLIP_BATCH = flags.DEFINE_integer("clip_batch_size", 64, "CLIP batch (per host).")
_PER_STAGE = cli_flags.define_per_stage()
flags.adopt_module_key_flags(cli_flags)  # --help lists them with this script's flags
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-process: process count.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-process: this process.")


def main(argv):
  del argv
  cli_flags.warn_deprecated()
  multihost.initialize(_COORD.value, _NPROC.value, _PID.value)
  workdirs = cli_flags.workdirs(_WORKDIRS)
  per_stage = cli_flags.per_stage(_PER_STAGE, len(workdirs))
  sweep = [float(v) for v in _SWEEP.value.split(",")] if _SWEEP.value else None
  # Fail on data and weights before loading stages or compiling anything.
  source = coco_fid.open_source(
      _ANN.value, _IMAGES.value, _TFDS.value, _TFDS_SPLIT.value, _TFDS_DIR.value
  )
  extractor = fid_driver.make_extractor(
      _WEIGHTS.value,
      batch_size=_INC_BATCH.value,
      image_size=_INC_SIZE.value,
      dtype=_INC_DTYPE.value,
  )
  protocol = coco_fid.Protocol(
      num_samples=_NUM.value, seed=_SEED.value, resolution=_RES.value, shard_size=_SHARD.value
  )
  harness = coco_fid.CocoFid(
      source,
      extractor,
      _OUT.value,
      protocol,
      cache_dir=_CACHE.value,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  harness.draw()  # validates num_samples against the source before loading stages
  clip = (  # checks every caption's length before loading stages
      curve.ClipBesideFid.from_path(_CLIP.value, harness, batch_size=_CLIP_BATCH.value)
      if _CLIP.value
      else None
  )
  fid_driver.evaluate(
      workdirs,
      harness,
      per_stage=per_stage,
      guidance_sweep=sweep,
      batch_size=_BATCH.value,
      text_encoder=_TEXT_ENCODER.value,
      save_images=_SAVE_IMAGES.value,
      clip=clip,
  )


if __name__ == "__main__":
  app.run(main)
