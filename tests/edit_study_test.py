"""The inpainting comparison's task (imagen_jax/edit_study.py): the hole covers the object,
the known region is background, and the known-region error measures what it says."""

import numpy as np

from imagen_jax import demo
from imagen_jax import edit_study
from imagen_jax.data import shapes


def test_hole_covers_every_object_pixel_and_leaves_background_known():
  scenes = demo.heldout_scenes(64, seed=1234, max_objects=1)
  for r in (16, 32):
    images, keep = edit_study.edit_inputs(scenes, r)
    background = np.asarray(shapes.BACKGROUND, np.int16)
    drawn = np.any(np.abs(images.astype(np.int16) - background) > 2, axis=-1)
    assert drawn.any(axis=(1, 2)).all()  # every scene has its object
    assert not (drawn & keep).any()  # ... all of it inside the hole
    assert (~keep).any(axis=(1, 2)).all() and keep.any(axis=(1, 2)).all()
    # The hole is the object's box + the margin: no larger than the box of its size.
    for s, k in zip(scenes[:8], keep[:8]):
      side = shapes.SIZES[s.objects[0].size] * r + 2 * edit_study.HOLE_MARGIN + 2
      assert (~k).sum() <= side**2


def test_known_region_error_reads_the_kept_pixels_only():
  known = np.full((2, 4, 4, 3), 100, np.uint8)
  keep = np.zeros((2, 4, 4), bool)
  keep[:, :2] = True
  same_outside = known.copy()
  same_outside[:, 2:] = 255  # the hole may hold anything
  assert edit_study.known_region_error(same_outside, known, keep) == 0.0
  shifted = known.copy()
  shifted[:, :2] += 51
  np.testing.assert_allclose(edit_study.known_region_error(shifted, known, keep), 0.2, rtol=1e-6)


def test_edit_grid_has_an_input_row_and_a_row_per_method():
  scenes = demo.heldout_scenes(3, seed=1234, max_objects=1)
  out = {(m, w): np.zeros((3, 16, 16, 3), np.uint8) for m in edit_study.METHODS for w in (1.0, 3.0)}
  record = {"chosen_cfg": {m: 3.0 for m in edit_study.METHODS}}
  grid = edit_study.edit_grid(scenes, out, record)
  assert grid.dtype == np.uint8 and grid.shape[1] == 3 * 96
  rows = 1 + len(edit_study.METHODS)
  assert grid.shape[0] % rows == 0 and grid.shape[0] > rows * 96
