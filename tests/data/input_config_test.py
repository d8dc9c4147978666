"""The bad-data settings of config.input: defaults in every stage config, validated by
config_check with errors naming the field and value."""

import importlib.util
import pathlib

import pytest

from imagen_jax import config_check
from imagen_jax import config_lib
from imagen_jax.data import input_pipeline
from imagen_jax.data import preprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config():
  spec = importlib.util.spec_from_file_location("sr256", ROOT / "configs" / "sr256.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("variant=tiny")


def test_defaults_in_the_stage_configs():
  c = config_lib.stage_defaults()
  assert c.input.max_decoded_mb == preprocess.DEFAULT_MAX_DECODED_MB == 256
  assert c.input.bad_caption == "skip"
  assert c.input.allow_outside_root is False
  assert c.input.read_timeout_s == input_pipeline.DEFAULT_READ_TIMEOUT_S
  assert config_check.validate(_config()).input.bad_caption == "skip"


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("max_decoded_mb", 0.0, r"config\.input\.max_decoded_mb=0\.0 must be positive"),
        ("max_decoded_mb", float("inf"), r"config\.input\.max_decoded_mb=inf"),
        ("bad_caption", "ignore", r"config\.input\.bad_caption='ignore'.*skip.*error"),
        ("read_timeout_s", -1.0, r"config\.input\.read_timeout_s=-1\.0 must be positive"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
  c = _config()
  c.input[field] = value
  with pytest.raises(config_check.ConfigError, match=match):
    config_check.validate(c)


def test_bad_values_at_the_factory_too():
  for cfg, match in (
      ({"read_timeout_s": 0}, "read_timeout_s=0"),
      ({"max_decoded_mb": -5}, "max_decoded_mb=-5"),
      ({"bad_caption": "drop"}, "bad_caption='drop'"),
  ):
    with pytest.raises(ValueError, match=match):
      input_pipeline.create_input_iterator(
          {"dataset": "shapes", **cfg},
          global_batch_size=1,
          resolution=8,
          seed=0,
          process_index=0,
          process_count=1,
          devices_per_process=1,
      )
