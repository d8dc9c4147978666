"""Caption alignment and the training-loop evaluators (`config.evals`)."""

import ml_collections
import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation import alignment
from imagen_jax.evaluation import evaluators


def _oracle(scenes, size=64):
  """A 'sampler' that renders the scenes in call order (ignores the text)."""
  renders = np.stack([shapes.render(s, size) for s in scenes])
  pos = [0]

  def sample_fn(captions, rng_seed):
    del rng_seed
    out = renders[pos[0] : pos[0] + len(captions)]
    pos[0] += len(captions)
    return out

  return sample_fn


def _grey(captions, rng_seed):
  del rng_seed
  return np.full((len(captions), 64, 64, 3), 128, np.uint8)


def test_alignment_oracle_vs_blank():
  scenes = alignment.draw_scenes(24, seed=5)
  assert all(any((o.colour, o.shape) in shapes.HELDOUT for o in s.objects) for s in scenes)
  good = alignment.evaluate(_oracle(scenes), num_samples=24, seed=5)
  bad = alignment.evaluate(_grey, num_samples=24, seed=5)
  print(
      f"alignment: oracle {good['accuracy']:.3f}, blank {bad['accuracy']:.3f}, "
      f"chance {good['chance']:.3f}, ceiling {good['ceiling']:.3f}"
  )
  assert good["accuracy"] == pytest.approx(good["ceiling"]) and good["accuracy"] > 0.9
  assert bad["accuracy"] < good["chance"] < good["accuracy"]


def test_alignment_rejects_float_images():
  with pytest.raises(TypeError, match="uint8"):
    alignment.evaluate(lambda c, s: np.zeros((len(c), 8, 8, 3), np.float32), num_samples=2)


def test_from_config_builds_evaluators_and_runs_them():
  evals = ml_collections.ConfigDict()
  evals.alignment = dict(log_steps=100, num_samples=8, seed=1)
  evals.fid_shapes = dict(
      type="fid",
      log_steps=500,
      num_samples=12,
      resolution=64,
      seed=2,
      inception_weights="random:0",
      inception_image_size=75,
      inception_batch_size=8,
      sample_batch_size=6,
  )
  # The FID evaluator's oracle renders the scenes its records are drawn from.
  from imagen_jax.data import sources  # pylint: disable=g-import-not-at-top

  src = sources.ShapesSource(64, "heldout", 1)
  fid_scenes = [src.read(i, np.random.default_rng([2, i])) for i in range(12)]
  renders = np.stack([img for img, _ in fid_scenes])
  pos = [0]

  def fid_sample_fn(params, captions, rng_seed):
    del rng_seed
    assert params == "ema params"  # what run() was given
    out = renders[pos[0] : pos[0] + len(captions)]
    assert [c for _, c in fid_scenes[pos[0] : pos[0] + len(captions)]] == list(captions)
    pos[0] += len(captions)
    return out

  seen = []

  def grey_with_params(params, captions, rng_seed):
    seen.append(params)
    return _grey(captions, rng_seed)

  built = evaluators.from_config(evals, grey_with_params)
  assert [(n, type(e).__name__, s) for n, e, s in built] == [
      ("alignment", "AlignmentEvaluator", 100),
      ("fid_shapes", "FidEvaluator", 500),
  ]
  metrics = dict(built[0][1].run("ema params"))
  assert seen and set(seen) == {"ema params"}
  assert {"accuracy", "chance", "ceiling", "colour"} <= set(metrics)
  fid_eval = evaluators.EVALUATORS["fid"](
      fid_sample_fn, **{k: v for k, v in evals.fid_shapes.items() if k not in ("type", "log_steps")}
  )
  ((name, value),) = list(fid_eval.run("ema params"))
  assert name == "fid" and value < 1e-6


def test_from_config_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown type 'clip'"):
    evaluators.from_config({"c": dict(type="clip", log_steps=1)}, _grey)
  with pytest.raises(ValueError, match="log_steps"):
    evaluators.from_config({"alignment": dict(num_samples=2)}, _grey)
  with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
    evaluators.from_config(
        {"fid": dict(log_steps=1, resolution=64, inception_weights=str(tmp_path / "x.pth"))}, _grey
    )
