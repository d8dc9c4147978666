"""Numerical parity of the Flax T5 encoder with transformers' PyTorch T5EncoderModel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import text
from imagen_jax.text import t5


@pytest.mark.parametrize("arch", ["v1_1", "original"])
def test_matches_pytorch_t5_encoder_on_padded_batch(hf_dirs, t5ref, arch):
  path, model = hf_dirs[arch]
  enc = text.load_text_encoder(path, max_length=40)
  cfg = t5ref.CONFIGS[arch]
  assert enc.config.is_gated == (arch == "v1_1")
  ids, mask = t5ref.padded_batch(cfg["vocab_size"], [40, 17, 1, 29, 3], 40)
  ref = t5ref.reference_outputs(model, ids, mask)
  emb, out_mask = enc.encode_ids(ids, mask)
  emb = np.asarray(emb)
  assert emb.shape == (5, 40, cfg["d_model"]) and emb.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(out_mask), mask)
  diff = np.abs(emb - ref)[mask].max()
  print(f"{arch}: max abs diff vs PyTorch T5EncoderModel = {diff:.3g}")
  assert diff <= 1e-4
  assert np.all(emb[~mask] == 0.0)
  assert np.abs(ref[mask]).max() > 0.1  # Not vacuous.


def test_matches_pytorch_in_bfloat16_loosely(hf_dirs, t5ref):
  path, model = hf_dirs["v1_1"]
  enc = text.load_text_encoder(path, max_length=24, dtype=jnp.bfloat16)
  ids, mask = t5ref.padded_batch(99, [24, 9], 24, seed=1)
  ref = t5ref.reference_outputs(model, ids, mask)
  emb = np.asarray(enc.encode_ids(ids, mask)[0])
  assert emb.dtype == np.float32
  # bfloat16 matmuls on unit-RMS activations: about 3 significant digits.
  assert np.abs(emb - ref)[mask].max() < 0.1


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (8, 9), (64, 256)])
def test_relative_position_buckets_match_transformers(t5ref, num_buckets, max_distance):
  t5ref.need_torch()
  import torch  # pylint: disable=import-outside-toplevel
  from transformers.models.t5 import modeling_t5  # pylint: disable=import-outside-toplevel

  rel = np.arange(-600, 601)[None, :] - np.zeros((1, 1), np.int64)
  ours = t5.relative_position_bucket(rel, num_buckets=num_buckets, max_distance=max_distance)
  theirs = modeling_t5.T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.from_numpy(rel), bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
  ).numpy()
  np.testing.assert_array_equal(ours, theirs)


def test_encode_fn_is_pure_and_jittable_inside_larger_function(hf_dirs, t5ref):
  path, _ = hf_dirs["original"]
  enc = text.load_text_encoder(path, max_length=16)
  ids, mask = t5ref.padded_batch(99, [16, 5], 16)

  @jax.jit
  def outer(params, ids, mask):
    emb, m = enc.encode_fn(params, ids, mask)
    return jnp.sum(emb * m[..., None])

  direct = np.asarray(enc.encode_ids(ids, mask)[0]).sum()
  np.testing.assert_allclose(outer(enc.params, ids, mask), direct, rtol=1e-5)
  # Frozen: no gradient flows into the encoder params.
  grads = jax.grad(outer)(enc.params, ids, mask)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_module_params_match_config_shapes():
  cfg = text.T5Config(
      vocab_size=50,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_heads=4,
      feed_forward_proj="gated-gelu",
  )
  module = text.T5Encoder(cfg)
  ids = jnp.ones((1, 8), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), ids, ids > 0)["params"]
  flat = {
      "/".join(k.key for k in path): v.shape
      for path, v in jax.tree_util.tree_leaves_with_path(params)
  }
  assert flat == cfg.param_shapes()


def test_unknown_activation_is_rejected():
  with pytest.raises(ValueError, match="gated-tanhh"):
    text.T5Config(
        vocab_size=5,
        d_model=8,
        d_kv=2,
        d_ff=8,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-tanhh",
    )
