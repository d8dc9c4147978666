"""Tests for the shapes world: sampling, captions, rendering and the scorer."""

import inspect
import re

import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.data import shapes_score
from imagen_jax.data import shapes_world


def _scenes(n, seed=0, split="train"):
  return [shapes.sample_scene(np.random.default_rng([seed, i]), split) for i in range(n)]


def test_deterministic_by_seed():
  a, b = shapes.sample_scene(7), shapes.sample_scene(7)
  assert a == b
  assert shapes.caption(a) == shapes.caption(b)
  np.testing.assert_array_equal(shapes.render(a, 32), shapes.render(b, 32))
  assert shapes.Scene.from_dict(a.to_dict()) == a


def test_world_vocabulary_is_reexported_by_shapes():
  public = [
      n
      for n, v in vars(shapes_world).items()
      if not n.startswith("_")
      and not inspect.ismodule(v)
      and getattr(v, "__module__", shapes_world.__name__) == shapes_world.__name__
  ]
  assert {"Scene", "Object", "COLOURS", "SIZES", "shape_coverage"} <= set(public)
  for name in public:
    assert getattr(shapes, name) is getattr(shapes_world, name), name
  assert shapes.score is shapes_score.score


def test_scene_structure():
  for s in _scenes(300):
    assert 1 <= len(s.objects) <= 3
    for o in s.objects:
      assert o.shape in shapes.SHAPES and o.colour in shapes.COLOURS
      assert o.size in shapes.SIZES
      if o.place is not None:
        assert shapes.place_holds(o.place, o.x, o.y)
    for r in s.relations:
      a, b = s.objects[r.subject], s.objects[r.reference]
      assert shapes.relation_holds(r.relation, (a.x, a.y), (b.x, b.y))
  assert all(
      len(s.objects) == 1 for s in [shapes.sample_scene(i, max_objects=1) for i in range(50)]
  )


def test_render_shape_and_cross_resolution_agreement():
  for s in _scenes(20):
    small, big = shapes.render(s, 32), shapes.render(s, 128)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert big.shape == (128, 128, 3)
    pooled = big.astype(np.float32).reshape(32, 4, 32, 4, 3).mean((1, 3))
    assert np.abs(pooled - small).mean() < 2.0


def test_heldout_split():
  heldout = set(shapes.HELDOUT)
  for s in _scenes(500, split="train"):
    assert not {(o.colour, o.shape) for o in s.objects} & heldout
  for s in _scenes(200, split="heldout"):
    assert {(o.colour, o.shape) for o in s.objects} & heldout
  seen = {(o.colour, o.shape) for s in _scenes(500, split="all") for o in s.objects}
  assert heldout <= seen
  # Held-out colours and shapes still appear in training, in other combos.
  train = {(o.colour, o.shape) for s in _scenes(500) for o in s.objects}
  for colour, shape in heldout:
    assert any(c == colour for c, _ in train)
    assert any(sh == shape for _, sh in train)
  with pytest.raises(ValueError, match="split"):
    shapes.sample_scene(0, split="test")


@pytest.mark.parametrize("size,n", [(32, 120), (48, 60), (64, 60), (128, 30), (256, 12)])
def test_score_ground_truth_vs_wrong_scene(size, n):
  scenes = _scenes(n, seed=size, split="all")
  right = shapes_score.mean_scores(shapes.score(shapes.render(s, size), s) for s in scenes)
  wrong = shapes_score.mean_scores(
      shapes.score(shapes.render(scenes[(i + 1) % n], size), s) for i, s in enumerate(scenes)
  )
  assert right["accuracy"] >= 0.95, right
  for key in ("colour", "shape", "size", "place", "relation", "count"):
    assert right[key] >= 0.95, (key, right)
  # Chance: a wrong scene's checks pass only by coincidence (~0.35 measured).
  assert wrong["accuracy"] < 0.5, wrong


def test_score_survives_noise():
  rng = np.random.default_rng(0)
  scores = []
  for s in _scenes(60, seed=3):
    img = shapes.render(s, 32).astype(np.float32)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    scores.append(shapes.score(img, s))
  assert shapes_score.mean_scores(scores)["accuracy"] >= 0.95


def test_score_detects_specific_errors():
  s = shapes.Scene((shapes.Object("circle", "red", "large", 0.25, 0.5, "left"),))
  assert shapes.score(shapes.render(s, 32), s)["all_correct"]
  for wrong in (
      shapes.Object("square", "red", "large", 0.25, 0.5, "left"),
      shapes.Object("circle", "blue", "large", 0.25, 0.5, "left"),
      shapes.Object("circle", "red", "small", 0.25, 0.5, "left"),
      shapes.Object("circle", "red", "large", 0.75, 0.5, "right"),
  ):
    result = shapes.score(shapes.render(shapes.Scene((wrong,)), 32), s)
    assert result["accuracy"] < 1.0
  blank = np.full((32, 32, 3), shapes.BACKGROUND, np.uint8)
  result = shapes.score(blank, s)
  assert result["accuracy"] == 0.0 and result["num_detected"] == 0


_WORD = lambda options: re.compile(r"\b(" + "|".join(options) + r")s?\b")


def test_caption_never_names_what_the_render_lacks():
  colour_re, shape_re = _WORD(shapes.COLOURS), _WORD(shapes.SHAPES)
  for s in _scenes(200, seed=11, split="all"):
    text = shapes.caption(s)
    detections = shapes_score.detect(shapes.render(s, 32))
    found = {(d.colour, d.shape) for d in detections}
    named_colours = set(colour_re.findall(text))
    named_shapes = set(shape_re.findall(text))
    assert named_colours == {c for c, _ in found}, (text, detections)
    assert named_shapes == {sh for _, sh in found}, (text, detections)
    for o in s.objects:
      assert f"{o.size} {o.colour} {o.shape}" in text
    assert ("two " in text) == (len(detections) > len(found)), text
    # Every place/relation word is backed by the rendered geometry.
    assert shapes.score(shapes.render(s, 32), s)["all_correct"], text


def test_captions_vary():
  texts = {shapes.caption(s) for s in _scenes(200)}
  assert len(texts) > 150
  assert any(t.startswith("there is") for t in texts)
  assert any(" and " in t for t in texts)
  assert any(t.startswith("two ") for t in texts)
