"""program_size (benchmarks/hlo_size.py): StableHLO op counts agree with the jaxpr, with every
call to a jitted helper counted where it is used."""

import jax
import jax.numpy as jnp
import pytest

from imagen_jax.perf import program_size


def _conv(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _fn(x, w1, w2, a, b):
  y = _conv(_conv(x, w1), w1)  # the same signature twice
  y = jax.jit(_conv)(y, w2)  # another one, inside a called function
  y = jax.jit(_conv)(y, w2)  # ... called twice: one definition, two uses
  return y.sum() + (a @ b).sum() + (b.T @ a.T).sum()


def _count(jaxpr, prim):
  """Uses of `prim`, sub-jaxprs (jitted calls) expanded at each use."""
  n = 0
  for e in jaxpr.eqns:
    n += e.primitive.name == prim
    if "jaxpr" in e.params:  # a jitted call
      n += _count(getattr(e.params["jaxpr"], "jaxpr", e.params["jaxpr"]), prim)
  return n


def test_counts_match_the_jaxpr_with_calls_inlined():
  args = (
      jnp.ones((2, 8, 8, 4)),
      jnp.ones((3, 3, 4, 4)),
      jnp.ones((1, 1, 4, 4)),
      jnp.ones((3, 5)),
      jnp.ones((5, 7)),
  )
  text = jax.jit(_fn).lower(*args).as_text()
  stats = program_size.op_stats(text)
  jaxpr = jax.make_jaxpr(_fn)(*args).jaxpr
  assert stats["convolutions"] == _count(jaxpr, "conv_general_dilated") == 4
  assert text.count("stablehlo.convolution") == 3  # the text defines the helper's once
  assert stats["distinct_convolutions"] == 2
  assert stats["dot_generals"] == _count(jaxpr, "dot_general") == 2
  assert stats["distinct_dot_generals"] == 2
  assert stats["functions"] >= 2
  assert dict(stats["top"])["convolution"] == 4


def test_text_that_is_not_a_module_is_refused():
  with pytest.raises(ValueError, match="No func.func"):
    program_size.op_stats("stablehlo.add")
