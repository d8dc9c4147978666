"""scripts/eval_fid.py end to end: a tiny COCO-format dataset, a tiny trained shapes base stage.

The slow test trains configs/shapes.py:stage=base,runlocal for 2 steps, runs the script with
random Inception weights (75px input: not FID, just the machinery), SIGKILLs it after the
first finished shard, reruns it and checks the finished shards were kept and reused.
"""
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

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
  args = [sys.executable, SCRIPT, f"--workdir_base={workdir}",
          f"--coco_annotations={tiny_coco[0]}", f"--coco_images={tiny_coco[1]}",
          f"--output_dir={out}", "--inception_weights=random:0",
          "--inception_image_size=75", "--inception_batch_size=8", "--resolution=64",
          "--num_samples=16", "--shard_size=4", "--seed=7", "--batch_size=4"]
  return args + [f"--{k}={v}" for k, v in extra.items()]


def test_missing_reference_directory_fails_fast(tiny_coco, tmp_path):
  bad = (tiny_coco[0], str(tmp_path / "no_val2014"))
  proc = subprocess.run(_args(bad, tmp_path / "out", tmp_path / "no_workdir"), env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "reference image directory" in proc.stderr and "val2014" in proc.stderr


def test_more_samples_than_captions_fails_before_loading_stages(tiny_coco, tmp_path):
  proc = subprocess.run(_args(tiny_coco, tmp_path / "out", tmp_path / "no_workdir",
                              num_samples=65), env=_env(), capture_output=True, text=True,
                        timeout=300)
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
      if shards.is_dir() and any(p.suffix == ".npz" and ".tmp" not in p.name
                                 for p in shards.iterdir()):
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
