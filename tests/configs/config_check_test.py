"""config_check.validate: each error names the field; the accepted names are their owners'."""

import pathlib

import pytest

from imagen_jax import config_check
from imagen_jax.launch import sweep as sweep_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def config(name="sr256", arg="variant=tiny"):
  return sweep_lib.load_module(ROOT / "configs" / f"{name}.py").get_config(arg)


@pytest.mark.parametrize("mode", ["jit", "pjit", "pmap"])
def test_parallel_modes_and_alias_accepted(mode):
  c = config()
  c.parallel.mode = mode
  assert config_check.validate(c) is c


BAD = [
    (
        "base64",
        {"input.resolution": 32},
        r"config.input.resolution=32 but model imagen_base64/tiny has resolution 64",
    ),
    (
        "sr256",
        {"input.lowres_resolution": 32},
        r"config.input.lowres_resolution=32 but model imagen_sr256/tiny takes a 64x64",
    ),
    (
        "base64",
        {"input.lowres_resolution": 16},
        r"config.input.lowres_resolution=16 but model imagen_base64/tiny is not a super-res",
    ),
    ("sr1024", {"input.crop_size": 200}, r"config.input.crop_size=200 is not divisible by 16"),
    ("sr1024", {"input.crop_size": 2048}, r"config.input.crop_size=2048 must be in"),
    ("sr256", {"model.name": "imagen_sr512"}, r"config.model.name='imagen_sr512'"),
    ("sr256", {"model.variant": "huge"}, r"config.model.variant='huge'"),
    ("sr256", {"model.overrides.text_dimm": 3}, r"config.model.overrides: .*text_dimm"),
    ("sr256", {"batch_size": 0}, r"config.batch_size=0 must be a positive"),
    ("sr256", {"total_steps": -1}, r"config.total_steps=-1"),
    ("sr256", {"diffusion.schedule": "cosin"}, r"config.diffusion.schedule='cosin'"),
    ("sr256", {"diffusion.aug_schedule": "x"}, r"config.diffusion.aug_schedule='x'"),
    ("sr256", {"diffusion.prediction": "noise"}, r"config.diffusion.prediction='noise'"),
    ("sr256", {"diffusion.loss_weighting": "snr"}, r"config.diffusion.loss_weighting='snr'"),
    ("sr256", {"diffusion.aug_range": (0.5, 0.2)}, r"config.diffusion.aug_range=\(0.5, 0.2\)"),
    ("sr256", {"diffusion.aug_range": (0.0, 1.5)}, r"config.diffusion.aug_range"),
    ("sr256", {"sampling.sampler": "euler"}, r"config.sampling.sampler='euler'"),
    ("sr256", {"sampling.threshold": "clip"}, r"config.sampling.threshold='clip'"),
    ("sr256", {"optim.name": "sgd"}, r"config.optim.name='sgd'"),
    ("sr256", {"optim.decay": "linear"}, r"config.optim.decay='linear'"),
    ("sr256", {"optim.eps": 0.0}, r"config.optim.eps=0.0 must be positive"),
    ("sr256", {"optim.lr": float("inf")}, r"config.optim.lr=inf must be positive and finite"),
    ("sr256", {"optim.lr": 1e39}, r"config.optim.lr=1e\+39 must be positive and finite"),
    (
        "sr256",
        {"optim.fused_update": "yes"},
        r"config.optim.fused_update='yes'; expected one of auto, on, off",
    ),
    ("base64", {"optim.fused_update": "on"}, r"fused_update='on' needs optim.name in adam, adamw"),
    ("sr256", {"parallel.mode": "shard_map"}, r"config.parallel.mode='shard_map'"),
    (
        "sr256",
        {"parallel.mesh": (("data", 3), ("fsdp", 1))},
        r"config.batch_size=8 is not divisible",
    ),
    (
        "sr256",
        {"parallel.mesh": (("dta", -1), ("fsdp", 1))},
        r"config.parallel.mesh axis 'dta' \(size -1\) is neither a data axis \(data, fsdp\)",
    ),
    # --config.parallel.mesh=data: ml_collections makes the string a tuple of characters
    ("sr256", {"parallel.mesh": tuple("data")}, r"config.parallel.mesh='data' is a string"),
    ("sr256", {"input.cond_drop_prob": 1.5}, r"config.input.cond_drop_prob=1.5"),
    ("sr256", {"input.dataset": "coco"}, r"config.input.dataset='coco'"),
    ("sr256", {"input.dataset": "folder"}, r"config.input.path must name"),
    ("sr256", {"nonfinite": "ignore"}, r"config.nonfinite='ignore'"),
    ("sr256", {"nonfinite_max_skips": -1}, r"config.nonfinite_max_skips=-1 must be a non-neg"),
    (
        "base64",
        {"evals.is": dict(type="inception_score", log_steps=10)},
        r"config.evals.is.type='inception_score' is not an evaluator; known: alignment, fid, "
        "clip_score",
    ),
    (
        "base64",
        {"evals.fid": dict(type="fid", log_steps=0)},
        r"config.evals.fid.log_steps=0 must be a positive",
    ),
]


@pytest.mark.parametrize(
    "name,overrides,message", BAD, ids=[f"{n}:{','.join(o)}" for n, o, _ in BAD]
)
def test_errors_name_the_field(name, overrides, message):
  c = config(name, "variant=tiny")
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  with pytest.raises(ValueError, match=message):
    config_check.validate(c)


def test_validate_returns_the_config():
  c = config()
  assert config_check.validate(c) is c


def test_a_mesh_axis_named_by_the_logical_rules_is_accepted():
  c = config("sr256", "variant=tiny")
  c.parallel.mesh = (("data", -1), ("fsdp", 1), ("model", 2))
  c.parallel.logical_rules = (("heads", "model"), ("embed", ("fsdp", "model")))
  assert config_check.validate(c) is c
  c.parallel.logical_rules = ()
  with pytest.raises(ValueError, match="axis 'model' \\(size 2\\)"):
    config_check.validate(c)
