"""CFG and thresholding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax import diffusion


def test_cfg():
  c, u = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
  np.testing.assert_allclose(diffusion.cfg(c, u, 1.0), c)
  np.testing.assert_allclose(diffusion.cfg(c, u, 0.0), u)
  np.testing.assert_allclose(diffusion.cfg(c, u, 3.0), u + 3 * (c - u))


def test_static_threshold():
  x = jnp.array([[-3.0, -0.5, 0.2, 4.0]])
  np.testing.assert_allclose(diffusion.static_threshold(x), [[-1.0, -0.5, 0.2, 1.0]])


def test_dynamic_threshold_properties():
  rng = jax.random.PRNGKey(0)
  inside = jax.random.uniform(rng, (1, 8, 8, 3), minval=-1, maxval=1)
  big = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 3))
  x = jnp.concatenate([inside, big])
  out = diffusion.dynamic_threshold(x, percentile=0.995)
  # In-range examples are untouched; every value lands in [-1, 1].
  np.testing.assert_array_equal(out[0], inside[0])
  assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-6
  # Matches a numpy reference, per example.
  s = np.quantile(np.abs(np.asarray(big[0], np.float64)).ravel(), 0.995)
  s = max(s, 1.0)
  np.testing.assert_allclose(out[1], np.clip(big[0], -s, s) / s, rtol=1e-5)
  # Per example: an outlier in one example does not rescale the other.
  spiked = x.at[1, 0, 0, 0].set(1e4)
  out2 = diffusion.dynamic_threshold(spiked)
  np.testing.assert_array_equal(out2[0], out[0])
  # Upper cap as in DeepFloyd IF.
  capped = diffusion.dynamic_threshold(big, 0.995, max_value=1.5)
  np.testing.assert_allclose(capped, jnp.clip(big, -1.5, 1.5) / 1.5, rtol=1e-6)


def test_bad_threshold_name():
  with pytest.raises(ValueError, match="none, static, dynamic"):
    diffusion.apply_threshold(jnp.zeros((1, 2)), "soft")
  with pytest.raises(ValueError, match="percentile"):
    diffusion.dynamic_threshold(jnp.zeros((1, 2)), percentile=99.5)
