"""Sample outputs (PNGs, grid, samples.json) written to a `gs://` folder on a real GCS API
server (fake-gcs-server), directly and through scripts/sample.py (prompts read from gs:// too)."""

import importlib.util
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from imagen_jax import sampling
from imagen_jax.storage import paths

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _names(url):
  return sorted(p.name for p in paths.path(url).iterdir())


def _png(url):
  return np.asarray(Image.open(io.BytesIO(paths.path(url).read_bytes())))


def test_write_samples_to_a_bucket(gcs_bucket, tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  prompts = ["a red circle", "a blue square"]
  out = f"{gcs_bucket}/samples/run1"
  record = sampling.write_samples(out, prompts, images, 2, {"seed": np.int64(3)})
  assert _names(out) == [
      "000_00.png",
      "000_01.png",
      "001_00.png",
      "001_01.png",
      "grid.png",
      "samples.json",
  ]
  for k, name in enumerate(["000_00.png", "000_01.png", "001_00.png", "001_01.png"]):
    np.testing.assert_array_equal(_png(f"{out}/{name}"), images[k])
  assert json.loads(paths.path(f"{out}/samples.json").read_text()) == record
  assert record["seed"] == 3 and record["files"][2] == {
      "file": "001_00.png",
      "prompt": "a blue square",
      "sample": 0,
  }
  local = tmp_path / "local"
  assert sampling.write_samples(local, prompts, images, 2, {"seed": 3}) == record
  np.testing.assert_array_equal(np.asarray(Image.open(local / "grid.png")), _png(f"{out}/grid.png"))


def _base_workdir(path):
  """A configs/shapes.py base stage with one checkpoint of random params (no training)."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax.core import meta  # pylint: disable=import-outside-toplevel
  from imagen_jax import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs" / "shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("stage=base,runlocal")
  pipe = pipeline_lib.StagePipeline.from_config(config)
  params = meta.unbox(pipe.init(jax.random.PRNGKey(0))["params"])
  state = state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  ckpt = ckpt_lib.Checkpointer(path, every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=config.to_dict(), force=True)
  ckpt.close()
  return str(path)


def test_sample_script_reads_prompts_from_and_writes_to_a_bucket(gcs_bucket, tmp_path):
  workdir = _base_workdir(tmp_path / "base")
  prompts = f"{gcs_bucket}/prompts.txt"
  paths.write_atomic(prompts, "a red circle\n\na small green square\n")
  out = f"{gcs_bucket}/samples"
  cmd = [
      sys.executable,
      str(ROOT / "scripts/sample.py"),
      f"--workdir_base={workdir}",
      f"--prompts_file={prompts}",
      "--num_samples=2",
      "--num_steps=1",
      "--sampler=ddim",
      f"--outdir={out}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _names(out) == [
      "000_00.png",
      "000_01.png",
      "001_00.png",
      "001_01.png",
      "grid.png",
      "samples.json",
  ]
  assert _png(f"{out}/000_00.png").shape == (16, 16, 3)
  record = json.loads(paths.path(f"{out}/samples.json").read_text())
  assert record["prompts"] == ["a red circle", "a small green square"]
  assert [f["prompt"] for f in record["files"]] == ["a red circle"] * 2 + [
      "a small green square"
  ] * 2
