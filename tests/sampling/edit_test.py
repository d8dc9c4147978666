"""Inpainting and SDEdit through the cascade (`CascadeSampler.sample(edit=...)`), the
`Edit` checks, the image/mask loaders and scripts/sample.py's edit flags, on random-weight
stages (the workdirs of tests/sampling/cascade_test.py's `_make_workdir`)."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from imagen_jax import sampling
from imagen_jax.sampling import edit as edit_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "cascade_test_fixtures", pathlib.Path(__file__).with_name("cascade_test.py")
)
cascade_test = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cascade_test)

PROMPTS = ["a large red circle on the left", "a small blue square", "a green triangle"]
FAST = sampling.StageSettings(sampler="ddim", num_steps=3, guidance_scale=1.0)
R = 16  # the shapes base stage's resolution


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  path = tmp_path_factory.mktemp("stages") / "base"
  return sampling.load_stage(cascade_test._make_workdir(path, "stage=base,runlocal", 1))


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, R, R, 3), dtype=np.uint8)


def _left_half():
  mask = np.zeros((R, R), bool)
  mask[:, : R // 2] = True
  return mask


def _uint8_diff(a, b):
  return np.abs(a.astype(int) - b.astype(int))


def _by_hand(base, cascade, prompts, edit, seed):
  """Stage 0 of `cascade.sample(prompts, seed, edit=edit)`, composed by hand from
  StagePipeline.sample on one device (the cascade's first chunk key)."""
  emb, mask = cascade.encoder(0).encode(prompts)
  image, keep = edit.arrays(R, len(prompts))
  inpaint, strength, resample, _ = edit.static_key
  kw = {}
  if inpaint:
    kw.update(known=jnp.asarray(image), mask=jnp.asarray(keep), resample=resample)
  if strength is not None:
    kw.update(init=jnp.asarray(image), start_t=strength)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0), 0)
  fn = jax.jit(
      lambda params, emb, mask, key: base.pipeline.sample(
          params,
          emb,
          mask,
          key,
          sampler=FAST.sampler,
          num_steps=FAST.num_steps,
          threshold=FAST.threshold,
          **kw,
      )
  )
  return sampling.to_uint8(np.asarray(jnp.clip(fn(base.params, emb, mask, key), -1, 1)))


def test_inpainting_keeps_the_known_pixels_and_sdedit_stays_close(base):
  """One image per prompt (3 prompts padded to the 8-device batch), inpainting with SDEdit
  from a small strength: the kept pixels come back exactly, the sampled ones stay close to
  the image (they start from it, barely noised); another image (one for every prompt)
  reuses the compiled sampler."""
  cascade = sampling.CascadeSampler([base], [FAST], batch_size=4)
  images, keep = _images(3), _left_half()
  out = cascade.sample(PROMPTS, seed=3, progress=False, edit=sampling.Edit(images, keep, 0.02))[0]
  assert out.shape == (3, R, R, 3)
  np.testing.assert_array_equal(out[:, keep], images[:, keep])  # exact, not just 1 step
  # Ordinary sampling is ~74 uint8 steps from the image on average (a grey image ~64); this
  # random-weight stage's edit ~6.
  far = np.abs(images.astype(int) - 127.5).mean()
  assert _uint8_diff(out, images)[:, ~keep].mean() < 0.25 * far

  other = _images(1, seed=9)
  edit = sampling.Edit(other[0], keep, 0.02)
  again = cascade.sample(PROMPTS, seed=3, progress=False, edit=edit)[0]
  assert len(cascade._fns) == 1
  np.testing.assert_array_equal(again[:, keep], np.broadcast_to(other, again.shape)[:, keep])
  assert _uint8_diff(again, other)[:, ~keep].mean() < 0.25 * far


@pytest.mark.slow  # two sampler compilations (the cascade's and the one by hand)
def test_cascade_equals_the_pipeline_by_hand(base):
  """RePaint with R = 2 and SDEdit from 0.7 together, through the cascade and through
  StagePipeline.sample by hand: the same images (up to rounding across devices)."""
  cascade = sampling.CascadeSampler([base], [FAST], batch_size=4)
  images, keep = _images(3, seed=4), _left_half()
  edit = sampling.Edit(images, keep, strength=0.7, resample=2)
  out = cascade.sample(PROMPTS, seed=3, progress=False, edit=edit)[0]
  assert _uint8_diff(out, images)[:, keep].max() <= 1
  assert _uint8_diff(out, images)[:, ~keep].mean() > 5  # the rest is sampled
  by_hand = _by_hand(base, cascade, PROMPTS, edit, seed=3)
  diff = _uint8_diff(by_hand, out)
  assert np.mean(diff <= 1) > 0.99 and diff.max() <= 3, diff.max()


def test_edit_errors(base):
  cascade = sampling.CascadeSampler([base], [FAST], batch_size=4)
  img, keep = _images(1)[0], _left_half()
  run = lambda edit: cascade.sample(PROMPTS, progress=False, edit=edit)  # raises before sampling
  with pytest.raises(ValueError, match=r"Edit.image is 8x8 but stage 0 .* samples 16x16"):
    run(sampling.Edit(img[:8, :8], strength=0.5))
  with pytest.raises(ValueError, match=r"Edit.mask is 8x8 but the image is 16x16"):
    sampling.Edit(img, keep[:8, :8])
  with pytest.raises(ValueError, match=r"Edit.image has 2 images for 3 prompts"):
    run(sampling.Edit(_images(2), strength=0.5))
  with pytest.raises(ValueError, match=r"Edit.mask has 2 images for 3 prompts"):
    run(sampling.Edit(img, np.stack([keep, keep])))
  for bad in (0.0, 1.5, -0.1, float("nan"), True, "x"):
    with pytest.raises(ValueError, match=r"Edit.strength=.* must be a number in \(0, 1\]"):
      sampling.Edit(img, strength=bad)
  with pytest.raises(ValueError, match="Edit.mask keeps every pixel: nothing to inpaint"):
    sampling.Edit(img, np.ones((R, R), bool))
  with pytest.raises(ValueError, match=r"Edit.mask 1 keeps no pixel \(all False\)"):
    sampling.Edit(img, np.stack([keep, np.zeros((R, R), bool)]))
  with pytest.raises(ValueError, match=r"boolean or 0/1; it holds int64 values \[2\]"):
    sampling.Edit(img, keep.astype(np.int64) * 2)
  np.testing.assert_array_equal(sampling.Edit(img, keep.astype(np.uint8)).mask, keep)
  with pytest.raises(ValueError, match=r"Edit.image must be uint8 .* got float32"):
    sampling.Edit(img.astype(np.float32), keep)
  with pytest.raises(ValueError, match=r"Edit.resample=0 must be an integer >= 1"):
    sampling.Edit(img, keep, resample=0)
  with pytest.raises(ValueError, match=r"Edit.resample=2 needs a mask"):
    sampling.Edit(img, strength=0.5, resample=2)
  with pytest.raises(ValueError, match="needs a mask .* or a strength"):
    sampling.Edit(img)


def test_loaders(tmp_path):
  rgba = np.random.default_rng(0).integers(0, 256, (R, R, 4), dtype=np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "img.png")
  np.testing.assert_array_equal(edit_lib.load_image(tmp_path / "img.png", R), rgba[..., :3])
  grey = np.zeros((R, R), np.uint8)
  grey[:, : R // 2] = 255
  grey[0, 0] = 127  # below the threshold: generated
  Image.fromarray(grey).convert("RGB").save(tmp_path / "mask.png")
  want = _left_half()
  want[0, 0] = False
  np.testing.assert_array_equal(edit_lib.load_mask(tmp_path / "mask.png", R), want)
  with pytest.raises(
      ValueError, match=r"image '.*img.png' is 16x16, but the base stage samples 8x8"
  ):
    edit_lib.load_image(tmp_path / "img.png", 8)
  assert edit_lib.load_image(tmp_path / "img.png", 8, resize=True).shape == (8, 8, 3)
  assert edit_lib.load_mask(tmp_path / "mask.png", 8, resize=True).shape == (8, 8)
  with pytest.raises(FileNotFoundError, match=r"mask '.*nothere.png' does not exist"):
    edit_lib.load_mask(tmp_path / "nothere.png", R)
  (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(ValueError, match=r"image '.*bad.png' is not a readable image"):
    edit_lib.load_image(tmp_path / "bad.png", R)


@pytest.mark.slow  # three sampler compilations (strength 1, ordinary, the SR stage)
def test_strength_one_is_nearly_ordinary_sampling_and_sr_stages_follow(base, tmp_path):
  """SDEdit from s = 1 noises the image to t = 1, where it weighs alpha_1 ~ 5e-5: the result
  is ordinary sampling up to rounding (not bitwise). The SR stage upsamples the edited base."""
  sr = sampling.load_stage(cascade_test._make_workdir(tmp_path / "sr1", "stage=sr1,runlocal", 2))
  sr_fast = sampling.StageSettings(sampler="ddim", num_steps=2, aug_level=0.1)
  cascade = sampling.CascadeSampler([base, sr], [FAST, sr_fast], batch_size=4)
  images = _images(3, seed=2)
  plain = cascade.sample(PROMPTS, seed=1, progress=False)
  one = cascade.sample(PROMPTS, seed=1, progress=False, edit=sampling.Edit(images, strength=1.0))
  diff = _uint8_diff(one[0], plain[0])
  assert np.mean(diff == 0) > 0.95 and diff.max() <= 2, diff.max()
  assert one[1].shape == (3, 2 * R, 2 * R, 3)
  # The SR stage's input is the edited base: inpainting changes its output.
  inpainted = cascade.sample(
      PROMPTS, seed=1, progress=False, edit=sampling.Edit(images, _left_half())
  )
  assert _uint8_diff(inpainted[0], images)[:, _left_half()].max() <= 1
  assert _uint8_diff(inpainted[1], plain[1]).mean() > 1


@pytest.mark.slow  # a script run compiling an inpainting sampler
def test_sample_script_inpaints_and_records_the_edit(base, tmp_path):
  Image.fromarray(_images(1)[0]).save(tmp_path / "init.png")
  Image.fromarray(_left_half().astype(np.uint8) * 255).save(tmp_path / "mask.png")
  cmd = [
      sys.executable,
      str(ROOT / "scripts/sample.py"),
      f"--workdir_base={base.workdir}",
      "--prompt=a large red circle on the left",
      "--num_samples=2",
      "--num_steps=2",
      "--sampler=ddim",
      f"--init_image={tmp_path / 'init.png'}",
      f"--mask={tmp_path / 'mask.png'}",
      "--resample=2",
      f"--output_dir={tmp_path / 'out'}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "out" / "samples.json").read_text())
  assert record["edit"] == {
      "init_image": str(tmp_path / "init.png"),
      "mask": str(tmp_path / "mask.png"),
      "images": 1,
      "inpaint": True,
      "kept_fraction": 0.5,
      "strength": None,
      "resample": 2,
  }
  out = np.asarray(Image.open(tmp_path / "out" / "000_01.png"))
  assert _uint8_diff(out, _images(1)[0])[_left_half()].max() <= 1
  no_init = [c for c in cmd if not c.startswith("--init_image")]
  bad = subprocess.run(no_init, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert bad.returncode != 0
  assert "--mask and --strength edit an image: give --init_image too" in bad.stderr
