"""The guidance study (imagen_jax/guidance_study.py, scripts/guidance_study.py): the sweep,
the validation-side choice, the plot, and a tiny end-to-end run through the script."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from imagen_jax import guidance_study
from imagen_jax.data import shapes
from imagen_jax.sampling import line_plot

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sweep_points_cover_every_method_once_per_scale():
  points = guidance_study.sweep_points(["classifier"])
  methods = [p.method for p in points]
  assert methods.count("unguided") == 1
  assert methods.count("cfg") == len(guidance_study.CFG_SCALES)
  assert (
      methods.count("classifier")
      == methods.count("cfg+classifier")
      == len(guidance_study.GUIDE_SCALES["classifier"])
  )
  assert all(p.cfg == guidance_study.COMBINED_CFG for p in points if p.method == "cfg+classifier")
  assert all(p.guide is None for p in points if p.method in ("unguided", "cfg"))
  assert len({p.tag for p in points}) == len(points)  # one cache file each


def test_choice_is_made_on_validation_not_heldout():
  sweep = [
      {"scale": 1.0, "validation": {"accuracy": 0.6}, "heldout": {"accuracy": 0.9}},
      {"scale": 3.0, "validation": {"accuracy": 0.7}, "heldout": {"accuracy": 0.5}},
      {"scale": 10.0, "validation": {"accuracy": 0.7}, "heldout": {"accuracy": 0.4}},
  ]
  assert guidance_study.choose(sweep)["scale"] == 3.0  # best validation, ties: smaller


def test_validation_draw_is_training_pairs_and_differs_from_heldout():
  val = guidance_study.validation_scenes(64)
  pairs = {(o.colour, o.shape) for s in val for o in s.objects}
  assert not pairs & set(shapes.HELDOUT)


def test_line_plot_draws_each_series_and_refuses_bad_points():
  img = line_plot.line_plot(
      {"a": [(0, 0.1), (1, 0.5)], "b": [(0, 0.3), (2, 0.2)]}, hlines={"chance": 0.2}
  )
  assert img.shape == (400, 640, 3) and img.dtype == np.uint8
  colours = {tuple(c) for c in img.reshape(-1, 3)}
  assert (31, 119, 180) in colours and (255, 127, 14) in colours
  with pytest.raises(ValueError, match="no points"):
    line_plot.line_plot({})
  with pytest.raises(ValueError, match="series 'a' has a non-finite point"):
    line_plot.line_plot({"a": [(0, float("nan"))]})
  with pytest.raises(ValueError, match=r"series 'a' has x=0 <= 0 on a log x axis"):
    line_plot.line_plot({"a": [(0, 0.1), (1, 0.5)]}, log_x=True)
  logged = line_plot.line_plot({"a": [(0.3, 0.1), (100, 0.5)]}, log_x=True)
  assert logged.shape == img.shape


@pytest.mark.slow  # trains three runlocal runs and samples 26 sweep points: minutes
def test_study_script_end_to_end_and_rerun(tmp_path):
  cmd = [
      sys.executable,
      str(ROOT / "scripts/guidance_study.py"),
      f"--workdir={tmp_path}",
      "--num_eval=2",
      "--guides=classifier",
      "--num_stages=2",
      "--x0_guides",
      "--base_config=configs/shapes.py:stage=base,runlocal",
      "--sr1_config=configs/shapes.py:stage=sr1,runlocal",
      "--classifier_config=configs/shapes.py:stage=classifier,runlocal",
  ]
  subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  record = json.loads((tmp_path / "guidance_study.json").read_text())
  assert set(record["accuracy"]) == {
      "unguided",
      "cfg",
      "classifier",
      "cfg+classifier",
      "classifier_x0",
      "cfg+classifier_x0",
  }
  for method, sweep in record["sweeps"].items():
    chosen = guidance_study.choose(sweep)
    assert record["chosen_scale"][method] == chosen["scale"]
    assert record["accuracy"][method] == chosen["heldout"]["accuracy"]
  assert record["timing"]["ratio_to_unguided_counterpart"]["classifier"] > 0
  assert (tmp_path / "guidance_study.png").stat().st_size > 0
  assert (tmp_path / "guidance_study_grid.png").stat().st_size > 0
  cached = sorted((tmp_path / "study_eval").iterdir())
  assert len(cached) == 2 * len(guidance_study.sweep_points(["classifier", "classifier_x0"]))
  mtimes = [p.stat().st_mtime for p in cached]
  subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert [p.stat().st_mtime for p in sorted((tmp_path / "study_eval").iterdir())] == mtimes
  assert json.loads((tmp_path / "guidance_study.json").read_text())["accuracy"] == (
      record["accuracy"]
  )


@pytest.mark.slow  # trains five runlocal runs (base, CLIP, inpainting stage, prior, decoder)
def test_study_extras_inpaint_and_unclip_end_to_end(tmp_path):
  cmd = [
      sys.executable,
      str(ROOT / "scripts/guidance_study.py"),
      f"--workdir={tmp_path}",
      "--num_eval=2",
      "--guides=clip",
      "--extras=inpaint,unclip",
  ] + [
      f"--{n}_config=configs/shapes.py:stage={n},runlocal"
      for n in ("base", "clip", "inpaint", "prior", "decoder")
  ]
  subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  record = json.loads((tmp_path / "guidance_study.json").read_text())
  assert record["accuracy"]["unclip"] == record["unclip"]["accuracy"]
  assert len(record["unclip"]["sweeps"]) == 4
  inpaint = record["inpaint"]
  assert inpaint["known_region_error"] < 1e-6  # RePaint pastes the known pixels exactly
  assert 0.0 <= inpaint["glide_stage_known_region_error"] <= 1.0
  assert set(inpaint["sweeps"]) == {"repaint", "glide", "glide+paste"}
  for grid in ("guidance_study_edits.png", "guidance_study_unclip.png"):
    assert grid in record["extra_grids"] and (tmp_path / grid).stat().st_size > 0
  bad = subprocess.run(
      cmd[:3] + ["--extras=unclip", "--guides=classifier"], cwd=ROOT, capture_output=True, text=True
  )
  assert bad.returncode != 0 and "--extras=unclip needs the study's CLIP" in bad.stderr
