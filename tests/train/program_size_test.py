"""program_size (benchmarks/hlo_size.py): StableHLO op counts agree with the jaxpr."""
import jax
import jax.numpy as jnp

from imagen_jax.train import program_size


def _fn(x, w1, w2, a, b):
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = conv(conv(x, w1), w1)             # the same signature twice
  y = conv(y, w2)                       # another one
  return y.sum() + (a @ b).sum() + (b.T @ a.T).sum()


def test_counts_match_the_jaxpr():
  args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), jnp.ones((1, 1, 4, 4)),
          jnp.ones((3, 5)), jnp.ones((5, 7)))
  stats = program_size.op_stats(jax.jit(_fn).lower(*args).as_text())
  eqns = jax.make_jaxpr(_fn)(*args).jaxpr.eqns
  prims = [e.primitive.name for e in eqns]
  assert stats["convolutions"] == prims.count("conv_general_dilated") == 3
  assert stats["distinct_convolutions"] == 2
  assert stats["dot_generals"] == prims.count("dot_general") == 2
  assert stats["distinct_dot_generals"] == 2
  assert stats["ops"] >= len(eqns)
  assert dict(stats["top"])["convolution"] == 3
