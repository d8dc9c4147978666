"""Shared layers against independent numpy references."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import layers


def _np_group_norm(x, gamma, beta, groups, eps=1e-5):
  b, h, w, c = x.shape
  xg = x.reshape(b, h, w, groups, c // groups).astype(np.float64)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = xg.var(axis=(1, 2, 4), keepdims=True)
  y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return y * gamma + beta


def _np_layer_norm(x, gamma, beta, eps=1e-6):
  x = x.astype(np.float64)
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_softmax_attention(q, k, v, mask):
  """q [B,Q,H,D], k/v [B,K,H,D], mask [B,K]: plain loops-free float64."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  logits = logits - logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w = w / w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def test_sinusoidal_embedding_formula_and_resolution():
  x = np.array([-20.0, -0.5, 0.0, 0.02, 20.0], np.float32)
  dim = 64
  got = np.asarray(layers.sinusoidal_embedding(jnp.asarray(x), dim))
  half = dim // 2
  freqs = np.exp(-np.log(layers.MAX_PERIOD) * np.arange(half) / half)
  args = layers.LOG_SNR_SCALE * x[:, None].astype(np.float64) * freqs
  want = np.concatenate([np.sin(args), np.cos(args)], -1)
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert got.dtype == np.float32
  # Neighbouring levels 0.02 apart are clearly distinguishable, and the
  # ends of the range are far apart.
  assert np.linalg.norm(got[2] - got[3]) > 0.5
  assert np.linalg.norm(got[0] - got[4]) > 1.0


def test_group_norm_matches_numpy_in_bf16_and_f32():
  x = np.random.RandomState(0).randn(2, 4, 4, 16).astype(np.float32) * 3 + 1
  for dtype in (jnp.float32, jnp.bfloat16):
    mod = layers.GroupNorm(num_groups=4, dtype=dtype)
    params = mod.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.5, nn.unbox(params))
    got = mod.apply(params, x)
    assert got.dtype == dtype
    p = params["params"]
    want = _np_group_norm(x, np.asarray(p["scale"]), np.asarray(p["bias"]), 4)
    tol = 1e-4 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=tol, rtol=tol)


def test_upsample_nearest():
  x = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1)
  got = np.asarray(layers.upsample_nearest(jnp.asarray(x), 2))
  want = x.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_array_equal(got, want)


def test_dot_product_attention_matches_numpy_and_ignores_masked_keys():
  rs = np.random.RandomState(1)
  q, k, v = (rs.randn(2, 5, 2, 8).astype(np.float32) for _ in range(3))
  k, v = k[:, :4], v[:, :4]
  mask = np.array([[True, True, False, True], [True, False, False, False]])
  got = np.asarray(layers.dot_product_attention(q, k, v, mask))
  np.testing.assert_allclose(got, _np_softmax_attention(q, k, v, mask), atol=1e-5)
  # Arbitrary (even huge) values at masked positions change nothing.
  k2, v2 = k.copy(), v.copy()
  k2[~mask] = 1e4
  v2[~mask] = -1e4
  np.testing.assert_array_equal(np.asarray(layers.dot_product_attention(q, k2, v2, mask)), got)


@pytest.mark.parametrize(
    "self_attention,cross_attention", [(True, True), (False, True), (True, False)]
)
def test_attention_module_matches_numpy(self_attention, cross_attention):
  rs = np.random.RandomState(2)
  b, h, w, c, l, d = 2, 3, 3, 16, 5, 12
  x = rs.randn(b, h, w, c).astype(np.float32)
  ctx = rs.randn(b, l, d).astype(np.float32)
  mask = np.array([[True] * 3 + [False] * 2, [False] * 5])
  mod = layers.Attention(
      per_head_channels=8,
      self_attention=self_attention,
      cross_attention=cross_attention,
      num_groups=4,
  )
  variables = nn.unbox(mod.init(jax.random.key(3), x, ctx, mask))
  # Non-trivial norm and bias params, so the reference checks their use.
  variables = jax.tree.map(lambda p: p + 0.1 * rs.randn(*p.shape).astype(np.float32), variables)
  got = np.asarray(mod.apply(variables, x, ctx, mask))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  tok = _np_group_norm(x, p["norm"]["scale"], p["norm"]["bias"], 4)
  tok = tok.reshape(b, h * w, c)

  def proj(name, inp):
    return np.einsum("bsc,chd->bshd", inp, p[name]["kernel"]) + p[name]["bias"]

  q = proj("query", tok)
  ks = [np.broadcast_to(p["null_key"], (b, 1) + p["null_key"].shape)]
  vs = [np.broadcast_to(p["null_value"], (b, 1) + p["null_value"].shape)]
  ms = [np.ones((b, 1), bool)]
  if self_attention:
    ks.append(proj("key", tok))
    vs.append(proj("value", tok))
    ms.append(np.ones((b, h * w), bool))
  if cross_attention:
    cn = _np_layer_norm(ctx, p["context_norm"]["scale"], p["context_norm"]["bias"])
    ks.append(proj("context_key", cn))
    vs.append(proj("context_value", cn))
    ms.append(mask)
  out = _np_softmax_attention(
      q, np.concatenate(ks, 1), np.concatenate(vs, 1), np.concatenate(ms, 1)
  )
  out = np.einsum("bshd,hdc->bsc", out, p["out"]["kernel"]) + p["out"]["bias"]
  want = x + out.reshape(b, h, w, c)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
  assert np.isfinite(got).all()


def test_num_heads_for():
  assert layers.num_heads_for(1024, 128) == (8, 128)
  assert layers.num_heads_for(16, 64) == (1, 16)
  with pytest.raises(ValueError, match="per_head_channels"):
    layers.num_heads_for(96, 64)
