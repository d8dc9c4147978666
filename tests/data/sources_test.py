"""Tests for the TFDS, folder and COCO-json sources through the pipeline."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from imagen_jax.data import input_pipeline

_KW = dict(seed=0, process_index=0, process_count=1, devices_per_process=1)


def _save(path, mode="RGB", size=(12, 10), fmt=None):
  colour = {
      "RGB": (200, 20, 20),
      "L": 128,
      "RGBA": (0, 0, 255, 255),
      "CMYK": (0, 255, 255, 0),
      "P": 3,
  }[mode]
  Image.new(mode, size, colour).save(path, format=fmt)


def _folder(tmp_path, n=6, captions=True):
  root = tmp_path / "imgs"
  (root / "sub").mkdir(parents=True)
  modes = ["RGB", "L", "RGBA", "CMYK", "P", "RGB"]
  for i in range(n):
    ext = "jpg" if modes[i % 6] == "CMYK" else "png"
    d = root / "sub" if i % 2 else root
    _save(d / f"im{i}.{ext}", modes[i % 6])
    if captions:
      (d / f"im{i}.txt").write_text(f"caption {i}\n")
  return root


def _check_batch(batch, b, res, lowres=None):
  assert batch["image"].shape == (b, res, res, 3)
  assert batch["image"].dtype == np.uint8
  if lowres:
    assert batch["lowres"].shape == (b, lowres, lowres, 3)
    assert batch["lowres"].dtype == np.uint8
  assert batch["caption"].dtype == object and batch["caption"].shape == (b,)
  assert all(isinstance(c, str) and c for c in batch["caption"])
  assert batch["drop_text"].dtype == bool and batch["drop_text"].shape == (b,)


def test_folder_sidecar_captions(tmp_path):
  root = _folder(tmp_path)
  it = input_pipeline.create_input_iterator(
      {"dataset": "folder", "path": str(root), "num_epochs": 1},
      global_batch_size=3,
      resolution=8,
      lowres_resolution=4,
      **_KW,
  )
  batches = list(it)
  assert len(batches) == 2
  for b in batches:
    _check_batch(b, 3, 8, 4)
  captions = sorted(c for b in batches for c in b["caption"])
  assert captions == [f"caption {i}" for i in range(6)]
  assert it.num_skipped == 0


def test_folder_manifests(tmp_path):
  root = _folder(tmp_path, captions=False)
  names = sorted(str(p.relative_to(root)) for p in root.rglob("*.*"))
  jsonl = tmp_path / "m.jsonl"
  jsonl.write_text("".join(json.dumps({"file": n, "text": [f"c {n}"]}) + "\n" for n in names))
  csv_path = tmp_path / "m.csv"
  csv_path.write_text("image,caption\n" + "".join(f"{n},c {n}\n" for n in names))
  for cfg in (
      {"manifest": str(jsonl), "fields": {"image": "file", "caption": "text"}},
      {"manifest": str(csv_path)},
  ):
    it = input_pipeline.create_input_iterator(
        {"dataset": "folder", "path": str(root), **cfg}, global_batch_size=6, resolution=8, **_KW
    )
    batch = next(it)
    _check_batch(batch, 6, 8)
    assert sorted(batch["caption"]) == [f"c {n}" for n in names]


def test_folder_errors(tmp_path):
  root = _folder(tmp_path)
  os.remove(root / "sub" / "im1.txt")
  with pytest.raises(ValueError, match="im1.png"):
    input_pipeline.make_source({"dataset": "folder", "path": str(root)}, 8)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="empty"):
    input_pipeline.make_source({"dataset": "folder", "path": str(empty)}, 8)
  manifest = tmp_path / "m.jsonl"
  manifest.write_text(json.dumps({"image": "im0.png", "caption": ""}) + "\n")
  with pytest.raises(ValueError, match="im0.png"):
    input_pipeline.make_source(
        {"dataset": "folder", "path": str(root), "manifest": str(manifest)}, 8
    )
  with pytest.raises(ValueError, match="unknown input dataset"):
    input_pipeline.make_source({"dataset": "laion"}, 8)


def test_bad_images_are_skipped_counted_and_logged(tmp_path, caplog):
  root = _folder(tmp_path)
  (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  (root / "broken.txt").write_text("broken")
  good = (root / "im0.png").read_bytes()
  (root / "trunc.png").write_bytes(good[: len(good) // 2])
  (root / "trunc.txt").write_text("truncated")
  it = input_pipeline.create_input_iterator(
      {"dataset": "folder", "path": str(root), "num_epochs": 1},
      global_batch_size=2,
      resolution=8,
      **_KW,
  )
  with caplog.at_level(logging.WARNING):
    batches = list(it)
    it.close()
  assert len(batches) == 3  # 8 files, 2 bad
  assert it.num_skipped == 2 and it.get_state()["num_skipped"] == 2
  assert "broken" not in {c for b in batches for c in b["caption"]}
  lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(lines) == 1 and "skipped 2 bad" in lines[0], lines


def test_all_bad_is_an_error(tmp_path):
  root = tmp_path / "bad"
  root.mkdir()
  for i in range(3):
    (root / f"{i}.png").write_bytes(b"nope")
    (root / f"{i}.txt").write_text("x")
  it = input_pipeline.create_input_iterator(
      {"dataset": "folder", "path": str(root)}, global_batch_size=2, resolution=8, **_KW
  )
  with pytest.raises(ValueError, match="every example is bad"):
    next(it)


def test_coco_json(tmp_path):
  images = tmp_path / "train2014"
  images.mkdir()
  info = {"images": [], "annotations": []}
  for i in range(4):
    name = f"COCO_{i:012d}.jpg"
    _save(images / name, size=(20 + i, 16))
    info["images"].append({"id": 100 + i, "file_name": name})
    for j in range(3):
      info["annotations"].append(
          {"id": 10 * i + j, "image_id": 100 + i, "caption": f"img {i} cap {j}"}
      )
  ann = tmp_path / "captions_train2014.json"
  ann.write_text(json.dumps(info))
  it = input_pipeline.create_input_iterator(
      {"dataset": "coco_json", "path": str(images), "annotations": str(ann)},
      global_batch_size=4,
      resolution=16,
      lowres_resolution=8,
      **_KW,
  )
  seen = set()
  for _ in range(4):
    batch = next(it)
    _check_batch(batch, 4, 16, 8)
    assert sorted(c.split(" cap")[0] for c in batch["caption"]) == [f"img {i}" for i in range(4)]
    seen |= set(batch["caption"])
  assert len(seen) > 4  # a different caption is chosen across epochs
  info["annotations"] = info["annotations"][3:]
  ann.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="COCO_000000000000.jpg"):
    input_pipeline.make_source(
        {"dataset": "coco_json", "path": str(images), "annotations": str(ann)}, 8
    )


def test_tfds_coco_captions_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow")  # the coco_captions builder needs TF
  with tfds.testing.mock_data(num_examples=8):
    it = input_pipeline.create_input_iterator(
        {"dataset": "tfds:coco_captions", "split": "train"},
        global_batch_size=4,
        resolution=16,
        lowres_resolution=4,
        **_KW,
    )
    first = [next(it) for _ in range(4)]
    for batch in first:
      _check_batch(batch, 4, 16, 4)
    state = it.get_state()
    after = next(it)
    it2 = input_pipeline.create_input_iterator(
        {"dataset": "tfds:coco_captions", "split": "train"},
        global_batch_size=4,
        resolution=16,
        lowres_resolution=4,
        **_KW,
    )
    it2.set_state(state)
    resumed = next(it2)
  np.testing.assert_array_equal(after["image"], resumed["image"])
  assert list(after["caption"]) == list(resumed["caption"])


def test_a_mostly_bad_folder_is_not_every_example_bad(tmp_path):
  """5 bad records of 7, shuffled, epochs repeating: two epochs can put 7 bad ones in a row
  (the reliability probe's finding: 'every example is bad' after 6-28 good examples)."""
  root = tmp_path / "mostly_bad"
  root.mkdir()
  for i in range(2):
    _save(root / f"good{i}.png")
    (root / f"good{i}.txt").write_text(f"good {i}")
  for i in range(5):
    (root / f"bad{i}.png").write_bytes(b"nope")
    (root / f"bad{i}.txt").write_text("x")
  for seed in range(3):
    it = input_pipeline.create_input_iterator(
        {"dataset": "folder", "path": str(root)},
        global_batch_size=2,
        resolution=8,
        **{**_KW, "seed": seed},
    )
    captions = {c for _ in range(60) for c in next(it)["caption"]}
    it.close()
    assert captions == {"good 0", "good 1"}, seed
