"""Built-in text encoders that need no download (the embedded default).

``"byt5-tiny-random"``: a 2-layer T5 v1.1-style encoder (d_model 64, 4 heads,
gated-GELU FFN of width 128) with ByT5's byte tokenizer and max_length 64.
Its weights are drawn from a fixed seed with numpy's legacy ``RandomState``
(whose stream numpy guarantees across versions and platforms) as uniform
variates scaled to T5's initialisation variances, so they are bit-identical on
every machine. It is UNTRAINED: its embeddings are a fixed random function of
the caption's bytes, meant for a model to learn text alignment on a small
synthetic world; it knows nothing about language.
"""

import dataclasses
import math
from typing import Callable

import numpy as np

from imagen_jax.text import t5


@dataclasses.dataclass(frozen=True)
class BuiltinSpec:
  config: t5.T5Config
  seed: int
  max_length: int
  tokenizer: str  # "byte"


BUILTINS = {
    "byt5-tiny-random": BuiltinSpec(
        config=t5.T5Config(
            vocab_size=384,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            layer_norm_epsilon=1e-6,
            feed_forward_proj="gated-gelu",
        ),
        seed=20240601,
        max_length=64,
        tokenizer="byte",
    )
}


def _init_std(config: t5.T5Config, name: str) -> float | None:
  """T5's initialisation std of a param (transformers' _init_weights); None = ones."""
  d, dkv, h, ff = config.d_model, config.d_kv, config.num_heads, config.d_ff
  # 1/sqrt(n): IEEE sqrt and division are correctly rounded everywhere (pow
  # need not be), so the weights are bit-identical across libms.
  if name.endswith("/scale"):
    return None
  if name == "token_embedder/embedding":
    return 1.0
  if name.endswith("rel_embedding"):
    return 1.0 / math.sqrt(d)
  if "/attention/query/" in name:
    return 1.0 / math.sqrt(d * dkv)
  if "/attention/key/" in name or "/attention/value/" in name:
    return 1.0 / math.sqrt(d)
  if "/attention/out/" in name:
    return 1.0 / math.sqrt(h * dkv)
  if "/mlp/wo/" in name:
    return 1.0 / math.sqrt(ff)
  if "/mlp/wi" in name:
    return 1.0 / math.sqrt(d)
  raise KeyError(name)


def random_params(
    config: t5.T5Config, seed: int, place: Callable[[str, np.ndarray], object]
) -> dict:
  """Deterministic T5-scaled params, generated in canonical name order.

  Uniform on [-sqrt(3), sqrt(3)] * std (variance std^2): uniform doubles from
  ``RandomState`` are exact, and one float64 multiply plus a float32 cast is
  the same on every IEEE machine (unlike normal variates, which go through
  libm's log).
  """
  rng = np.random.RandomState(seed)
  flat = {}
  for name, shape in config.param_shapes().items():
    std = _init_std(config, name)
    if std is None:
      arr = np.ones(shape, np.float32)
    else:
      u = rng.uniform(-1.0, 1.0, size=shape)
      arr = (u * (math.sqrt(3.0) * std)).astype(np.float32)
    flat[name] = place(name, arr)
  return flat


def get(name: str) -> BuiltinSpec | None:
  return BUILTINS.get(name)
