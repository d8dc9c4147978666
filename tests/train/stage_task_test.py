"""The real stage (shapes world, tiny base U-Net, built-in text encoder) through the trainer."""

import struct

import jax
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from imagen_jax import config_lib
from imagen_jax.train import loop


def _losses(workdir):
  out = []
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      out += [v.simple_value for v in event.summary.value if v.tag == "loss"]
  return out


def _config(**kw):
  c = config_lib.stage_defaults()
  c.model.name, c.model.variant = "shapes_base32", "tiny"
  c.input.resolution = 32
  c.batch_size, c.total_steps, c.log_every_steps = 8, 30, 5
  c.checkpoint.every_steps = 100
  c.optim.lr = 1e-3
  c.update_from_flattened_dict(kw)
  return c


def test_stage_resolution_mismatch_fails_before_compiling(tmp_path):
  with pytest.raises(
      ValueError, match=r"config.input.resolution=64 but model shapes_base32/tiny has resolution 32"
  ):
    loop.train_and_evaluate(_config(**{"input.resolution": 64}), str(tmp_path))


@pytest.mark.slow
def test_short_shapes_run_loss_falls(tmp_path):
  state = loop.train_and_evaluate(_config(), str(tmp_path))
  assert int(jax.device_get(state.step)) == 30
  losses = _losses(tmp_path)
  assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses


def test_config_evals_run_during_training(tmp_path):
  """`config.evals.alignment` samples held-out captions from the EMA params while training."""
  import json  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel

  c = _config(total_steps=2, log_every_steps=1)
  c.model.name, c.input.resolution = "shapes_base16", 16
  c.sampling.num_steps, c.sampling.guidance_scale = 2, 3.0
  c.evals = ml_collections.ConfigDict(
      {"alignment": dict(type="alignment", log_steps=2, num_samples=4, max_objects=1)}
  )
  # Trained on a folder of shapes renders with one corrupt image: the skipped record reaches
  # the final metrics.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from imagen_jax.data import shapes  # pylint: disable=import-outside-toplevel

  folder = tmp_path / "data"
  folder.mkdir()
  for i, scene in enumerate(shapes.sample_scene(np.random.default_rng(i)) for i in range(8)):
    Image.fromarray(shapes.render(scene, 16)).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(shapes.caption(scene))
  (folder / "8.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
  (folder / "8.txt").write_text("a corrupt image")
  c.input.dataset, c.input.path, c.input.shuffle = "folder", str(folder), False
  loop.train_and_evaluate(c, str(tmp_path / "run"))
  final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
  for key in ("alignment/accuracy", "alignment/chance", "alignment/colour"):
    assert 0.0 <= final[key] <= 1.0, (key, final)
  assert final["input/skipped_records"] == 1


def test_config_evals_on_an_sr_stage_fail_before_training(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel

  c = _config(total_steps=2)
  c.model.name, c.input.resolution, c.input.lowres_resolution = "shapes_sr32", 32, 16
  c.evals = ml_collections.ConfigDict(
      {"alignment": dict(type="alignment", log_steps=2, num_samples=4)}
  )
  with pytest.raises(ValueError, match="needs a stage that samples from captions alone"):
    loop.train_and_evaluate(c, str(tmp_path))
