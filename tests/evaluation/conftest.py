"""Shared fixtures: a tiny COCO-format dataset and a small random-weight Inception."""
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import shapes
from imagen_jax.evaluation import inception


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
    images.append({"id": image_id, "file_name": name, "height": img.shape[0],
                   "width": img.shape[1]})
    for j in range(captions_per_image):
      annotations.append({"id": len(annotations), "image_id": image_id,
                          "caption": f"{shapes.caption(scene)} (variant {j})"})
  ann = root / "captions_val2014.json"
  ann.write_text(json.dumps({"images": images, "annotations": annotations}))
  return str(ann), str(image_dir)


def fake_sample_fn(size=48):
  """Deterministic stand-in for a cascade: a shapes render chosen by the caption and seed."""
  calls = []

  def sample_fn(captions, rng_seed):
    calls.append((list(captions), rng_seed))
    out = [shapes.render(shapes.sample_scene(
        np.random.default_rng([zlib.crc32(c.encode()), rng_seed]), "all", max_objects=2), size)
           for c in captions]
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
