r"""The embedded default, end to end on a CPU: train the shapes cascade, sample
held-out captions, print caption accuracy per guidance setting.

  python scripts/demo.py --workdir /tmp/imagen_demo

Writes DIR/demo_results.json and DIR/demo_grid.png; rerunning resumes.
Stage configs can be changed like any config, e.g.
  --base_config configs/shapes.py:stage=base,steps=500 --base_config.optim.lr=3e-4
The default cascade is base 16x16 -> sr1 32x32 -> sr2 64x64 (configs/shapes.py), every
stage conditioned on a T5 encoder pretrained on shapes-world text alone (--encoder). On a CPU it trains on one virtual device
per core (--cpu_devices; XLA:CPU runs each convolution on one core).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from imagen_jax import config_lib
from imagen_jax import demo
from imagen_jax import diffusion
from imagen_jax import log_filter

# The base's schedule is shifted by 2 log(64 / 16) toward low noise (simple diffusion):
# held-out colour and place 1.000 vs 0.958 / 0.938 unshifted, background noise 5.2 vs 6.3.
_DEFAULTS = {"base": "stage=base,shift=2.77", "sr1": "stage=sr1", "sr2": "stage=sr2"}
_CONFIGS = {
    name: config_flags.DEFINE_config_file(
        f"{name}_config",
        f"configs/shapes.py:{arg}",
        f"Config of the {name} stage.",
        lock_config=True,
    )
    for name, arg in _DEFAULTS.items()
}
_NUM_STAGES = flags.DEFINE_integer(
    "num_stages", 3, "Train and sample the first N stages (1-3): base 16x16, sr1 32x32, sr2 64x64."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Demo directory.", required=True)
_NUM_EVAL = flags.DEFINE_integer("num_eval", 48, "Held-out eval captions.")
_STEPS = flags.DEFINE_integer("num_steps", 24, "Base sampler (dpmpp_2m) steps.")
_SR_STEPS = flags.DEFINE_integer("sr_num_steps", 12, "SR sampler (ddim) steps.")
_TIME_GRID = flags.DEFINE_enum(
    "time_grid",
    None,
    list(diffusion.TIME_GRIDS),
    "Every stage's sampler time grid (default: each sampler's own, see diffusion.sample).",
)
_ENCODER = flags.DEFINE_enum(
    "encoder",
    "pretrained",
    ["pretrained", "random"],
    "pretrained: pretrain the embedded T5 encoder on shapes-world text alone first "
    "(DIR/text_encoder, ~40 s) and condition every stage on it; random: the stage configs' "
    "own encoder (byt5-tiny-random, untrained).",
)
_ENCODER_STEPS = flags.DEFINE_integer(
    "encoder_steps", 0, "Pretraining steps of --encoder=pretrained (0: its default)."
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    -1,
    "Virtual CPU devices (data-parallel): -1, one per core "
    "that divides every stage's batch; ignored where XLA_FLAGS already sets "
    "--xla_force_host_platform_device_count or JAX runs on an accelerator.",
)


def main(argv):
  del argv
  log_filter.quiet_third_party()
  jax.config.update("jax_threefry_partitionable", True)
  if not 1 <= _NUM_STAGES.value <= 3:
    raise app.UsageError(f"--num_stages={_NUM_STAGES.value} must be 1-3")
  names = list(_CONFIGS)[: _NUM_STAGES.value]
  configs = [_CONFIGS[n].value for n in names]
  asked = demo.set_cpu_devices([c.batch_size for c in configs], _CPU_DEVICES.value)
  demo.check_cpu_devices(asked)
  record = demo.run_demo(
      configs,
      _WORKDIR.value,
      names=names,
      num_eval=_NUM_EVAL.value,
      num_steps=_STEPS.value,
      sr_num_steps=_SR_STEPS.value,
      time_grid=_TIME_GRID.value,
      pretrained_encoder=_ENCODER.value == "pretrained",
      encoder_steps=_ENCODER_STEPS.value,
  )
  print(demo.format_table(record))
  print(
      f"wall time {record['wall_seconds']:.0f}s; results in "
      f"{_WORKDIR.value}/demo_results.json, grid in "
      f"{_WORKDIR.value}/demo_grid.png"
  )
  logging.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
