"""The two placements put the same state and batches where their mode says, and give them back
unchanged (checkpoints, metrics, sampling params)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import placement as placement_lib
from imagen_jax.train import state as state_lib
from imagen_jax.train import toy_task


def _placement(mode):
  parallel = ml_collections.ConfigDict(
      dict(
          mode=mode,
          min_fsdp_size_mb=0.0,
          logical_rules=[("embed", None), ("conv_in", None), ("conv_out", None)],
      )
  )
  return placement_lib.for_config(parallel, mesh_lib.create_mesh([("data", -1), ("fsdp", 1)]))


def test_mode_names_and_alias():
  assert placement_lib.canonical_mode("pjit") == "jit"
  assert [placement_lib.canonical_mode(m) for m in placement_lib.MODES] == ["jit", "pmap"]
  assert type(_placement("pjit")) is placement_lib.JitPlacement
  assert type(_placement("pmap")) is placement_lib.PmapPlacement
  with pytest.raises(ValueError, match="mode='pjti'"):
    placement_lib.canonical_mode("pjti")


@pytest.mark.parametrize("mode, shape", [("jit", (16, 4, 3)), ("pmap", (8, 2, 4, 3))])
def test_batches_reach_the_step_in_the_modes_layout(mode, shape):
  placement = _placement(mode)
  host = {"x": np.arange(16 * 4 * 3, dtype=np.float32).reshape(16, 4, 3)}
  plain = placement.batch_putter()(host)
  doubled = placement.batch_putter(lambda frozen, b: {"x": b["x"] * frozen}, jnp.float32(2.0))(host)
  assert plain["x"].shape == doubled["x"].shape == shape
  np.testing.assert_array_equal(np.asarray(plain["x"]).reshape(16, 4, 3), host["x"])
  np.testing.assert_array_equal(np.asarray(doubled["x"]).reshape(16, 4, 3), 2 * host["x"])


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_state_round_trips_through_the_placement(mode):
  placement = _placement(mode)
  net = toy_task.ToyNet(features=8)
  init_variables = lambda rng: net.init(rng, jnp.zeros((1, 8, 8, 3)))
  spec = state_lib.state_spec(
      placement, init_variables, optax.adam(1e-3), jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  )
  state = jax.jit(spec.init, out_shardings=spec.shardings)(
      jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  )
  assert spec.num_params == sum(x.size for x in jax.tree.leaves(state.params))
  placed = placement.put_state(state)
  if mode == "pmap":
    assert placed.params["conv1"].shape == (8,) + state.params["conv1"].shape
  saved = placement.checkpoint_state(placed, spec.shardings)
  for a, b, s in zip(
      jax.tree.leaves(saved), jax.tree.leaves(state), jax.tree.leaves(spec.shardings)
  ):
    assert a.sharding.is_equivalent_to(s, a.ndim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ema = placement.unplaced(placed.ema_params)
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
      ema,
      state.ema_params,
  )
  result = placement.result(placed)
  np.testing.assert_array_equal(
      np.asarray(result.params["conv2"]), np.asarray(state.params["conv2"])
  )
  loss = jax.pmap(lambda x: x)(jnp.full((8,), 1.5)) if mode == "pmap" else jnp.float32(1.5)
  assert float(placement.host_metrics([{"loss": loss}])[0]["loss"]) == 1.5
  assert placement.flops_devices == (8 if mode == "jit" else 1)
