"""The embedded-default job (scripts/demo.py) at test size."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from imagen_jax import demo
from imagen_jax.data import shapes
from imagen_jax.data import shapes_score

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_heldout_scenes_and_scorer_reference():
  scenes = demo.heldout_scenes(24, seed=0, max_objects=1)
  heldout = {tuple(c) for c in shapes.HELDOUT}
  for s in scenes:
    assert any((o.colour, o.shape) in heldout for o in s.objects)
  chance, ceiling = demo.scorer_reference(scenes, 32)
  assert ceiling > 0.95
  assert chance < 0.7
  scores = {"accuracy": 0.5, "shape": 0.25, "background_noise": 3.0}
  table = demo.format_table(
      {
          "per_attribute": {"w=1": scores, "w=3": dict(scores, accuracy=0.75)},
          "validation_accuracy": {"w=1": 0.6, "w=3": 0.8},
          "chosen_setting": "w=3",
          "chance": chance,
          "ground_truth": ceiling,
      }
  )
  assert "*w=3" in table and " w=1" in table and f"{chance:.3f}" in table and "0.250" in table


def test_validation_draw_is_training_pairs_and_choice_prefers_first_best():
  heldout = {tuple(c) for c in shapes.HELDOUT}
  val = demo.validation_scenes(48)
  assert all((o.colour, o.shape) not in heldout for s in val for o in s.objects)
  assert [shapes.caption(s) for s in val] != [shapes.caption(s) for s in demo.heldout_scenes(48)]
  assert (
      demo.choose({"a": {"accuracy": 0.5}, "b": {"accuracy": 0.7}, "c": {"accuracy": 0.7}}) == "b"
  )


def test_background_noise_is_zero_on_renders_and_grows_with_speckle():
  rng = np.random.default_rng(0)
  scene = demo.heldout_scenes(1)[0]
  render = shapes.render(scene, 64)
  assert shapes_score.background_noise(render, scene) == 0.0
  noisy = np.clip(render + rng.normal(0, 12, render.shape), 0, 255).astype(np.uint8)
  assert 8.0 < shapes_score.background_noise(noisy, scene) < 11.0  # E|N(0, 12)| = 9.6


def test_cpu_device_count_divides_every_batch():
  assert demo.cpu_device_count([32, 32], cores=2) == 2
  assert demo.cpu_device_count([32, 32, 16], cores=12) == 8
  assert demo.cpu_device_count([6], cores=4) == 3
  assert demo.cpu_device_count([32], cores=1) == 1
  assert demo.cpu_device_count([7, 32], cores=8) == 1


@pytest.mark.slow
def test_set_cpu_devices_writes_xla_flags_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
  assert demo.set_cpu_devices([32, 32], requested=4) == 4
  assert demo.os.environ["XLA_FLAGS"] == (
      f"--xla_cpu_foo=1 --xla_force_host_platform_device_count=4 {demo.SCHEDULER_FLAG}"
  )
  assert demo.set_cpu_devices([32], requested=2) == 0  # already set: left alone
  monkeypatch.setenv("XLA_FLAGS", "")
  assert demo.set_cpu_devices([32], requested=1) == 0  # one device: nothing to set
  assert demo.os.environ["XLA_FLAGS"] == ""


def test_demo_script_end_to_end_and_resume(tmp_path):
  cmd = [
      sys.executable,
      str(ROOT / "scripts/demo.py"),
      f"--workdir={tmp_path}",
      "--base_config=configs/shapes.py:stage=base,runlocal",
      "--sr1_config=configs/shapes.py:stage=sr1,runlocal",
      "--num_stages=2",
      "--num_eval=4",
      "--num_steps=2",
      "--sr_num_steps=2",
      "--encoder_steps=20",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "demo_results.json").read_text())
  assert set(record["accuracy"]) == {s.label for s in demo.DEFAULT_SETTINGS}
  assert all(0.0 <= v <= 1.0 for v in record["accuracy"].values())
  assert 0.0 < record["chance"] < 1.0 and record["wall_seconds"] > 0
  assert (tmp_path / "demo_grid.png").exists() and (tmp_path / "demo_plot.png").exists()
  assert record["chosen_setting"] in record["accuracy"]
  assert set(record["validation_accuracy"]) == set(record["accuracy"])
  assert record["resolution"] == 32 and record["text_encoder"]["pretrained"]
  assert record["text_encoder"]["name"] == str(tmp_path / "text_encoder")
  assert all(v["background_noise"] >= 0.0 for v in record["per_attribute"].values())
  first = dict(record["accuracy"])
  # A rerun resumes: no training, cached samples, the same numbers.
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.loads((tmp_path / "demo_results.json").read_text())
  assert again["accuracy"] == first
  assert again["train_seconds"] < record["train_seconds"]
