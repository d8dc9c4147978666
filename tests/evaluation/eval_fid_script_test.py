"""scripts/eval_fid.py end to end: a tiny COCO-format dataset, a tiny trained shapes base stage.

The slow test trains configs/shapes.py:stage=base,runlocal for 2 steps, runs the script with
random Inception weights (75px input: not FID, just the machinery), SIGKILLs it after the
first finished shard, reruns it and checks the finished shards were kept and reused.
The gs:// test (a random-params stage, 2 sampler steps) writes the run to a bucket on
fake-gcs-server with the Inception weights read from it, reruns and checks nothing was
regenerated; the COCO test checks a COCO-trained stage is flagged.
"""

import importlib.util
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "eval_fid.py")


def _env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _args(tiny_coco, out, workdir, **extra):
  args = [
      sys.executable,
      SCRIPT,
      f"--workdir_base={workdir}",
      f"--coco_annotations={tiny_coco[0]}",
      f"--coco_images={tiny_coco[1]}",
      f"--output_dir={out}",
      "--inception_weights=random:0",
      "--inception_image_size=75",
      "--inception_batch_size=8",
      "--resolution=64",
      "--num_samples=16",
      "--shard_size=4",
      "--seed=7",
      "--batch_size=4",
  ]
  return args + [f"--{k}={v}" for k, v in extra.items()]


def test_missing_reference_directory_fails_fast(tiny_coco, tmp_path):
  bad = (tiny_coco[0], str(tmp_path / "no_val2014"))
  proc = subprocess.run(
      _args(bad, tmp_path / "out", tmp_path / "no_workdir"),
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  assert "reference image directory" in proc.stderr and "val2014" in proc.stderr


def test_more_samples_than_captions_fails_before_loading_stages(tiny_coco, tmp_path):
  proc = subprocess.run(
      _args(tiny_coco, tmp_path / "out", tmp_path / "no_workdir", num_samples=65),
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0 and "without replacement" in proc.stderr


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
  import jax  # pylint: disable=g-import-not-at-top
  from imagen_jax.train import loop  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs" / "shapes.py")
  cfg_mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfg_mod)
  config = cfg_mod.get_config("stage=base,runlocal")
  config.total_steps, config.checkpoint.every_steps = 2, 2
  workdir = str(tmp_path_factory.mktemp("shapes_base"))
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    loop.train_and_evaluate(config, workdir)
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  return workdir


@pytest.mark.slow
def test_script_end_to_end_killed_and_resumed(tiny_coco, base_workdir, tmp_path):
  out = tmp_path / "fid"
  # Many sampler steps make each shard take a while, so the kill lands mid-generation.
  args = _args(tiny_coco, out, base_workdir, num_steps=200, guidance_sweep="1,3")
  shards = out / "base_w1" / "shards"
  proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      if shards.is_dir() and any(
          p.suffix == ".npz" and ".tmp" not in p.name for p in shards.iterdir()
      ):
        break
      time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  kept = {p.name: p.stat().st_mtime for p in shards.iterdir() if ".tmp" not in p.name}
  assert 1 <= len(kept) < 4, kept
  assert not (out / "fid.json").exists()

  done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  for name, mtime in kept.items():
    assert (shards / name).stat().st_mtime == mtime  # finished shards were not redone
  record = json.loads((out / "fid.json").read_text())
  w1, w3 = record["runs"]
  assert w1["counts"]["shards_reused"] == len(kept)
  assert w1["counts"]["shards_reused"] + w1["counts"]["shards_generated_now"] == 4
  assert w3["counts"]["shards_reused"] == 0
  for r in (w1, w3):
    assert r["counts"]["samples"] == r["counts"]["reference"] == 16
    assert r["fid"] > 0 and r["seed"] == 7 and r["sample_resolution"] == 32
    assert r["settings"]["stages"][0]["num_steps"] == 200
  assert [r["settings"]["base_guidance_scale"] for r in (w1, w3)] == [1.0, 3.0]
  table = json.loads((out / "fid_vs_guidance.json").read_text())
  assert [row["base_guidance_scale"] for row in table] == [1.0, 3.0]
  assert (out / "fid_vs_guidance.md").read_text().startswith("| base guidance w | FID |")
  print(done.stdout[-500:])


def _bucket_objects(url):
  """name -> generation of every object under a gs:// prefix."""
  import fsspec  # pylint: disable=import-outside-toplevel

  fs, bare = fsspec.core.url_to_fs(url)
  fs.invalidate_cache()
  return {
      name[len(bare) + 1 :]: info["generation"] for name, info in fs.find(bare, detail=True).items()
  }


def test_script_on_a_bucket_resumes_from_it(
    tiny_coco, make_stage_workdir, random_state_dict, gcs_bucket, tmp_path
):
  from imagen_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
  from imagen_jax.storage import paths  # pylint: disable=import-outside-toplevel

  workdir = make_stage_workdir(tmp_path / "base")
  weights = f"{gcs_bucket}/weights/{inception.WEIGHTS_NAME}.npz"
  buf = io.BytesIO()
  np.savez(buf, **random_state_dict)
  paths.path(weights).write_bytes(buf.getvalue())
  out = f"{gcs_bucket}/fid"
  env = {**_env(), paths.CACHE_ENV: str(tmp_path / "cache")}
  args = _args(
      tiny_coco, out, workdir, inception_weights=weights, num_samples=8, num_steps=2, sampler="ddim"
  )
  first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "trained on COCO" not in first.stderr
  objects = _bucket_objects(out)
  shards = sorted(k for k in objects if k.startswith("default/shards/"))
  assert shards == [f"default/shards/shard-{k:05d}.npz" for k in range(2)]
  assert {"fid.json", "captions.json", "default/result.json"} <= set(objects)
  assert sum(k.startswith("reference_cache/coco_ref_") for k in objects) == 2  # .npz + .npy
  assert not [k for k in objects if ".tmp" in k]
  record = json.loads(paths.path(f"{out}/fid.json").read_text())
  assert record["trained_on_coco"] is False and record["stages_trained_on_coco"] == {}
  (run,) = record["runs"]
  assert run["counts"]["shards_generated_now"] == 2 and run["counts"]["samples"] == 8
  ident = inception.params_identity(inception.init_params(0))
  assert run["hashes"]["inception"].startswith(ident)  # the weights file in the bucket
  assert run == json.loads(paths.path(f"{out}/default/result.json").read_text())

  again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  after = _bucket_objects(out)
  assert {k: after[k] for k in shards} == {k: objects[k] for k in shards}  # not rewritten
  (rerun,) = json.loads(paths.path(f"{out}/fid.json").read_text())["runs"]
  assert rerun["counts"]["shards_reused"] == 2 and rerun["counts"]["shards_generated_now"] == 0
  assert rerun["fid"] == run["fid"]


def test_coco_trained_stage_is_flagged(tiny_coco, make_stage_workdir, tmp_path):
  workdir = make_stage_workdir(
      tmp_path / "coco_base",
      **{
          "input.dataset": "coco_json",
          "input.annotations": "/data/coco/captions_train2014.json",
          "input.path": "/data/coco/train2014",
      },
  )
  out = tmp_path / "fid"
  proc = subprocess.run(
      _args(tiny_coco, out, workdir, num_samples=4, num_steps=1, sampler="ddim"),
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "was trained on COCO (input.dataset='coco_json')" in proc.stderr
  assert "zero-shot COCO FID" in proc.stderr
  record = json.loads((out / "fid.json").read_text())
  assert record["trained_on_coco"] is True
  assert record["stages_trained_on_coco"] == {workdir: "input.dataset='coco_json'"}
  assert record["runs"][0]["settings"]["trained_on_coco"] is True
  assert json.loads(proc.stdout.strip().splitlines()[-1])["trained_on_coco"] is True
