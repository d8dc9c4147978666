"""The COCO FID harness on a tiny COCO-format dataset with a random-weight Inception."""

import json
import os

import numpy as np
import pytest

from imagen_jax.evaluation import coco_fid

RES = 64


def _harness(tiny_coco, extractor, out_dir, num=24, seed=3, shard=5, **kw):
  source = coco_fid.open_source(*tiny_coco)
  protocol = coco_fid.Protocol(
      num_samples=num, seed=seed, resolution=RES, shard_size=shard, read_threads=2
  )
  return coco_fid.CocoFid(source, extractor, str(out_dir), protocol, **kw)


def test_draw_is_seeded_recorded_and_without_replacement(tiny_coco, small_extractor, tmp_path):
  a = _harness(tiny_coco, small_extractor, tmp_path / "a").draw()
  b = _harness(tiny_coco, small_extractor, tmp_path / "b").draw()
  c = _harness(tiny_coco, small_extractor, tmp_path / "c", seed=4).draw()
  assert a["indices"] == b["indices"] and a["captions"] == b["captions"]
  assert a["indices"] != c["indices"]
  assert len(set(a["indices"])) == 24 and a["seed"] == 3
  assert all(" (variant " in cap for cap in a["captions"])
  saved = json.loads((tmp_path / "a" / "captions.json").read_text())
  assert saved["reference_pixels_sha256"] == a["reference_pixels_sha256"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_coco, small_extractor, make_sample_fn, tmp_path_factory):
  """FID of the fake sampler in one uninterrupted single-process run."""
  return _harness(tiny_coco, small_extractor, tmp_path_factory.mktemp("full")).evaluate(
      make_sample_fn(), "w1"
  )


def test_resume_after_interruption_reuses_finished_shards(
    tiny_coco, small_extractor, make_sample_fn, uninterrupted, tmp_path
):
  want = uninterrupted

  class Killed(Exception):
    pass

  flaky = make_sample_fn()

  def dies_on_third_shard(captions, rng_seed):
    if len(flaky.calls) == 2:
      raise Killed()
    return flaky(captions, rng_seed)

  out = tmp_path / "resumed"
  with pytest.raises(Killed):
    _harness(tiny_coco, small_extractor, out).evaluate(dies_on_third_shard, "w1")
  done = sorted(os.listdir(out / "w1" / "shards"))
  assert done == ["shard-00000.npz", "shard-00001.npz"]
  mtimes = [os.path.getmtime(out / "w1" / "shards" / f) for f in done]
  again = make_sample_fn()
  got = _harness(tiny_coco, small_extractor, out).evaluate(again, "w1")
  assert len(again.calls) == 3  # shards 2, 3, 4 only (24 captions / 5 per shard)
  assert [os.path.getmtime(out / "w1" / "shards" / f) for f in done] == mtimes
  assert got["counts"]["shards_reused"] == 2 and got["counts"]["shards_generated_now"] == 3
  assert got["fid"] == pytest.approx(want["fid"], rel=1e-6)
  assert got["counts"]["samples"] == got["counts"]["reference"] == 24
  on_disk = json.loads((out / "w1" / "result.json").read_text())
  assert on_disk["fid"] == got["fid"] and on_disk["seed"] == 3
  assert on_disk["hashes"]["captions_sha256"] and not on_disk["comparable_to_published_fid"]


def test_reference_statistics_are_cached_by_content(
    tiny_coco, small_extractor, make_sample_fn, tmp_path
):
  cache = tmp_path / "cache"
  h1 = _harness(tiny_coco, small_extractor, tmp_path / "r1", cache_dir=str(cache))
  _, _, path = h1.reference()
  mtime = os.path.getmtime(path)
  h2 = _harness(tiny_coco, small_extractor, tmp_path / "r2", cache_dir=str(cache))
  assert h2.reference()[2] == path and os.path.getmtime(path) == mtime
  h3 = _harness(tiny_coco, small_extractor, tmp_path / "r3", seed=9, cache_dir=str(cache))
  assert h3.reference()[2] != path  # other images drawn: another key


def test_oracle_samples_give_zero_fid(tiny_coco, small_extractor, tmp_path):
  h = _harness(tiny_coco, small_extractor, tmp_path / "o", num=16, shard=8)
  d = h.draw()
  source = coco_fid.open_source(*tiny_coco)
  by_caption = {
      c: coco_fid.read_record(source, i, 3, RES)[0] for i, c in zip(d["indices"], d["captions"])
  }
  res = h.evaluate(lambda caps, seed: np.stack([by_caption[c] for c in caps]), "oracle")
  assert res["fid"] < 1e-6


def test_two_processes_split_the_shards(
    tiny_coco, small_extractor, make_sample_fn, uninterrupted, tmp_path
):
  single = uninterrupted
  out = tmp_path / "two"
  p1 = _harness(
      tiny_coco, small_extractor, out, process_index=1, process_count=2, barrier=lambda name: None
  )
  _harness(tiny_coco, small_extractor, out).draw()  # process 0 makes the draw
  fn1 = make_sample_fn()
  assert p1.evaluate(fn1, "r") is None and len(fn1.calls) == 2  # shards 1, 3
  p0 = _harness(
      tiny_coco, small_extractor, out, process_index=0, process_count=2, barrier=lambda name: None
  )
  fn0 = make_sample_fn()
  res = p0.evaluate(fn0, "r")
  assert len(fn0.calls) == 3  # shards 0, 2, 4
  assert res["fid"] == pytest.approx(single["fid"], rel=1e-6)


def test_bad_inputs(tiny_coco, small_extractor, make_sample_fn, tmp_path):
  with pytest.raises(ValueError, match="without replacement.*num_samples <= 64"):
    _harness(tiny_coco, small_extractor, tmp_path / "big", num=65).draw()
  with pytest.raises(FileNotFoundError, match="reference image directory.*val2014"):
    coco_fid.open_source(tiny_coco[0], str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="captions_val2014.json"):
    coco_fid.open_source(str(tmp_path / "nope.json"), tiny_coco[1])
  h = _harness(tiny_coco, small_extractor, tmp_path / "dtype", num=8, shard=8)
  floats = lambda caps, seed: make_sample_fn()(caps, seed).astype(np.float32) / 255.0
  with pytest.raises(TypeError, match="uint8"):
    h.evaluate(floats, "f")
  with pytest.raises(ValueError, match="different settings"):
    _harness(tiny_coco, small_extractor, tmp_path / "dtype", num=9, shard=8).draw()


def test_corrupt_reference_image_is_an_error_not_a_skip(make_coco, small_extractor, tmp_path):
  ann, image_dir = make_coco(tmp_path / "c", num_images=4, captions_per_image=1)
  victim = sorted(os.listdir(image_dir))[0]
  with open(os.path.join(image_dir, victim), "wb") as f:
    f.write(b"not a jpeg")
  source = coco_fid.open_source(ann, image_dir)
  h = coco_fid.CocoFid(
      source,
      small_extractor,
      str(tmp_path / "o"),
      coco_fid.Protocol(num_samples=4, resolution=RES, read_threads=1),
  )
  with pytest.raises(ValueError, match="unreadable"):
    h.draw()


@pytest.mark.parametrize(
    "inp, why",
    [
        ({"dataset": "tfds:coco_captions"}, "input.dataset='tfds:coco_captions'"),
        ({"dataset": "coco_json", "annotations": "/d/a.json"}, "input.dataset='coco_json'"),
        ({"dataset": "folder", "path": "/data/COCO/train2014"}, "input.path="),
        (
            {"dataset": "tfds:other", "annotations": "gs://b/coco/captions_train2014.json"},
            "input.annotations=",
        ),
        ({"dataset": "shapes"}, None),
        ({"dataset": "folder", "path": "/data/laion"}, None),
        ({}, None),
    ],
)
def test_coco_training_from_the_saved_config(inp, why):
  import ml_collections  # pylint: disable=import-outside-toplevel

  for config in ({"input": inp}, ml_collections.ConfigDict({"input": inp})):
    got = coco_fid.coco_training(config)
    assert got == why if why is None else got.startswith(why), got
  assert coco_fid.coco_training({}) is None
