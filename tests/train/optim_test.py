import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagen_jax.train import optim


def _cfg(**kw):
  base = dict(
      name="adam",
      lr=1e-4,
      warmup_steps=10,
      decay="cosine",
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip_norm=1.0,
  )
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_warmup_then_cosine():
  sched = optim.make_lr_schedule(_cfg(), total_steps=110)
  np.testing.assert_allclose(sched(0), 0.0)
  np.testing.assert_allclose(sched(5), 0.5e-4, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(sched(60), 0.5e-4, rtol=1e-5)  # half-way down the cosine
  np.testing.assert_allclose(sched(110), 0.0, atol=1e-12)


def test_constant_with_warmup():
  sched = optim.make_lr_schedule(_cfg(decay="constant"), total_steps=100)
  np.testing.assert_allclose(
      [sched(0), sched(5), sched(10), sched(99)], [0.0, 0.5e-4, 1e-4, 1e-4], rtol=1e-6
  )


@pytest.mark.parametrize("name", ["adam", "adamw", "adafactor"])
def test_optimizers_build_and_step(name):
  tx, _ = optim.make_optimizer(
      _cfg(name=name, weight_decay=0.01 if name != "adam" else 0.0, warmup_steps=0, lr=0.1),
      total_steps=10,
  )
  params = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,))}
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


def test_clipping_bounds_update_of_huge_gradient():
  tx, _ = optim.make_optimizer(
      _cfg(name="adam", warmup_steps=0, lr=1.0, grad_clip_norm=1.0), total_steps=10
  )
  params = {"w": jnp.zeros((3,))}
  g = {"w": jnp.array([3e6, 4e6, 0.0])}
  # Clip runs before Adam: after clipping the gradient has norm 1.
  clipped, _ = tx.update(g, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(clipped["w"])))


def test_bad_names():
  with pytest.raises(ValueError, match="optim.name='sgd'"):
    optim.make_optimizer(_cfg(name="sgd"), 10)
  with pytest.raises(ValueError, match="optim.decay='linear'"):
    optim.make_optimizer(_cfg(decay="linear"), 10)
  with pytest.raises(ValueError, match="adamw"):
    optim.make_optimizer(_cfg(weight_decay=0.1), 10)


def test_ema_warmup():
  np.testing.assert_allclose(optim.ema_decay_at(0, 0.9999, True), 0.1, rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(90, 0.9999, True), 91 / 100, rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(10**7, 0.9999, True), 0.9999, rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(0, 0.9999, False), 0.9999, rtol=1e-6)
  ema = optim.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, jnp.float32(0.75))
  np.testing.assert_allclose(ema["w"], [0.25, 0.25])
