"""EmbeddingCache: round trip, true-length bf16 storage, invalidation."""

import ml_dtypes
import numpy as np
import pytest

from imagen_jax import text

CAPTIONS = ["a red circle", "", "two blue squares on the left", "a red circle", "x" * 100]


@pytest.fixture(scope="module")
def encoder():
  return text.load_text_encoder("byt5-tiny-random")


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_round_trip_equals_fresh_embeddings(encoder, tmp_path, storage):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder, storage_dtype=storage)
  todo = cache.missing(CAPTIONS)
  assert todo == ["a red circle", "", "two blue squares on the left", "x" * 100]
  emb, mask = encoder.encode(todo)
  assert cache.put(todo, emb, mask) == 4
  assert cache.missing(CAPTIONS) == [] and len(cache) == 4

  # A new instance (another process) sees the same entries.
  reopened = text.EmbeddingCache(tmp_path, encoder.identity)
  assert reopened.max_length == encoder.max_length and reopened.dim == 64
  got_emb, got_mask = reopened.get_many(CAPTIONS)
  fresh_emb, fresh_mask = (np.asarray(a) for a in encoder.encode(CAPTIONS))
  assert got_emb.shape == (5, 64, 64) and got_emb.dtype == np.float32
  np.testing.assert_array_equal(got_mask, fresh_mask)
  if storage == "float32":
    np.testing.assert_array_equal(got_emb, fresh_emb)
  else:
    rounded = fresh_emb.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(got_emb, rounded)
    np.testing.assert_allclose(got_emb, fresh_emb, rtol=1e-2, atol=1e-2)


def test_stored_at_true_length_in_bf16(encoder, tmp_path):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder)
  emb, mask = encoder.encode(["abc", ""])
  cache.put(["abc", ""], emb, mask)
  shards = list((tmp_path / encoder.identity / "data").glob("*.npy"))
  assert len(shards) == 1
  data = np.load(shards[0])
  assert data.dtype == np.uint16 and data.shape == (4 + 1, 64)  # abc</s> + </s>


def test_changed_encoder_invalidates(encoder, tmp_path):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder)
  cache.put(CAPTIONS[:2], *encoder.encode(CAPTIONS[:2]))
  other = text.load_text_encoder("byt5-tiny-random", max_length=32)
  assert other.identity != encoder.identity
  other_cache = text.EmbeddingCache.for_encoder(tmp_path, other)
  assert other_cache.missing(CAPTIONS[:2]) == CAPTIONS[:2]
  with pytest.raises(KeyError, match="2 of 2 captions not cached"):
    other_cache.get_many(CAPTIONS[:2])


def test_rerun_skips_existing_and_ignores_partial_shards(encoder, tmp_path):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder)
  cache.put(["a"], *encoder.encode(["a"]))
  assert cache.put(["a"], *encoder.encode(["a"])) == 0
  # An interrupted write leaves data without an index: ignored.
  (tmp_path / encoder.identity / "data" / "dead.npy").write_bytes(b"partial")
  cache.refresh()
  assert len(cache) == 1


def test_put_rejects_bad_shapes(encoder, tmp_path):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder)
  emb, mask = encoder.encode(["a", "b"])
  with pytest.raises(ValueError, match="expected 1 captions"):
    cache.put(["a"], emb, mask)
  bad_mask = np.asarray(mask).copy()
  bad_mask[0, 5] = True
  with pytest.raises(ValueError, match="prefix"):
    cache.put(["a", "b"], emb, bad_mask)


def _fill(cache, encoder, captions, per_put):
  """Puts captions in runs of `per_put`; returns {caption: (emb row, mask row)} as put."""
  stored = {}
  for i in range(0, len(captions), per_put):
    chunk = captions[i : i + per_put]
    emb, mask = (np.asarray(a) for a in encoder.encode(chunk))
    cache.put(chunk, emb, mask)
    stored.update({c: (emb[j], mask[j]) for j, c in enumerate(chunk)})
  return stored


def test_compacted_lookup_is_bucketed_arrays_loaded_lazily(encoder, tmp_path):
  captions = [f"caption number {i}" for i in range(300)]
  cache = text.EmbeddingCache.for_encoder(
      tmp_path, encoder, storage_dtype="float32", num_buckets=16
  )
  stored = _fill(cache, encoder, captions, 64)
  assert cache.compact() == 300
  reader = text.EmbeddingCache(tmp_path, encoder.identity)
  stats = reader.stats()
  assert stats["generation_runs"] == 5 and stats["overflow_keys"] == 0
  assert stats["buckets_loaded"] == 0 and stats["num_buckets"] == 16
  # No per-caption Python container anywhere in the reader.
  for name, value in vars(reader).items():
    if isinstance(value, (dict, list, set)):
      assert len(value) < 50, (name, len(value))
  picked = [captions[7], captions[123]]
  emb, mask = reader.get_many(picked)
  assert 1 <= reader.stats()["buckets_loaded"] <= 2
  loaded = reader._bucket_index  # pylint: disable=protected-access
  assert all(isinstance(ix.keys, np.memmap) for ix in loaded.values())
  np.testing.assert_array_equal(mask, [stored[c][1] for c in picked])
  np.testing.assert_array_equal(emb, [stored[c][0] for c in picked])  # float32: exact
  fresh_emb = np.asarray(encoder.encode(picked)[0])  # another batch: XLA rounding only
  np.testing.assert_allclose(emb, fresh_emb, atol=1e-5, rtol=0)
  assert reader.missing(captions + ["not cached"]) == ["not cached"]
  assert len(reader) == 300


def test_runs_after_compaction_are_an_overflow_then_merged(encoder, tmp_path):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder, num_buckets=8)
  _fill(cache, encoder, ["a", "b", "c"], 2)
  cache.compact()
  _fill(cache, encoder, ["c", "d", "e"], 3)  # "c" is already there: skipped
  reader = text.EmbeddingCache(tmp_path, encoder.identity)
  assert reader.stats()["overflow_keys"] == 2 and len(reader) == 5
  assert reader.compact() == 5
  again = text.EmbeddingCache(tmp_path, encoder.identity)
  assert again.stats()["overflow_keys"] == 0 and again.stats()["generation_runs"] == 3
  assert again.missing(["a", "b", "c", "d", "e", "f"]) == ["f"]


def test_old_layout_is_a_clear_error(encoder, tmp_path):
  old = tmp_path / encoder.identity
  old.mkdir()
  (old / "meta.json").write_text(
      '{"format": "imagen_jax.text.EmbeddingCache/v1", '
      f'"identity": "{encoder.identity}", "dim": 64, '
      '"max_length": 64, "storage_dtype": "bfloat16"}'
  )
  with pytest.raises(
      text.CacheError, match=r"layout 'imagen_jax.text.EmbeddingCache/v1'.*new " "cache_dir"
  ):
    text.EmbeddingCache(tmp_path, encoder.identity)
  assert text.EmbeddingCache.old_format_dirs(tmp_path) == [str(old)]


_WRITER = r"""
import sys
from imagen_jax import text
cache_dir, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
enc = text.load_text_encoder("byt5-tiny-random")
cache = text.EmbeddingCache.for_encoder(cache_dir, enc, storage_dtype="float32")
caps = [f"scene {i}: a red circle" for i in range(start, stop)]
for i in range(0, len(caps), 16):
  cache.put(caps[i:i + 16], *enc.encode(caps[i:i + 16]))
print("wrote", len(caps))
"""


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_two_concurrent_writers_then_read_back(encoder, tmp_path, where, request):
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  root = (
      str(tmp_path / "cache")
      if where == "local"
      else (request.getfixturevalue("gcs_bucket") + "/t5cache")
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  # Overlapping ranges: both write captions 40..59.
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", _WRITER, root, str(a), str(b)],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for a, b in ((0, 60), (40, 100))
  ]
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  captions = [f"scene {i}: a red circle" for i in range(100)]
  reader = text.EmbeddingCache(root, encoder.identity, local_dir=tmp_path / "local")
  stats = reader.stats()  # runs: 4 per writer, fewer when one saw the other's captions
  assert 6 <= stats["overflow_runs"] <= 8 and stats["overflow_keys"] == 100
  assert reader.missing(captions) == []
  assert reader.compact() == 100
  reader = text.EmbeddingCache(root, encoder.identity, local_dir=tmp_path / "local")
  assert reader.stats()["overflow_keys"] == 0
  emb, mask = reader.get_many(captions[::-1])
  fresh_emb, fresh_mask = (np.asarray(a) for a in encoder.encode(captions[::-1]))
  np.testing.assert_array_equal(mask, fresh_mask)
  # float32 storage; the writers' batches differ from this one: XLA rounding only.
  np.testing.assert_allclose(emb, fresh_emb, atol=1e-5, rtol=0)
