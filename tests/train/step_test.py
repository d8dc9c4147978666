import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imagen_jax.train import step as step_lib
from imagen_jax.train.state import create_train_state


def _loss(params, batch, rng):
  loss = jnp.mean((params["w"] * batch["x"] - batch["y"]) ** 2)
  return loss, {"noise": jax.random.uniform(rng, ())}


def _setup():
  tx = optax.adam(0.1)
  state = create_train_state({"w": jnp.ones((3,))}, tx, jax.random.PRNGKey(0))
  step = jax.jit(
      step_lib.make_train_step(
          _loss, tx, ema_decay=0.9, ema_warmup=False, lr_schedule=lambda s: 0.1
      )
  )
  return state, step


def _batch(x=1.0):
  return {"x": jnp.full((4, 3), x), "y": jnp.zeros((4, 3))}


def test_step_updates_params_ema_and_metrics():
  state, step = _setup()
  new, m = step(state, _batch())
  assert int(new.step) == 1 and int(new.skipped) == 0
  assert not np.allclose(new.params["w"], 1.0)
  np.testing.assert_allclose(new.ema_params["w"], 0.9 * 1.0 + 0.1 * new.params["w"], rtol=1e-6)
  for key in (
      "loss",
      "grad_norm",
      "lr",
      "nonfinite",
      "skipped_total",
      "bad_examples",
      "ema_decay",
      "noise",
  ):
    assert m[key].shape == ()
  assert float(m["nonfinite"]) == 0.0 and float(m["lr"]) == pytest.approx(0.1)


def test_rng_is_folded_with_step():
  state, step = _setup()
  s1, m1 = step(state, _batch())
  _, m2 = step(s1, _batch())
  assert float(m1["noise"]) != float(m2["noise"])
  expected = jax.random.uniform(jax.random.fold_in(state.rng, 0), ())
  np.testing.assert_allclose(m1["noise"], expected)


def test_nonfinite_step_leaves_state_unchanged():
  # The same under both `config.nonfinite` policies: the loop applies the policy.
  state, step = _setup()
  state, _ = step(state, _batch())
  new, m = step(state, _batch(np.nan))
  assert int(new.step) == 2 and int(new.skipped) == 1
  assert float(m["nonfinite"]) == 1.0 and int(m["bad_examples"]) == 4
  for field in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(new, field), getattr(state, field))
  after, m = step(new, _batch())
  assert float(m["nonfinite"]) == 0.0 and float(m["skipped_total"]) == 1.0
  assert not np.array_equal(after.params["w"], new.params["w"])
