"""describe_encoder: config, dim and fingerprint without reading the weights."""

import pytest

from imagen_jax import text
from imagen_jax.text import checkpoints


def test_fingerprint_without_weights_tracks_weights(hf_dirs, t5ref, tmp_path, monkeypatch):
  path, _ = hf_dirs["original"]
  loaded = text.load_text_encoder(path, max_length=20)
  other = t5ref.build_reference(t5ref.CONFIGS["original"], seed=123)
  other.save_pretrained(str(tmp_path))

  def no_reading(*a, **k):
    raise AssertionError("describe_encoder read the weights")

  monkeypatch.setattr(checkpoints, "read_params", no_reading)
  monkeypatch.setattr(checkpoints, "SafetensorsSource", no_reading)
  spec = text.describe_encoder(path, max_length=20)
  assert (spec.dim, spec.max_length, spec.kind) == (32, 20, "hf")
  assert spec.config == loaded.config and spec.fingerprint == loaded.fingerprint
  # Same architecture and file sizes, other weights: another fingerprint.
  assert text.describe_encoder(tmp_path, max_length=20).fingerprint != spec.fingerprint
  assert text.describe_encoder(path, max_length=21).fingerprint != spec.fingerprint
  with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
    text.describe_encoder(tmp_path / "missing")


def test_cache_resolves_identity_from_fingerprint_or_path(hf_dirs, t5ref, tmp_path):
  path, _ = hf_dirs["v1_1"]
  enc = text.load_text_encoder(path, max_length=16)
  cache = text.EmbeddingCache.for_encoder(tmp_path, enc)
  cache.put(["a"], *enc.encode_ids(*t5ref.padded_batch(99, [3], 16)))  # no tokenizer here
  spec = text.describe_encoder(path, max_length=16)
  assert text.EmbeddingCache.resolve(tmp_path, fingerprint=spec.fingerprint)["identity"] == (
      enc.identity
  )
  by_path = text.EmbeddingCache.resolve(
      tmp_path, fingerprint="fp-gone", encoder=str(path), max_length=16
  )
  assert by_path["identity"] == enc.identity
  assert text.EmbeddingCache.resolve(tmp_path, encoder=str(path), max_length=17) is None
