"""jit and pmap modes train identically (same data, RNG-independent toy loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imagen_jax.parallel import pmap_step
from imagen_jax.train import loop, step as step_lib, toy_task
from imagen_jax.train.state import create_train_state
from flax.core import meta


def test_loop_jit_and_pmap_give_same_loss_and_params(tmp_path):
  kw = {
      "total_steps": 6,
      "log_every_steps": 2,
      "model.noise_scale": 0.0,
      "checkpoint.every_steps": 100,
  }
  states = {}
  for mode in ("jit", "pmap"):
    config = toy_task.toy_config(**kw, **{"parallel.mode": mode})
    states[mode] = jax.device_get(
        loop.train(config, str(tmp_path / mode), toy_task.toy_task_factory)
    )
  a, b = states["jit"], states["pmap"]
  assert int(a.step) == int(b.step) == 6
  for field in ("params", "ema_params", "opt_state"):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
        getattr(a, field),
        getattr(b, field),
    )


def test_step_level_losses_match():
  net = toy_task.ToyNet(features=8)
  loss_fn = toy_task.make_loss_fn(net, noise_scale=0.0)
  it = toy_task.ToyIterator(16, 8, 0, 0, 1)
  params = meta.unbox(net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"])
  tx = optax.adam(1e-2)
  body = step_lib.make_train_step(loss_fn, tx, ema_decay=0.99)
  state0 = create_train_state(params, tx, jax.random.PRNGKey(1))
  jit_step = jax.jit(body)
  p_step = pmap_step.make_pmap_train_step(body)
  s_jit, s_pmap = state0, pmap_step.replicate(jax.device_get(state0))
  for _ in range(4):
    batch = next(it)
    s_jit, m_jit = jit_step(s_jit, {"image": jnp.asarray(batch["image"])})
    s_pmap, m_pmap = p_step(s_pmap, pmap_step.shard_batch({"image": batch["image"]}))
    np.testing.assert_allclose(m_jit["loss"], np.asarray(m_pmap["loss"])[0], rtol=1e-5)
    np.testing.assert_allclose(m_jit["grad_norm"], np.asarray(m_pmap["grad_norm"])[0], rtol=1e-5)
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
      jax.device_get(s_jit.params),
      pmap_step.unreplicate(s_pmap.params),
  )


def test_pmap_folds_device_index_into_rng():
  def loss_fn(params, batch, rng):
    return jnp.mean(params["w"] * batch["x"]), {"u": jax.random.uniform(rng, ())}

  tx = optax.sgd(0.0)
  body = step_lib.make_train_step(loss_fn, tx, ema_decay=0.0)
  state = pmap_step.replicate(create_train_state({"w": jnp.ones(())}, tx, jax.random.PRNGKey(0)))
  _, metrics = pmap_step.make_pmap_train_step(body, fold_device_rng=False)(
      state, pmap_step.shard_batch({"x": np.ones((8, 1), np.float32)})
  )
  # Metrics are pmean'ed; with unfolded RNGs every device draws the same number, so the mean
  # equals the jit path's draw.
  jit_m = jax.jit(body)(
      create_train_state({"w": jnp.ones(())}, tx, jax.random.PRNGKey(0)), {"x": jnp.ones((8, 1))}
  )[1]
  np.testing.assert_allclose(np.asarray(metrics["u"])[0], jit_m["u"], rtol=1e-6)


def test_shard_batch_divisibility_error():
  try:
    pmap_step.shard_batch({"x": np.zeros((6, 2))}, num_devices=4)
  except ValueError as e:
    assert "6 rows" in str(e) and "4 local devices" in str(e)
  else:
    raise AssertionError("expected ValueError")
