r"""Cascade sampling CLI: prompts -> PNGs, a labelled grid and a settings JSON.

  python scripts/sample.py --workdir_base /tmp/shapes/base \
      --workdir_sr1 /tmp/shapes/sr1 --prompt "a large red circle on the left" \
      --num_samples 4 --guidance_scale 3 --output_dir /tmp/samples

`--text_encoder DIR` replaces the T5 saved in the stages' configs (e.g. a copy at
another path, or gs://...); its embedding width is checked against every stage.

`--classifier_workdir DIR --classifier_scale S` adds classifier guidance to the base stage
(a classifier trained with configs/shapes.py:stage=classifier; labels from each prompt).

`--init_image PNG --mask PNG` inpaints the base stage (RePaint; white = keep, black =
generate; `--resample R` repeats each step R times), `--init_image PNG --strength S` edits
it with SDEdit from time S; both combine. The SR stages upsample the edited base. A
GLIDE-style inpainting base (configs/shapes.py:stage=inpaint) reads the masked image as its
input; `--nopaste` leaves the kept pixels to it too.

unCLIP: with a decoder as the base (configs/shapes.py:stage=decoder), `--prior_workdir DIR`
samples each prompt's CLIP image embedding with the prior (`--prior_guidance_scale`), or
`--variation_of IMG` decodes that image's embedding (variations; prompts may be "").

Per-stage settings take one value (all stages) or a comma-separated list with
one value per stage, e.g. `--guidance_scale 5,1 --sampler ddpm,ddim`.
Flag names: imagen_jax/sampling/cli_flags.py (`--workdir_sr256`, `--workdir_sr1024` and
`--outdir` are deprecated aliases of `--workdir_sr1`, `--workdir_sr2` and `--output_dir`).
"""

import dataclasses
import json
import time

from absl import app
from absl import flags

from imagen_jax import clip as clip_lib
from imagen_jax import sampling
from imagen_jax.sampling import cli_flags
from imagen_jax.sampling import edit as edit_lib
from imagen_jax.sampling import guides
from imagen_jax.sampling import unclip
from imagen_jax.storage import paths

_WORKDIRS = cli_flags.define_workdirs()
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "One prompt a line (local or gs://).")
_NUM = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = cli_flags.define_output_dir("samples", "Output directory (local or gs://).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per device batch.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder",
    None,
    "T5 directory (local or gs://) or built-in name to use instead "
    "of the one saved in the stages' configs; its width must match every stage's.",
)
_CLASSIFIER = flags.DEFINE_string(
    "classifier_workdir",
    None,
    "Classifier guidance of the base stage by the noise-aware classifier trained in this "
    "workdir (configs/shapes.py:stage=classifier); labels from each prompt's first object.",
)
_CLASSIFIER_SCALE = flags.DEFINE_float(
    "classifier_scale", 1.0, "Classifier guidance scale (with --classifier_workdir)."
)
_CLASSIFIER_MIN_LOG_SNR = flags.DEFINE_float(
    "classifier_min_log_snr", None, "Guide only steps with log-SNR >= this (default: all)."
)
_INIT_IMAGE = flags.DEFINE_string(
    "init_image",
    None,
    "Image to edit in the base stage (PNG/JPEG, local or gs://, exactly the base stage's "
    "resolution): inpainted with --mask, SDEdited with --strength, or both.",
)
_MASK = flags.DEFINE_string(
    "mask",
    None,
    "Inpainting mask PNG, the base stage's resolution: white (grey >= 128) keeps the "
    "--init_image pixel, black is generated. Needs --init_image.",
)
_STRENGTH = flags.DEFINE_float(
    "strength",
    None,
    "SDEdit: the base stage starts from --init_image noised to time S in (0, 1] (small: "
    "close to the image; 1: nearly ordinary sampling). Default: none (full sampling).",
)
_RESAMPLE = flags.DEFINE_integer(
    "resample", 1, "RePaint: each base-stage step done R times (R x the evaluations); --mask."
)
_PASTE = flags.DEFINE_bool(
    "paste",
    True,
    "Inpainting: keep the --init_image pixels exactly (RePaint's replacement at every step); "
    "--nopaste, for an inpainting stage only, leaves them to the network (GLIDE).",
)
_PRIOR = flags.DEFINE_string(
    "prior_workdir", None, "unCLIP: the prior run that maps each prompt to the decoder's input."
)
_PRIOR_SCALE = flags.DEFINE_float(
    "prior_guidance_scale", None, "unCLIP prior's CFG weight (default: its config's)."
)
_PRIOR_STEPS = flags.DEFINE_integer(
    "prior_num_steps", None, "unCLIP prior's sampler steps (default: its config's)."
)
_VARIATION = flags.DEFINE_string(
    "variation_of", None, "unCLIP: decode this image's CLIP embedding (image variations)."
)
_PER_STAGE = cli_flags.define_per_stage()
flags.adopt_module_key_flags(cli_flags)  # --help lists them with this script's flags


def main(argv):
  del argv
  cli_flags.warn_deprecated()
  workdirs = cli_flags.workdirs(_WORKDIRS)
  prompts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    text = paths.path(_PROMPTS_FILE.value).read_text()
    prompts += [line.strip() for line in text.splitlines() if line.strip()]
  if not prompts:
    raise app.UsageError("no prompts: give --prompt or --prompts_file")
  if _NUM.value < 1:
    raise app.UsageError(f"--num_samples={_NUM.value} must be >= 1")
  per = cli_flags.per_stage(_PER_STAGE, len(workdirs))
  if _INIT_IMAGE.value is None and (_MASK.value or _STRENGTH.value is not None):
    raise app.UsageError("--mask and --strength edit an image: give --init_image too")
  stages = [sampling.load_stage(w) for w in workdirs]
  edit, edit_record = None, None
  if _INIT_IMAGE.value:
    edit = edit_lib.from_files(
        _INIT_IMAGE.value,
        stages[0].pipeline.resolution,
        mask_path=_MASK.value,
        strength=_STRENGTH.value,
        resample=_RESAMPLE.value,
    )
    if not _PASTE.value:
      edit = dataclasses.replace(edit, paste=False)
    edit_record = {
        "init_image": _INIT_IMAGE.value,
        "mask": _MASK.value,
        "paste": _PASTE.value,
        **edit.record(),
    }
  settings = cli_flags.stage_settings(stages, per)
  sampler = sampling.CascadeSampler(
      stages, settings, batch_size=_BATCH.value, text_encoder=_TEXT_ENCODER.value
  )
  expanded = [p for p in prompts for _ in range(_NUM.value)]
  guide, guide_record = None, None
  if _CLASSIFIER.value:
    guide = guides.ClassifierGuide(
        guides.load_classifier(_CLASSIFIER.value), min_log_snr=_CLASSIFIER_MIN_LOG_SNR.value
    )
    guide_record = {
        "classifier_workdir": _CLASSIFIER.value,
        "checkpoint_step": guide.classifier.step,
        "scale": _CLASSIFIER_SCALE.value,
        "min_log_snr": _CLASSIFIER_MIN_LOG_SNR.value,
    }
  image_embed, unclip_record = None, None
  if stages[0].pipeline.image_embed_dim or _PRIOR.value or _VARIATION.value:
    try:
      image_embed = unclip.decoder_embeddings(
          stages[0],
          expanded,
          prior_workdir=_PRIOR.value,
          variation_image=_VARIATION.value,
          clip=clip_lib.load_clip(str(stages[0].config.decoder.clip))
          if _VARIATION.value and stages[0].pipeline.image_embed_dim
          else None,
          guidance_scale=_PRIOR_SCALE.value,
          num_steps=_PRIOR_STEPS.value,
          seed=_SEED.value,
      )
    except ValueError as e:
      raise app.UsageError(f"{e} (--prior_workdir / --variation_of)") from None
    unclip_record = {
        "prior_workdir": _PRIOR.value,
        "prior_guidance_scale": _PRIOR_SCALE.value,
        "prior_num_steps": _PRIOR_STEPS.value,
        "variation_of": _VARIATION.value,
    }
  start = time.perf_counter()
  images = sampler.sample(
      expanded,
      seed=_SEED.value,
      guide=guide,
      guide_scale=_CLASSIFIER_SCALE.value if guide else 0,
      edit=edit,
      image_embed=image_embed,
  )
  seconds = time.perf_counter() - start
  record = {
      "prompts": prompts,
      "num_samples": _NUM.value,
      "seed": _SEED.value,
      "stages": [
          {
              "workdir": s.workdir,
              "checkpoint_step": s.step,
              "model": f"{s.config.model.name}/{s.config.model.variant}",
              "settings": st,
          }
          for s, st in zip(stages, settings)
      ],
      "text_encoder": _TEXT_ENCODER.value,
      "classifier_guidance": guide_record,
      "edit": edit_record,
      "unclip": unclip_record,
      "seconds": seconds,
  }
  sampling.write_samples(_OUT.value, prompts, images[-1], _NUM.value, record)
  print(json.dumps({"outdir": _OUT.value, "images": len(expanded)}))
  print(
      f"{len(expanded)} images in {seconds:.1f}s: "
      f"{len(expanded) / seconds:.2f} images/s (incl. compilation)"
  )


if __name__ == "__main__":
  app.run(main)
