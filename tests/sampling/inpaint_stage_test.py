"""A GLIDE-style inpainting stage (configs/shapes.py:stage=inpaint) through the cascade:
it samples with no edit (nothing known), reads the masked image as its input, keeps the
known pixels with RePaint's paste and leaves them to the network without it; random-weight
stages (tests/sampling/cascade_test.py's `_make_workdir`). Training it: the slow tier of
tests/train/stage_task_test.py-like runs in tests/configs/stage_configs_train_test.py."""

import importlib.util
import pathlib

import numpy as np
import pytest

from imagen_jax import sampling

_SPEC = importlib.util.spec_from_file_location(
    "cascade_test_fixtures", pathlib.Path(__file__).with_name("cascade_test.py")
)
cascade_test = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cascade_test)

PROMPTS = ["a large red circle on the left", "a small blue square"]
FAST = sampling.StageSettings(sampler="ddim", num_steps=3, guidance_scale=3.0)
R = 16


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  root = tmp_path_factory.mktemp("stages")
  inpaint = sampling.load_stage(
      cascade_test._make_workdir(root / "inpaint", "stage=inpaint,runlocal", 1)
  )
  base = sampling.load_stage(cascade_test._make_workdir(root / "base", "stage=base,runlocal", 1))
  return inpaint, base


def test_inpainting_stage_samples_reads_its_input_and_pastes(stages):
  inpaint, _ = stages
  assert inpaint.pipeline.is_inpainting
  cascade = sampling.CascadeSampler([inpaint], [FAST], batch_size=2)
  plain = cascade.sample(PROMPTS, seed=1, progress=False)[0]  # no edit: nothing known
  assert plain.shape == (2, R, R, 3)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (R, R, 3), dtype=np.uint8)
  keep = np.zeros((R, R), bool)
  keep[:, : R // 2] = True
  pasted = cascade.sample(PROMPTS, seed=1, progress=False, edit=sampling.Edit(image, keep))[0]
  np.testing.assert_array_equal(pasted[:, keep], np.broadcast_to(image, pasted.shape)[:, keep])
  own = cascade.sample(
      PROMPTS, seed=1, progress=False, edit=sampling.Edit(image, keep, paste=False)
  )[0]
  # Without the paste the known half is the network's (random weights: not the image), and
  # the hole differs from the unedited sample: the network reads the masked image.
  assert np.abs(own[:, keep].astype(int) - image[keep].astype(int)).mean() > 5
  assert np.abs(own[:, ~keep].astype(int) - plain[:, ~keep].astype(int)).mean() > 0.5


def test_paste_false_needs_an_inpainting_stage_and_a_mask(stages):
  _, base = stages
  image = np.zeros((R, R, 3), np.uint8)
  keep = np.ones((R, R), bool)
  keep[4:8, 4:8] = False
  cascade = sampling.CascadeSampler([base], [FAST], batch_size=2)
  with pytest.raises(ValueError, match="is not an inpainting stage"):
    cascade.sample(PROMPTS, progress=False, edit=sampling.Edit(image, keep, paste=False))
  with pytest.raises(ValueError, match="paste=False needs a mask"):
    sampling.Edit(image, strength=0.5, paste=False)
  with pytest.raises(ValueError, match="Edit.paste='no' must be True or False"):
    sampling.Edit(image, keep, paste="no")
