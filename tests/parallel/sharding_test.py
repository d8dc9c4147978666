import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import sharding as sharding_lib


class Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    big = self.param(
        "big", nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "mlp")), (512, 1024)
    )  # 2 MiB
    odd = self.param(
        "odd", nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "mlp")), (513, 1023)
    )  # ~2 MiB, neither dim divisible by 2 or 4
    small = self.param(
        "small", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (1024,)
    )
    return x @ big + small + jnp.sum(odd)


def _abstract():
  return jax.eval_shape(Net().init, jax.random.PRNGKey(0), jnp.zeros((1, 512)))["params"]


def test_fsdp_rule_shards_largest_divisible_dim_of_large_params():
  mesh = mesh_lib.create_mesh([("data", 2), ("fsdp", 4)])
  sh = sharding_lib.param_shardings(_abstract(), mesh, [], min_fsdp_size_mb=1.0)
  assert sh["big"].spec == P(None, "fsdp")  # 1024 is the largest dim
  assert sh["odd"].spec == P(None, None)  # 513 and 1023 are not divisible by 4
  assert sh["small"].spec == P(None)  # below the size threshold


def test_logical_rules_then_fsdp_on_remaining_dim():
  mesh = mesh_lib.create_mesh([("data", 2), ("fsdp", 4)])
  sh = sharding_lib.param_shardings(
      _abstract(), mesh, [["mlp", "data"], ["embed", None]], min_fsdp_size_mb=1.0
  )
  assert sh["big"].spec == P("fsdp", "data")
  assert sh["small"].spec == P("data")
  # 'odd' (513, 1023): no rule-given axis divides it, nor does fsdp -> replicated.
  assert sh["odd"].spec == P(None, None)


def test_rules_naming_absent_mesh_axes_are_ignored():
  mesh = mesh_lib.create_mesh([("data", -1)])
  sh = sharding_lib.param_shardings(_abstract(), mesh, [["mlp", "model"]], min_fsdp_size_mb=0.0)
  assert sh["big"].spec == P(None, None)


@pytest.mark.parametrize(
    "make_tx", [lambda: optax.adam(1e-3), lambda: optax.adafactor(1e-3, min_dim_size_to_factor=8)]
)
def test_opt_state_follows_params(make_tx):
  mesh = mesh_lib.create_mesh([("data", 2), ("fsdp", 4)])
  boxed = _abstract()
  p_sh = sharding_lib.param_shardings(boxed, mesh, [], min_fsdp_size_mb=1.0)
  tx = make_tx()
  params = nn.meta.unbox(boxed)
  opt_abs = jax.eval_shape(tx.init, params)
  o_sh = sharding_lib.opt_state_shardings(tx, opt_abs, params, p_sh, mesh, min_fsdp_size_mb=1.0)
  leaves_a = jax.tree.leaves(opt_abs)
  leaves_s = jax.tree.leaves(o_sh, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  assert len(leaves_a) == len(leaves_s)
  for a, s in zip(leaves_a, leaves_s):
    assert len(s.spec) <= a.ndim
    s.shard_shape(a.shape)  # valid for the shape
  # jit init with these out_shardings works.
  out = jax.jit(tx.init, out_shardings=o_sh)(
      jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params)
  )
  assert jax.tree.structure(out) == jax.tree.structure(opt_abs)


def test_batch_sharding_over_data_and_fsdp():
  mesh = mesh_lib.create_mesh([("data", 2), ("fsdp", 4)])
  assert sharding_lib.batch_sharding(mesh).spec == P(("data", "fsdp"))
  x = jax.device_put(np.zeros((16, 3)), sharding_lib.batch_sharding(mesh))
  assert x.sharding.shard_shape(x.shape) == (2, 3)
