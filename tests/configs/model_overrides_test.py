"""Every model field of every stage config can be overridden on the locked config from the
command line (`--config.model.overrides.X=...`), with its type checked by ml_collections and
its value by the registry."""

import pathlib
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from imagen_jax import config_check
from imagen_jax import pipeline as pipeline_lib
from imagen_jax.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGES = [
    "base64.py:variant=tiny",
    "sr256.py:variant=tiny",
    "sr1024.py:variant=tiny",
    "shapes.py:stage=base",
    "shapes.py:stage=sr1",
]


def _parse(spec, *overrides):
  """As scripts/train.py parses its command line (config_flags reads sys.argv itself)."""
  argv = ["prog", f"--config={ROOT / 'configs' / spec}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True)
  saved, sys.argv = sys.argv, argv
  try:
    fv(argv)
    return fv.config
  finally:
    sys.argv = saved


@pytest.mark.parametrize("spec", STAGES)
@pytest.mark.parametrize("remat", ["none", "block", "full"])
def test_remat_reaches_the_network(spec, remat):
  config = _parse(spec, f"--config.model.overrides.remat={remat}")
  config_check.validate(config)  # what the trainer does after the overrides
  assert pipeline_lib.StagePipeline.from_config(config).model.remat == remat


@pytest.mark.parametrize("spec", ["base64.py:variant=tiny", "sr256.py:variant=tiny"])
def test_remat_policy_reaches_the_network(spec):
  config = _parse(
      spec,
      "--config.model.overrides.remat=block",
      "--config.model.overrides.remat_policy=dots_saveable",
  )
  config_check.validate(config)
  model = pipeline_lib.StagePipeline.from_config(config).model
  assert (model.remat, model.remat_policy) == ("block", "dots_saveable")


@pytest.mark.parametrize("spec", ["base64.py:variant=tiny", "sr256.py:variant=tiny"])
def test_every_field_is_exposed_and_typed(spec):
  config = _parse(spec)
  assert set(registry.override_types(config.model.name)) <= set(config.model.overrides)
  config = _parse(
      spec, "--config.model.overrides.num_groups=4", "--config.model.overrides.dropout=0.1"
  )
  model = pipeline_lib.StagePipeline.from_config(config).model
  assert (model.num_groups, model.dropout) == (4, 0.1)
  with pytest.raises(flags.IllegalFlagValueError, match="num_groups"):
    _parse(spec, "--config.model.overrides.num_groups=four")


def test_bad_values_are_named():
  config = _parse("base64.py:variant=tiny", "--config.model.overrides.remat=blocks")
  with pytest.raises(config_check.ConfigError, match=r"remat='blocks'.*'block'"):
    config_check.validate(config)
  config = _parse(
      "sr256.py:variant=tiny",
      "--config.model.overrides.remat=full",
      "--config.model.overrides.remat_policy=dots",
  )
  with pytest.raises(config_check.ConfigError, match=r"remat_policy.*'dots'.*'dots_saveable'"):
    config_check.validate(config)
  config = _parse("base64.py:variant=tiny", "--config.model.overrides.remat_policy=dots_saveable")
  with pytest.raises(config_check.ConfigError, match="no effect with remat='none'"):
    config_check.validate(config)
  config = _parse("base64.py:variant=tiny", "--config.model.overrides.dtype=float33")
  with pytest.raises(config_check.ConfigError, match="float33"):
    config_check.validate(config)
  with pytest.raises(AttributeError, match="remmat"):
    _parse("base64.py:variant=tiny", "--config.model.overrides.remmat=block")
  with pytest.raises(AttributeError, match="remat_polcy"):
    _parse("base64.py:variant=tiny", "--config.model.overrides.remat_polcy=dots_saveable")
