"""Shared fixtures: a tiny COCO-format dataset, a small random-weight Inception, pytorch-fid
state dicts of random weights, and stage workdirs of random params (no training)."""

import importlib.util
import json
import pathlib
import zlib

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import shapes
from imagen_jax.evaluation import inception

ROOT = pathlib.Path(__file__).resolve().parents[2]
_BN_KEYS = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def state_dict_from_params(params) -> dict:
  """The pytorch-fid state dict (key names, OIHW kernels) of Flax Inception params."""
  import jax  # pylint: disable=import-outside-toplevel

  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    *names, layer, leaf_name = [k.key for k in path]
    value = np.asarray(leaf, np.float32)
    if leaf_name == "kernel":
      out[".".join(names + [layer, "weight"])] = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    else:
      out[".".join(names + [layer, _BN_KEYS[leaf_name]])] = value
  return out


def write_stage_workdir(path, arg="stage=base,runlocal", seed=0, **config_overrides):
  """A configs/shapes.py stage workdir with one checkpoint of random params; dotted
  `config_overrides` (e.g. `{"input.dataset": "coco_json"}`) change the saved config."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax.core import meta  # pylint: disable=import-outside-toplevel
  from imagen_jax import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from imagen_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs" / "shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  saved = config.to_dict()
  for key, value in config_overrides.items():
    *parents, leaf = key.split(".")
    node = saved
    for name in parents:
      node = node[name]
    node[leaf] = value
  pipe = pipeline_lib.StagePipeline.from_config(config)
  params = meta.unbox(pipe.init(jax.random.PRNGKey(seed))["params"])
  state = state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  ckpt = ckpt_lib.Checkpointer(path, every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=saved, force=True)
  ckpt.close()
  return str(path)


def write_tiny_coco(root, num_images=64, captions_per_image=5, seed=0):
  """COCO 2014-style `captions_val2014.json` + `val2014/*.jpg` (shapes renders, odd sizes)."""
  rng = np.random.default_rng(seed)
  image_dir = root / "val2014"
  image_dir.mkdir(parents=True)
  images, annotations = [], []
  for i in range(num_images):
    scene = shapes.sample_scene(rng, "all", max_objects=2)
    img = shapes.render(scene, 72)
    if i % 2:  # non-square: exercises the centre crop
      img = np.concatenate([img, img[:, :16]], axis=1)
    image_id = 1000 + 7 * i
    name = f"COCO_val2014_{image_id:012d}.jpg"
    Image.fromarray(img).save(image_dir / name, quality=95)
    images.append(
        {"id": image_id, "file_name": name, "height": img.shape[0], "width": img.shape[1]}
    )
    for j in range(captions_per_image):
      annotations.append(
          {
              "id": len(annotations),
              "image_id": image_id,
              "caption": f"{shapes.caption(scene)} (variant {j})",
          }
      )
  ann = root / "captions_val2014.json"
  ann.write_text(json.dumps({"images": images, "annotations": annotations}))
  return str(ann), str(image_dir)


def fake_sample_fn(size=48):
  """Deterministic stand-in for a cascade: a shapes render chosen by the caption and seed."""
  calls = []

  def sample_fn(captions, rng_seed):
    calls.append((list(captions), rng_seed))
    out = [
        shapes.render(
            shapes.sample_scene(
                np.random.default_rng([zlib.crc32(c.encode()), rng_seed]), "all", max_objects=2
            ),
            size,
        )
        for c in captions
    ]
    return np.stack(out)

  sample_fn.calls = calls
  return sample_fn


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
  return write_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def small_extractor():
  return inception.FeatureExtractor.random(0, batch_size=8, image_size=inception.MIN_SIZE)


@pytest.fixture(scope="session")
def make_sample_fn():
  return fake_sample_fn


@pytest.fixture(scope="session")
def make_coco():
  return write_tiny_coco


@pytest.fixture(scope="session")
def make_stage_workdir():
  return write_stage_workdir


@pytest.fixture(scope="session")
def random_state_dict():
  """pytorch-fid state dict of `inception.init_params(0)` (the `small_extractor` weights)."""
  return state_dict_from_params(inception.init_params(0))
