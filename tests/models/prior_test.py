"""The unCLIP diffusion prior network: shapes, the null text's independence of text_emb,
the key mask, shape errors naming the bad shape, the registry's variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import models
from imagen_jax.models.prior import DiffusionPrior


def _inputs(b=2, length=5, e=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(b, e)), jnp.float32)
  log_snr = jnp.asarray(rng.uniform(-5, 5, size=(b,)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
  mask = jnp.asarray(np.arange(length)[None] < np.array([[3], [length]])[:b])
  return z, log_snr, emb, mask


def _model(**kw):
  return DiffusionPrior(**{**dict(embed_dim=16, text_dim=8, width=32, depth=2, num_heads=4), **kw})


def test_output_shape_dtype_and_text_dependence():
  model = _model()
  z, log_snr, emb, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), z, log_snr, emb, mask)["params"]
  apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  out = apply(params, z, log_snr, emb, mask)
  assert out.shape == (2, 16) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  # The caption matters; padded tokens (mask False) do not.
  other = apply(params, z, log_snr, _inputs(seed=1)[2], mask)  # (a shift is LayerNorm-ed away)
  assert not np.allclose(out, other, atol=1e-4)
  junk = emb.at[0, 3:].set(100.0)  # row 0's padding
  np.testing.assert_allclose(apply(params, z, log_snr, junk, mask), out, atol=1e-5)
  # The noise level and z_t matter.
  assert not np.allclose(apply(params, z, log_snr + 3.0, emb, mask), out, atol=1e-4)
  # bfloat16 compute still returns float32.
  bf = _model(dtype=jnp.bfloat16)
  assert bf.apply({"params": params}, z, log_snr, emb, mask).dtype == jnp.float32


def test_null_text_ignores_text_emb():
  model = _model()
  z, log_snr, emb, _ = _inputs()
  null = jnp.zeros(emb.shape[:2], bool)
  params = model.init(jax.random.PRNGKey(1), z, log_snr, emb, null)["params"]
  apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  a = apply(params, z, log_snr, emb, null)
  b = apply(params, z, log_snr, 7.0 * jax.random.normal(jax.random.PRNGKey(2), emb.shape), null)
  np.testing.assert_array_equal(a, b)
  # ... nor on the text length.
  c = apply(params, z, log_snr, jnp.ones((2, 9, 8)), jnp.zeros((2, 9), bool))
  np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(z=(2, 15)), r"z_t shape: expected \[B, embed_dim=16\], got \(2, 15\)"),
        (dict(z=(2, 1, 16)), r"z_t shape.*got \(2, 1, 16\)"),
        (dict(log_snr=(3,)), r"log_snr shape: expected \(2,\), got \(3,\)"),
        (dict(emb=(2, 5, 7)), r"text_emb shape: expected \[2, L, text_dim=8\], got \(2, 5, 7\)"),
        (dict(mask=(2, 4)), r"text_mask shape: expected \(2, 5\), got \(2, 4\)"),
    ],
)
def test_bad_shapes_name_the_value(change, match):
  model = _model()
  shapes = dict(z=(2, 16), log_snr=(2,), emb=(2, 5, 8), mask=(2, 5))
  shapes.update(change)
  args = [jnp.zeros(shapes["z"]), jnp.zeros(shapes["log_snr"]), jnp.zeros(shapes["emb"])]
  args.append(jnp.ones(shapes["mask"], bool))
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda *a: model.init(jax.random.PRNGKey(0), *a), *args)


def test_width_not_divisible_by_heads():
  z, log_snr, emb, mask = _inputs()
  with pytest.raises(ValueError, match="width=30 is not a multiple of num_heads=4"):
    jax.eval_shape(lambda: _model(width=30).init(jax.random.PRNGKey(0), z, log_snr, emb, mask))


def test_registry_variants():
  shapes = models.get_model("shapes_prior", "tiny")
  clip = models.model_config("shapes_clip16", "tiny")
  assert isinstance(shapes, DiffusionPrior)
  assert (shapes.embed_dim, shapes.text_dim) == (clip["projection_dim"], 64)
  assert (shapes.width, shapes.depth, shapes.num_heads) == (128, 4, 4)
  assert models.get_model("shapes_prior", "small").width > shapes.width
  paper = models.get_model("unclip_prior", "paper")
  assert (paper.embed_dim, paper.width, paper.depth, paper.num_heads, paper.text_dim) == (
      768,
      2048,
      24,
      32,
      4096,
  )
  assert set(models.variants("unclip_prior")) == {"paper", "small", "tiny"}
  assert models.get_model("shapes_prior", "tiny", embed_dim=128).embed_dim == 128
  with pytest.raises(ValueError, match="unknown DiffusionPrior field"):
    models.get_model("shapes_prior", "tiny", resolution=16)
