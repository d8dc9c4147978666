"""The cascade sampler and scripts/sample.py on tiny random-weight stages."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax.core import meta

from imagen_jax import pipeline as pipeline_lib
from imagen_jax import sampling
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_config(arg):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs/shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _make_workdir(path, arg, seed):
  """A stage workdir with one checkpoint of random params (no training)."""
  config = _load_config(arg)
  pipe = pipeline_lib.StagePipeline.from_config(config)
  params = meta.unbox(pipe.init(jax.random.PRNGKey(seed))["params"])
  state = state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  ckpt = ckpt_lib.Checkpointer(path, every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=config.to_dict(), force=True)
  ckpt.close()
  return str(path)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("stages")
  base = _make_workdir(root / "base", "stage=base,runlocal", 1)
  sr = _make_workdir(root / "sr1", "stage=sr1,runlocal", 2)
  return base, sr


FAST = [
    sampling.StageSettings(sampler="ddim", num_steps=2, guidance_scale=3.0),
    sampling.StageSettings(sampler="ddim", num_steps=2, aug_level=0.1),
]


def test_cascade_shapes_and_determinism(workdirs):
  cascade = sampling.CascadeSampler.from_workdirs(list(workdirs), FAST, batch_size=8)
  prompts = ["a red circle", "two blue squares on the left", ""]
  a = cascade.sample(prompts, seed=3, progress=False)
  assert [x.shape for x in a] == [(3, 16, 16, 3), (3, 32, 32, 3)]
  assert all(x.dtype == np.uint8 for x in a)
  b = cascade.sample(prompts, seed=3, progress=False)
  c = cascade.sample(prompts, seed=4, progress=False)
  np.testing.assert_array_equal(a[-1], b[-1])
  assert np.any(a[-1] != c[-1])


def test_sample_script_writes_pngs_grid_and_json(workdirs, tmp_path):
  out = tmp_path / "out"
  cmd = [
      sys.executable,
      str(ROOT / "scripts/sample.py"),
      f"--workdir_base={workdirs[0]}",
      f"--workdir_sr256={workdirs[1]}",
      "--prompt=a red circle",
      "--prompt=a small green square",
      "--num_samples=2",
      "--num_steps=2",
      "--sampler=ddim",
      "--guidance_scale=3,1",
      f"--outdir={out}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "images/s" in proc.stdout
  pngs = sorted(p.name for p in out.glob("0*.png"))
  assert pngs == ["000_00.png", "000_01.png", "001_00.png", "001_01.png"]
  assert (out / "grid.png").exists()
  record = json.loads((out / "samples.json").read_text())
  assert record["prompts"] == ["a red circle", "a small green square"]
  assert [s["settings"]["guidance_scale"] for s in record["stages"]] == [3, 1]
  assert all(s["checkpoint_step"] == 1 for s in record["stages"])


def test_bad_inputs(workdirs, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    sampling.load_stage(str(tmp_path / "empty"))
  base = sampling.load_stage(workdirs[0])
  sr = sampling.load_stage(workdirs[1])
  with pytest.raises(ValueError, match="super-resolution stage"):
    sampling.CascadeSampler([sr])
  with pytest.raises(ValueError, match="only the first stage"):
    sampling.CascadeSampler([base, base])
  with pytest.raises(ValueError, match="guidance_scale=-1"):
    sampling.CascadeSampler([base], [sampling.StageSettings(guidance_scale=-1.0)])
  with pytest.raises(ValueError, match="no prompts"):
    sampling.CascadeSampler([base], [FAST[0]]).sample([])


def test_stages_that_do_not_chain(workdirs, tmp_path):
  # An SR stage that expects 8x8 input after the 16x16 base.
  config = _load_config("stage=sr1,runlocal")
  config.model.overrides.lowres_resolution = 8
  config.input.lowres_resolution = 8
  pipe = pipeline_lib.StagePipeline.from_config(config)
  params = meta.unbox(pipe.init(jax.random.PRNGKey(0))["params"])
  state = state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "sr16", every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=config.to_dict(), force=True)
  ckpt.close()
  with pytest.raises(ValueError, match="do not chain.*16x16.*8x8"):
    sampling.CascadeSampler.from_workdirs([workdirs[0], str(tmp_path / "sr16")])
