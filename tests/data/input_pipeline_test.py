"""Tests for the input iterator: sharding, resume, batch contract, dropout."""

import json

import numpy as np
import pytest

from imagen_jax.data import input_pipeline
from imagen_jax.data import preprocess


class _ListSource:
  """n records; record i is a 4x4 image filled with i (bad if i in `bad`)."""

  def __init__(self, n, bad=()):
    self.num_records, self.bad, self.name = n, set(bad), f"list{n}"

  def read(self, index, rng):
    if index in self.bad:
      raise preprocess.BadExampleError(f"record {index}")
    return (np.full((4, 4, 3), index % 256, np.uint8), f"r{index} {rng.integers(9)}")


def _iterator(source, batch, *, p=0, count=1, workers=2, seed=3, **kw):
  return input_pipeline.InputIterator(
      source,
      preprocess.StagePreprocess(resolution=4),
      batch_size=batch,
      seed=seed,
      process_index=p,
      process_count=count,
      num_workers=workers,
      **kw,
  )


def _ids(batch):
  return [int(x) for x in batch["image"][:, 0, 0, 0]]


def test_shapes_batches_for_base_and_sr_stages():
  it = input_pipeline.create_input_iterator(
      {"dataset": "shapes", "cond_drop_prob": 0.5},
      global_batch_size=8,
      resolution=32,
      lowres_resolution=8,
      seed=0,
      process_index=0,
      process_count=1,
      devices_per_process=4,
  )
  batch = next(it)
  assert batch["image"].shape == (8, 32, 32, 3)
  assert batch["image"].dtype == np.uint8
  assert batch["lowres"].shape == (8, 8, 8, 3)
  pooled = batch["image"].astype(np.float32).reshape(8, 8, 4, 8, 4, 3).mean((2, 4))
  assert np.abs(pooled - batch["lowres"]).max() <= 1.0
  assert batch["caption"].dtype == object
  assert batch["drop_text"].dtype == bool
  it.close()
  base = input_pipeline.create_input_iterator(
      {"dataset": "shapes", "split": "heldout", "max_objects": 1},
      global_batch_size=2,
      resolution=16,
      seed=0,
      process_index=0,
      process_count=1,
      devices_per_process=1,
  )
  assert set(next(base)) == {"image", "caption", "drop_text"}
  base.close()


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_hosts_are_disjoint_and_union_the_one_host_stream(shuffle):
  source = _ListSource(12)
  one = _iterator(source, 4, shuffle=shuffle)
  hosts = [_iterator(source, 2, p=p, count=2, shuffle=shuffle) for p in range(2)]
  for epoch in range(3):
    seen = [[], []]
    for _ in range(3):  # 3 steps of 4 = one epoch
      full = _ids(next(one))
      parts = [_ids(next(h)) for h in hosts]
      assert parts[0] + parts[1] == full  # process-major = the one-host batch, row for row
      seen[0] += parts[0]
      seen[1] += parts[1]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12)), epoch


def test_two_hosts_shapes_disjoint():
  kw = dict(global_batch_size=4, resolution=16, seed=1, devices_per_process=1)
  one = input_pipeline.create_input_iterator({}, process_index=0, process_count=1, **kw)
  hosts = [
      input_pipeline.create_input_iterator({}, process_index=p, process_count=2, **kw)
      for p in range(2)
  ]
  for _ in range(3):
    full = next(one)
    parts = [next(h) for h in hosts]
    key = lambda b: {im.tobytes() for im in b["image"]}
    assert not key(parts[0]) & key(parts[1])
    assert key(parts[0]) | key(parts[1]) == key(full)
    assert sorted(list(parts[0]["caption"]) + list(parts[1]["caption"])) == (
        sorted(full["caption"])
    )
  for it in [one] + hosts:
    it.close()


@pytest.mark.parametrize("workers", [0, 3])
def test_resume_gives_identical_batches(workers):
  source = _ListSource(7, bad={2, 5})
  straight = _iterator(source, 3, workers=workers)
  expected = [next(straight) for _ in range(8)]
  first = _iterator(source, 3, workers=workers)
  for _ in range(3):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  resumed = _iterator(source, 3, workers=workers)
  resumed.set_state(state)
  for want in expected[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    assert list(got["caption"]) == list(want["caption"])
    np.testing.assert_array_equal(got["drop_text"], want["drop_text"])
  assert resumed.num_skipped == straight.num_skipped > 0


def test_resume_shapes_through_factory():
  kw = dict(
      global_batch_size=4,
      resolution=16,
      lowres_resolution=8,
      seed=5,
      process_index=1,
      process_count=2,
      devices_per_process=2,
  )
  straight = input_pipeline.create_input_iterator({"dataset": "shapes"}, **kw)
  expected = [next(straight) for _ in range(5)]
  first = input_pipeline.create_input_iterator({"dataset": "shapes"}, **kw)
  next(first)
  next(first)
  resumed = input_pipeline.create_input_iterator({"dataset": "shapes"}, **kw)
  resumed.set_state(first.get_state())
  for want in expected[2:]:
    got = next(resumed)
    for key in ("image", "lowres", "drop_text"):
      np.testing.assert_array_equal(got[key], want[key])
    assert list(got["caption"]) == list(want["caption"])
  other = input_pipeline.create_input_iterator({"dataset": "shapes"}, **{**kw, "process_index": 0})
  with pytest.raises(ValueError, match="different pipeline"):
    other.set_state(first.get_state())
  for it in (straight, first, resumed, other):
    it.close()


def test_batch_must_divide_over_processes_and_devices():
  kw = dict(resolution=8, seed=0)
  with pytest.raises(ValueError, match="2 processes"):
    input_pipeline.create_input_iterator(
        {}, global_batch_size=5, process_index=0, process_count=2, devices_per_process=1, **kw
    )
  with pytest.raises(ValueError, match="4 devices"):
    input_pipeline.create_input_iterator(
        {}, global_batch_size=12, process_index=0, process_count=2, devices_per_process=4, **kw
    )
  it = input_pipeline.create_input_iterator(
      {}, global_batch_size=16, process_index=1, process_count=2, devices_per_process=4, **kw
  )
  assert next(it)["image"].shape[0] == 8
  it.close()


def test_caption_dropout_is_deterministic_per_example():
  source = _ListSource(1000)
  a = _iterator(source, 500, workers=0, shuffle=False)
  drops = np.concatenate([next(a)["drop_text"] for _ in range(4)])
  assert 0.08 < drops.mean() < 0.12
  # Same seed: same decisions, whatever the process split.
  hosts = [_iterator(source, 250, p=p, count=2, workers=0, shuffle=False) for p in range(2)]
  h = [next(it)["drop_text"] for it in hosts]
  np.testing.assert_array_equal(np.concatenate(h), drops[:500])
  none = _iterator(source, 100, workers=0, cond_drop_prob=0.0)
  assert not next(none)["drop_text"].any()


def test_text_cache_embeddings():
  class Cache:

    def get_many(self, captions):
      n = len(captions)
      return np.ones((n, 5, 3), np.float32), np.ones((n, 5), bool)

  it = _iterator(_ListSource(6), 3, text_cache=Cache())
  batch = next(it)
  assert batch["text_emb"].shape == (3, 5, 3)
  assert batch["text_mask"].shape == (3, 5) and batch["text_mask"].dtype == bool


def test_num_epochs_ends_iteration():
  batches = list(_iterator(_ListSource(7), 2, num_epochs=2))
  assert len(batches) == 7  # 14 examples, no partial batch
  assert sorted(i for b in batches for i in _ids(b)) == sorted(list(range(7)) * 2)


@pytest.mark.parametrize("old_count, new_count", [(2, 1), (1, 4), (4, 2)])
def test_resharded_state_continues_the_same_stream(old_count, new_count):
  source, global_batch = _ListSource(40), 8
  one = _iterator(source, global_batch, workers=0)
  expected = [_ids(next(one)) for _ in range(5)]
  old = [
      _iterator(source, global_batch // old_count, p=p, count=old_count, workers=0)
      for p in range(old_count)
  ]
  for _ in range(2):  # two steps on the old layout
    assert sum((_ids(next(it)) for it in old), []) == expected.pop(0)
  states = [it.get_state() for it in old]
  new = [
      _iterator(source, global_batch // new_count, p=p, count=new_count, workers=0)
      for p in range(new_count)
  ]
  for it in new:
    it.set_state(it.reshard_state(states))
  for step in range(3):
    assert sum((_ids(next(it)) for it in new), []) == expected[step], step
