r"""Cascade sampling CLI: prompts -> PNGs, a labelled grid and a settings JSON.

  python scripts/sample.py --workdir_base /tmp/shapes/base \
      --workdir_sr256 /tmp/shapes/sr1 --prompt "a large red circle on the left" \
      --num_samples 4 --guidance_scale 3 --outdir /tmp/samples

`--text_encoder DIR` replaces the T5 saved in the stages' configs (e.g. a copy at
another path, or gs://...); its embedding width is checked against every stage.

Per-stage settings take one value (all stages) or a comma-separated list with
one value per stage, e.g. `--guidance_scale 5,1 --sampler ddpm,ddim`.
"""
import json
import time

from absl import app
from absl import flags

from imagen_jax import sampling
from imagen_jax.storage import paths

_BASE = flags.DEFINE_string("workdir_base", None, "Base stage workdir.")
_SR256 = flags.DEFINE_string("workdir_sr256", None, "First SR stage workdir.")
_SR1024 = flags.DEFINE_string("workdir_sr1024", None, "Second SR stage workdir.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None,
                                    "One prompt a line (local or gs://).")
_NUM = flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("outdir", "samples", "Output directory (local or gs://).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per device batch.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", None, "T5 directory (local or gs://) or built-in name to use instead "
    "of the one saved in the stages' configs; its width must match every stage's.")
_PER_STAGE = {
    "sampler": flags.DEFINE_string("sampler", None, "ddpm|ddim|dpmpp_2m"),
    "num_steps": flags.DEFINE_string("num_steps", None, "Sampler steps."),
    "guidance_scale": flags.DEFINE_string("guidance_scale", None,
                                          "CFG scale (1 = none)."),
    "threshold": flags.DEFINE_string("threshold", None,
                                     "none|static|dynamic"),
    "percentile": flags.DEFINE_string("percentile", None,
                                      "Dynamic threshold percentile."),
    "aug_level": flags.DEFINE_string("aug_level", None,
                                     "SR low-res noise augmentation level."),
}
_TYPES = {"sampler": str, "threshold": str, "num_steps": int}


def _per_stage(name, num_stages):
  raw = _PER_STAGE[name].value
  if raw is None:
    return [None] * num_stages
  values = [_TYPES.get(name, float)(v) for v in raw.split(",")]
  if len(values) == 1:
    values *= num_stages
  if len(values) != num_stages:
    raise app.UsageError(f"--{name}={raw!r} has {len(values)} values for "
                         f"{num_stages} stages")
  return values


def main(argv):
  del argv
  workdirs = [w for w in (_BASE.value, _SR256.value, _SR1024.value) if w]
  if not workdirs:
    raise app.UsageError("give at least --workdir_base")
  prompts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    text = paths.path(_PROMPTS_FILE.value).read_text()
    prompts += [line.strip() for line in text.splitlines() if line.strip()]
  if not prompts:
    raise app.UsageError("no prompts: give --prompt or --prompts_file")
  if _NUM.value < 1:
    raise app.UsageError(f"--num_samples={_NUM.value} must be >= 1")
  stages = [sampling.load_stage(w) for w in workdirs]
  per = {k: _per_stage(k, len(stages)) for k in _PER_STAGE}
  settings = [sampling.StageSettings.from_config(
      s.config.sampling, **{k: per[k][i] for k in per})
              for i, s in enumerate(stages)]
  sampler = sampling.CascadeSampler(stages, settings,
                                    batch_size=_BATCH.value,
                                    text_encoder=_TEXT_ENCODER.value)
  expanded = [p for p in prompts for _ in range(_NUM.value)]
  start = time.perf_counter()
  images = sampler.sample(expanded, seed=_SEED.value)
  seconds = time.perf_counter() - start
  record = {
      "prompts": prompts, "num_samples": _NUM.value, "seed": _SEED.value,
      "stages": [{"workdir": s.workdir, "checkpoint_step": s.step,
                  "model": f"{s.config.model.name}/{s.config.model.variant}",
                  "settings": st} for s, st in zip(stages, settings)],
      "text_encoder": _TEXT_ENCODER.value,
      "seconds": seconds,
  }
  sampling.write_samples(_OUT.value, prompts, images[-1], _NUM.value, record)
  print(json.dumps({"outdir": _OUT.value, "images": len(expanded)}))
  print(f"{len(expanded)} images in {seconds:.1f}s: "
        f"{len(expanded) / seconds:.2f} images/s (incl. compilation)")


if __name__ == "__main__":
  app.run(main)
