"""Frozen T5 text encoders: Flax module, checkpoint import, tokenizers, cache.

Public API (see docs/interfaces.md):
  load_text_encoder(path_or_name, **options) -> TextEncoder
  TextEncoder.encode(texts) -> (emb float32 [B, L, D], mask bool [B, L])
  TextEncoder.encode_ids(ids, mask), .tokenize(texts), .max_length, .dim,
  .identity, .module, .params, .encode_fn(params, ids, mask)
  describe_encoder(path_or_name, **options) -> EncoderSpec (config, dim, max_length,
    fingerprint; no weights read)
  EmbeddingCache(dir, encoder_identity): put, get_many, missing, compact;
    EmbeddingCache.resolve(dir, fingerprint=...) -> the identity record

Importing this package loads no weights and imports none of torch,
transformers, tensorstore or sentencepiece; those load inside the functions
that need them. Nothing here imports the rest of imagen_jax but imagen_jax.storage.
"""

from imagen_jax.text.cache import CacheError
from imagen_jax.text.cache import EmbeddingCache
from imagen_jax.text.checkpoints import CheckpointError
from imagen_jax.text.encoder import describe_encoder
from imagen_jax.text.encoder import EncoderSpec
from imagen_jax.text.encoder import load_text_encoder
from imagen_jax.text.encoder import TextEncoder
from imagen_jax.text.t5 import make_encode_fn
from imagen_jax.text.t5 import T5Config
from imagen_jax.text.t5 import T5Encoder

BUILTIN_ENCODERS = ("byt5-tiny-random",)
