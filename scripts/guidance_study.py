r"""The guidance study on the shapes world: CFG, classifier and CLIP guidance, side by side.

  python scripts/guidance_study.py --workdir /tmp/guidance_study

Trains what it needs in DIR (the demo's base stage, the noise-aware classifier and the
noise-aware shapes CLIP; `--guides classifier` for the classifier alone) or reuses it
(rerunning resumes; `--stages_from /tmp/imagen_demo` reads an already trained demo's base;
`--num_stages 2` adds sr1; `--x0_guides` adds the classifier on x0), samples held-out
captions under each guidance with its scale swept, and writes DIR/guidance_study.json, DIR/guidance_study.png (accuracy vs scale) and
DIR/guidance_study_grid.png. The method: imagen_jax/guidance_study.py. Run configs can be
changed like any config, e.g.
  --classifier_config configs/shapes.py:stage=classifier,steps=3000
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from imagen_jax import config_lib
from imagen_jax import demo
from imagen_jax import guidance_study
from imagen_jax import log_filter

_RUNS = ("base", "sr1", "classifier", "clip", "inpaint", "prior", "decoder")
_EXTRA_RUNS = {"inpaint": ("inpaint",), "unclip": ("prior", "decoder")}
_GUIDES = flags.DEFINE_list(
    "guides", ["classifier", "clip"], "Guides to train and sweep (classifier, clip)."
)
_CONFIGS = {
    name: config_flags.DEFINE_config_file(
        f"{name}_config",
        f"configs/shapes.py:stage={name}",
        f"Config of the {name} run.",
        lock_config=True,
    )
    for name in _RUNS
}
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_STAGES_FROM = flags.DEFINE_string(
    "stages_from", None, "Read the base and sr1 stages from this demo directory (no training)."
)
_NUM_EVAL = flags.DEFINE_integer("num_eval", 48, "Captions per draw (held-out, validation).")
_NUM_STAGES = flags.DEFINE_integer(
    "num_stages", 1, "Sample the base alone (1; scored at 32x32) or base + sr1 (2)."
)
_EXTRAS = flags.DEFINE_list(
    "extras",
    [],
    "Issue #21's systems, trained and measured beside the guides: inpaint (RePaint of the "
    "base vs a GLIDE-style inpainting stage), unclip (prior + decoder on the study's CLIP).",
)
_X0_GUIDES = flags.DEFINE_bool(
    "x0_guides",
    False,
    "Also sweep the classifier on the denoiser's x0 estimate (gradient through the U-Net; "
    "about 10x the sampling cost of the x_t guide).",
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1, "Virtual CPU devices, as scripts/demo.py (-1: one per core)."
)


def main(argv):
  del argv
  log_filter.quiet_third_party()
  jax.config.update("jax_threefry_partitionable", True)
  if _NUM_EVAL.value < 1:
    raise app.UsageError(f"--num_eval={_NUM_EVAL.value} must be >= 1")
  unknown = sorted(set(_GUIDES.value) - {"classifier", "clip"})
  if unknown:
    raise app.UsageError(f"--guides: unknown {', '.join(unknown)}; allowed: classifier, clip")
  unknown = sorted(set(_EXTRAS.value) - set(_EXTRA_RUNS))
  if unknown:
    raise app.UsageError(f"--extras: unknown {', '.join(unknown)}; allowed: inpaint, unclip")
  if "unclip" in _EXTRAS.value and "clip" not in _GUIDES.value:
    raise app.UsageError("--extras=unclip needs the study's CLIP: keep clip in --guides")
  wanted = {"base", "sr1", *_GUIDES.value}
  for extra in _EXTRAS.value:
    wanted.update(_EXTRA_RUNS[extra])
  configs = {n: _CONFIGS[n].value for n in _RUNS if n in wanted}
  asked = demo.set_cpu_devices([c.batch_size for c in configs.values()], _CPU_DEVICES.value)
  demo.check_cpu_devices(asked)
  record = guidance_study.run_study(
      _WORKDIR.value,
      configs=configs,
      stages_from=_STAGES_FROM.value,
      num_eval=_NUM_EVAL.value,
      num_stages=_NUM_STAGES.value,
      x0_guides=_X0_GUIDES.value,
      extras=_EXTRAS.value,
  )
  print(guidance_study.format_table(record))
  print(f"wall time {record['wall_seconds']:.0f}s; results in {_WORKDIR.value}/guidance_study.json")
  logging.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
