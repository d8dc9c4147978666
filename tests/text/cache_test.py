"""EmbeddingCache: round trip, true-length bf16 storage, invalidation."""
import ml_dtypes
import numpy as np
import pytest

from imagen_jax import text

CAPTIONS = ["a red circle", "", "two blue squares on the left",
            "a red circle", "x" * 100]


@pytest.fixture(scope="module")
def encoder():
  return text.load_text_encoder("byt5-tiny-random")


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_round_trip_equals_fresh_embeddings(encoder, tmp_path, storage):
  cache = text.EmbeddingCache.for_encoder(tmp_path, encoder,
                                          storage_dtype=storage)
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
  shards = list((tmp_path / encoder.identity).glob("shard-*.npy"))
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
  (tmp_path / encoder.identity / "shard-dead.npy").write_bytes(b"partial")
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
