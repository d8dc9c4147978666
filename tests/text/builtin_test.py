"""The built-in byt5-tiny-random encoder: deterministic, small, jit-once."""

import pathlib
import subprocess
import sys

import jax
import numpy as np

from imagen_jax import text
from imagen_jax.text import builtin

# Pinned: the weights (numpy RandomState, exact uniform doubles) and the hash
# must be the same on every machine and every run.
_REPO = pathlib.Path(__file__).resolve().parents[2]
IDENTITY = "t5-e02a91430c3da94559d9d2ea7e1c7f14"


def test_identity_is_pinned_and_outputs_are_stable():
  enc = text.load_text_encoder("byt5-tiny-random")
  assert enc.identity == IDENTITY
  assert (enc.dim, enc.max_length) == (64, 64)
  emb, mask = enc.encode(["a red circle", ""])
  assert emb.shape == (2, 64, 64) and emb.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(mask).sum(1), [13, 1])
  np.testing.assert_allclose(
      np.asarray(emb)[0, 0, :4], [-0.29680285, 0.39566866, -1.2775943, 0.06657004], atol=1e-5
  )
  assert np.all(np.isfinite(np.asarray(emb)))


def test_weights_are_bit_identical_across_processes():
  code = "from imagen_jax import text; print(text.load_text_encoder('byt5-tiny-random').identity)"
  out = subprocess.run(
      [sys.executable, "-c", code],
      check=True,
      capture_output=True,
      text=True,
      cwd=_REPO,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  assert out.stdout.split()[-1] == IDENTITY


def test_distinct_captions_give_distinct_embeddings():
  enc = text.load_text_encoder("byt5-tiny-random")
  caps = ["a red circle", "a blue circle", "a red square", "a red circle "]
  emb = np.asarray(enc.encode(caps)[0])
  for i in range(len(caps)):
    for j in range(i):
      assert np.abs(emb[i] - emb[j]).max() > 1e-2


def test_compiles_once_per_batch_bucket():
  enc = text.load_text_encoder("byt5-tiny-random")
  for b in (3, 4, 1, 2):  # All pad to buckets 4, 4, 1, 2.
    enc.encode(["x"] * b)
  assert enc._jitted._cache_size() == 3  # pylint: disable=protected-access


def test_max_length_override_and_truncation_count():
  enc = text.load_text_encoder("byt5-tiny-random", max_length=8)
  ids, mask = enc.tokenize(["abcdefghijk", "ab"])
  assert ids.shape == (2, 8) and ids.dtype == np.int32 and mask.dtype == bool
  assert enc.num_truncated == 1
  assert enc.identity != IDENTITY


def test_builtin_params_have_t5_scales():
  spec = builtin.BUILTINS["byt5-tiny-random"]
  flat = builtin.random_params(spec.config, spec.seed, lambda n, a: a)
  emb = flat["token_embedder/embedding"]
  assert emb.dtype == np.float32
  np.testing.assert_allclose(emb.std(), 1.0, rtol=0.05)
  wo = flat["encoder/layers_0/mlp/wo/kernel"]
  np.testing.assert_allclose(wo.std(), spec.config.d_ff**-0.5, rtol=0.05)
  assert np.all(flat["encoder/encoder_norm/scale"] == 1.0)


def test_import_is_light():
  code = (
      "import sys, imagen_jax.text; "
      "print([m for m in ('torch', 'transformers', 'tensorstore', "
      "'sentencepiece', 'tokenizers', 'safetensors') if m in sys.modules])"
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      check=True,
      capture_output=True,
      text=True,
      cwd=_REPO,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  assert out.stdout.strip() == "[]"


def test_encode_needs_no_implicit_transfers():
  enc = text.load_text_encoder("byt5-tiny-random")
  with jax.transfer_guard("disallow"):
    emb, mask = enc.encode(["a", "bb", "ccc"])  # Batch 3 pads to 4.
  assert emb.shape == (3, 64, 64) and mask.shape == (3, 64)
