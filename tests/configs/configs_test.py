"""Every config file loads for every variant and every sweep run, validates, and builds its
model abstractly; the paper settings; command-line overrides and typos."""

import functools
import json
import pathlib
import re
import subprocess
import sys

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from imagen_jax import config_check
from imagen_jax import pipeline as pipeline_lib
from imagen_jax.launch import sweep as sweep_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

STAGES = ("base64", "sr256", "sr1024")
# (file, arg) for every variant of every config; runlocal too.
ARGS = [
    (s, f"variant={v}{rl}")
    for s in STAGES
    for v in ("paper", "small", "tiny")
    for rl in ("", ",runlocal")
]
ARGS += [
    ("shapes", f"stage={st},variant={v}{rl}")
    for st in ("base", "sr1")
    for v in ("tiny", "small")
    for rl in ("", ",runlocal")
]


def load(name):
  return sweep_lib.load_module(CONFIGS / f"{name}.py")


OTHERS = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in (*STAGES, "shapes"))


@pytest.mark.parametrize("name", OTHERS)
def test_other_config_files_load_and_sweep(name):
  """Config files added later: the default arg loads and validates; so does each sweep run."""
  module = load(name)
  config = module.get_config(None)
  if "model" in config and config.model.get("name"):
    config_check.validate(config)
  if hasattr(module, "sweep"):
    sweep_lib.expand(str(CONFIGS / f"{name}.py"))


@functools.lru_cache(maxsize=None)
def _abstract_params(name, variant, overrides_json):
  config = _CACHE_CONFIGS[(name, variant, overrides_json)]
  pipe = pipeline_lib.StagePipeline.from_config(config)
  variables = jax.eval_shape(lambda r: pipe.init(r, batch_size=1, text_len=8), jax.random.key(0))
  return pipe, variables


_CACHE_CONFIGS = {}


def build_abstract(config):
  """eval_shape of the stage's init (cached per model name/variant/overrides)."""
  overrides = json.dumps(config.model.overrides.to_dict(), sort_keys=True)
  key = (config.model.name, config.model.variant, overrides)
  _CACHE_CONFIGS.setdefault(key, config)
  pipe, variables = _abstract_params(*key)
  assert pipe.resolution == config.input.resolution
  assert pipe.lowres_resolution == config.input.get("lowres_resolution")
  assert pipe.model.text_dim == config.model.overrides.text_dim
  assert jax.tree.leaves(variables["params"])
  return pipe


@pytest.mark.parametrize("name,arg", ARGS, ids=[f"{n}:{a}" for n, a in ARGS])
def test_config_loads_validates_and_builds(name, arg):
  config = load(name).get_config(arg)
  config_check.validate(config)
  build_abstract(config)
  if "runlocal" in arg:
    assert config.input.dataset == "shapes"
    assert config.total_steps <= 3 and config.batch_size <= 8
  if "runlocal" in arg or "tiny" in arg:
    assert config.text.encoder == "byt5-tiny-random"
    assert config.model.overrides.text_dim == 64


SWEEPS = [(s, "variant=paper") for s in STAGES] + [(s, "variant=tiny,runlocal") for s in STAGES]
SWEEPS += [("shapes", "stage=base"), ("shapes", "stage=sr1,runlocal")]


@pytest.mark.parametrize("name,arg", SWEEPS, ids=[f"{n}:{a}" for n, a in SWEEPS])
def test_every_sweep_run_loads_validates_and_builds(name, arg):
  module, runs = sweep_lib.expand(f"{CONFIGS / name}.py:{arg}")
  assert len(runs) >= 2 and hasattr(module, "metrics") and module.metrics()
  assert len({r["name"] for r in runs}) == len(runs)
  for run in runs:
    for key, value in run["overrides"].items():
      node = run["config"]
      for part in key.split("."):
        node = node[part]
      assert node == (tuple(value) if isinstance(value, list) else value), key
    build_abstract(run["config"])


def test_paper_settings():
  base = load("base64").get_config("variant=paper")
  sr256 = load("sr256").get_config("variant=paper")
  sr1024 = load("sr1024").get_config("variant=paper")
  for c in (base, sr256, sr1024):
    assert c.batch_size == 2048
    assert c.optim.lr == 1e-4 and c.optim.warmup_steps == 10_000
    assert c.input.cond_drop_prob == 0.1
    assert c.model.variant == "paper" and c.model.overrides.text_dim == 4096
    assert c.text.encoder == "t5-v1_1-xxl"
    assert c.input.dataset == "tfds:laion_subset"  # user-prepared; COCO is the FID set
    assert c.sampling.threshold == "dynamic" and c.sampling.percentile == 0.995
    assert c.ema.decay == 0.9999
  assert base.optim.name == "adafactor" and base.diffusion.schedule == "cosine"
  for c in (sr256, sr1024):
    assert c.optim.name == "adam" and c.diffusion.schedule == "linear"
    assert tuple(c.diffusion.aug_range) == (0.0, 1.0)
  assert (base.input.resolution, base.input.lowres_resolution) == (64, None)
  assert (sr256.input.resolution, sr256.input.lowres_resolution) == (256, 64)
  assert (sr1024.input.resolution, sr1024.input.lowres_resolution) == (1024, 256)
  assert sr1024.input.crop_size == 256
  assert [c.model.name for c in (base, sr256, sr1024)] == [
      "imagen_base64",
      "imagen_sr256",
      "imagen_sr1024",
  ]


@pytest.mark.parametrize("name", ["base64", "sr256", "sr1024"])
def test_data_arg_reaches_every_source(name, monkeypatch):
  get = load(name).get_config
  c = get("variant=small,data=tfds:my_set")
  assert (c.input.dataset, c.input.data_dir) == ("tfds:my_set", None)
  c = get(
      "variant=small,data=coco_json,annotations=gs://b/captions_train2014.json,"
      "path=gs://b/train2014"
  )
  assert (c.input.dataset, c.input.annotations, c.input.path) == (
      "coco_json",
      "gs://b/captions_train2014.json",
      "gs://b/train2014",
  )
  c = get("variant=small,data=folder,path=/data/imgs")
  assert (c.input.dataset, c.input.path) == ("folder", "/data/imgs")
  assert get("variant=small,data=coco").input.dataset == "tfds:coco_captions"
  with pytest.raises(ValueError, match=r"data=coco_json needs path=\.\.\. and annotations="):
    get("variant=small,data=coco_json")
  with pytest.raises(ValueError, match="needs a dataset name"):
    get("variant=small,data=tfds:")
  # The locked config takes every source field on the command line.
  c = _parse(
      [
          f"--config={CONFIGS / f'{name}.py'}:variant=tiny,runlocal",
          "--config.input.dataset=tfds:my_set",
          "--config.input.data_dir=gs://b/tfds",
          "--config.input.annotations=a.json",
          "--config.input.path=imgs",
          "--config.input.manifest=m.jsonl",
      ],
      monkeypatch,
  )
  assert (
      c.input.dataset,
      c.input.data_dir,
      c.input.annotations,
      c.input.path,
      c.input.manifest,
  ) == ("tfds:my_set", "gs://b/tfds", "a.json", "imgs", "m.jsonl")
  config_check.validate(c)


def test_default_data_not_prepared_names_the_command(tmp_path):
  from imagen_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel

  c = load("base64").get_config("variant=small")
  c.input.data_dir = str(tmp_path)
  with pytest.raises(
      FileNotFoundError,
      match=r"(?s)'laion_subset' is not prepared in "
      + re.escape(str(tmp_path))
      + r".*scripts/prepare_data.py .*"
      r"--name laion_subset",
  ):
    input_pipeline.make_source(c.input, 64)


def test_typed_args():
  c = load("base64").get_config("variant=small,steps=7,batch=16,data=/data/imgs")
  assert (c.total_steps, c.batch_size) == (7, 16)
  assert (c.input.dataset, c.input.path) == ("folder", "/data/imgs")
  c = load("sr256").get_config("tiny")  # a bare value fills the first arg (variant)
  assert c.model.variant == "tiny"
  with pytest.raises(ValueError, match="'variantt'"):
    load("base64").get_config("variantt=tiny")
  with pytest.raises(ValueError, match="steps='many'"):
    load("sr1024").get_config("steps=many")
  with pytest.raises(ValueError, match="Unknown variant 'huge'"):
    load("sr256").get_config("variant=huge")


def _parse(argv, monkeypatch):
  """Parses argv as scripts/train.py's --config flag does (config_flags reads sys.argv)."""
  argv = ["prog", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  return holder.value


def test_command_line_overrides_and_typos(monkeypatch):
  spec = f"--config={CONFIGS / 'base64.py'}:variant=tiny,runlocal"
  c = _parse(
      [
          spec,
          "--config.optim.lr=3e-4",
          "--config.diffusion.aug_range=(0.0, 0.5)",
          "--config.model.overrides.text_dim=64",
          "--config.input.max_objects=2",
      ],
      monkeypatch,
  )
  assert c.optim.lr == 3e-4 and tuple(c.diffusion.aug_range) == (0.0, 0.5)
  assert c.input.max_objects == 2
  config_check.validate(c)
  with pytest.raises(Exception, match="lrr"):
    _parse([spec, "--config.optim.lrr=3e-4"], monkeypatch)
  with pytest.raises(Exception, match="optimm"):
    _parse([spec, "--config.optimm.lr=3e-4"], monkeypatch)


def test_train_script_reports_a_typo_by_name(tmp_path):
  out = subprocess.run(
      [
          sys.executable,
          str(ROOT / "scripts" / "train.py"),
          f"--config={CONFIGS / 'sr256.py'}:variant=tiny,runlocal",
          "--config.optim.lrr=3e-4",
          f"--workdir={tmp_path}",
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
  )
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()
  assert "Traceback" not in out.stderr, out.stderr[-2000:]  # one line, not ml_collections'
  assert "'lrr' Did you mean \"lr\"" in last[-2] and "--config.optim.lrr=3e-4" in last[-2]
  assert not (tmp_path / "checkpoints").exists()


def test_trainer_revalidates_after_overrides(tmp_path):
  from imagen_jax.train import loop  # pylint: disable=import-outside-toplevel

  c = load("base64").get_config("variant=tiny,runlocal")
  c.input.resolution = 32  # as `--config.input.resolution=32` would
  with pytest.raises(
      ValueError,
      match=r"config.input.resolution=32 but model " r"imagen_base64/tiny has resolution 64",
  ):
    loop.train_and_evaluate(c, str(tmp_path))
