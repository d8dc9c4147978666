"""The fused (flat-buffer) update gives the per-tensor update's state and metrics, keeps the
state's layout, packs only replicated params, and falls back (or errors) where it cannot apply.

The reference is the per-tensor step (`fused_update="off"`), which runs optax's transformations
leaf by leaf as before; the two differ only in the order a global norm sums its squares.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.parallel import placement as placement_lib
from imagen_jax.parallel import pmap_step
from imagen_jax.parallel import sharding as sharding_lib
from imagen_jax.perf import program_size
from imagen_jax.train import fused_update
from imagen_jax.train import optim
from imagen_jax.train import step as step_lib
from imagen_jax.train.state import TrainState, create_train_state

CLIP = 0.05  # below the toy's grad norms, so every finite step clips


def _cfg(**kw):
  base = dict(
      name="adam",
      lr=3e-2,
      warmup_steps=0,
      decay="constant",
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip_norm=CLIP,
  )
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _params(low_dtype=jnp.float32):
  """Several shapes (a scalar among them); `low_dtype` for two of the leaves."""
  k = jax.random.split(jax.random.PRNGKey(1), 5)
  return {
      "dense": {"kernel": jax.random.normal(k[0], (4, 5)), "bias": jnp.full((5,), 0.1)},
      "conv": {"kernel": jax.random.normal(k[1], (3, 3, 2, 4))},
      "scale": jnp.asarray(0.7),
      "emb": jax.random.normal(k[2], (6, 4)).astype(low_dtype),
      "gain": (1.0 + 0.1 * jax.random.normal(k[3], (4,))).astype(low_dtype),
  }


def _loss(params, batch, rng):
  x = batch["x"]
  f32 = lambda a: a.astype(jnp.float32)
  h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"]).sum(-1)
  e = (x * f32(params["gain"])) @ f32(params["emb"]).T
  c = x @ params["conv"]["kernel"].reshape(-1, 4).T
  pred = params["scale"] * h + jnp.mean(e, -1) + jnp.mean(c**2, -1)
  return jnp.mean((pred - batch["y"]) ** 2), {"noise": jax.random.uniform(rng, ())}


def _batches(n, inf_at=None):
  out = []
  for i in range(n):
    kx, ky = jax.random.split(jax.random.PRNGKey(10 + i))
    x = jax.random.normal(kx, (8, 4))
    if i == inf_at:
      x = x.at[3, 1].set(jnp.inf)
    out.append({"x": x, "y": jax.random.normal(ky, (8,))})
  return out


def _step(tx):
  return step_lib.make_train_step(_loss, tx, ema_decay=0.9, ema_warmup=True)


def _run(cfg, params, batches, wrap=jax.jit, state_fn=None):
  """(states, metrics) after each batch, `wrap(body)` compiling the step."""
  tx, _ = optim.make_optimizer(cfg, 100)
  state = create_train_state(params, tx, jax.random.PRNGKey(0))
  state = state if state_fn is None else state_fn(state)
  step = wrap(_step(tx))
  states, metrics = [], []
  for batch in batches:
    state, m = step(state, batch)  # the placements' steps donate the state: copy it out
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return states, metrics


def _assert_close(actual, expected, rtol=1e-6, atol=1e-7):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert np.asarray(a).dtype == np.asarray(e).dtype and np.shape(a) == np.shape(e)
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol
    )


def _op_counts(cfg, params, batch):
  """{op: count} of the jitted step's lowered program."""
  tx, _ = optim.make_optimizer(cfg, 100)
  state = create_train_state(params, tx, jax.random.PRNGKey(0))
  text = jax.jit(_step(tx)).lower(state, batch).as_text()
  return dict(program_size.op_stats(text, top=10_000)["top"])


@pytest.mark.parametrize("name,wd", [("adam", 0.0), ("adamw", 0.1)])
def test_fused_equals_per_tensor_with_clipping_and_a_nonfinite_step(name, wd):
  batches = _batches(6, inf_at=3)
  on_states, on_m = _run(_cfg(name=name, weight_decay=wd, fused_update="on"), _params(), batches)
  off_states, off_m = _run(_cfg(name=name, weight_decay=wd, fused_update="off"), _params(), batches)
  for i, (on, off) in enumerate(zip(on_states, off_states)):
    for field in ("params", "ema_params", "opt_state"):
      _assert_close(getattr(on, field), getattr(off, field))
    assert int(on.step) == int(off.step) == i + 1 and int(on.skipped) == int(off.skipped)
    for key in ("loss", "grad_norm", "update_norm", "nonfinite", "noise", "ema_decay"):
      np.testing.assert_allclose(on_m[i][key], off_m[i][key], rtol=1e-6, err_msg=key)
  assert all(m["grad_norm"] > CLIP for i, m in enumerate(off_m) if i != 3)  # clipping applied
  assert [float(m["nonfinite"]) for m in on_m] == [0, 0, 0, 1, 0, 0]
  for field in ("params", "ema_params", "opt_state"):  # the inf step changed nothing
    jax.tree.map(
        np.testing.assert_array_equal, getattr(on_states[3], field), getattr(on_states[2], field)
    )
  # The two runs are different programs: the fused one packs (the PRNG has concatenates too).
  on, off = (
      _op_counts(_cfg(name=name, fused_update=mode), _params(), batches[0])
      for mode in ("on", "off")
  )
  assert on["concatenate"] > off.get("concatenate", 0) and sum(on.values()) < sum(off.values())


def test_bfloat16_leaves_pack_apart_and_keep_their_dtype():
  params = _params(jnp.bfloat16)
  tx, _ = optim.make_optimizer(_cfg(fused_update="on"), 100)
  state = create_train_state(params, tx, jax.random.PRNGKey(0))
  layout = fused_update.plan(state.params, state.ema_params, state.opt_state, mode="on")
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  groups = sorted(sorted(names[i] for i in g.indices) for g in layout.groups)
  assert groups == [
      ["['conv']['kernel']", "['dense']['bias']", "['dense']['kernel']", "['scale']"],
      ["['emb']", "['gain']"],
  ]
  # Without clipping the update is elementwise throughout: the same values as per tensor.
  # The norm metrics sum the two bfloat16 leaves' squares in another order and round once
  # instead of twice, so they agree to bfloat16's resolution only.
  batches = _batches(3)
  on_states, on_m = _run(_cfg(grad_clip_norm=0.0, fused_update="on"), params, batches)
  off_states, off_m = _run(_cfg(grad_clip_norm=0.0, fused_update="off"), params, batches)
  for on, off in zip(on_states, off_states):
    for field in ("params", "ema_params", "opt_state"):
      _assert_close(getattr(on, field), getattr(off, field))
    assert on.params["emb"].dtype == jnp.bfloat16 and on.opt_state[0].mu["gain"].dtype == (
        jnp.bfloat16
    )
  for on, off in zip(on_m, off_m):
    np.testing.assert_allclose(on["loss"], off["loss"], rtol=1e-6)
    for key in ("grad_norm", "update_norm"):
      np.testing.assert_allclose(on[key], off[key], rtol=2**-7, err_msg=key)


def test_fused_program_is_a_fraction_of_the_per_tensor_one():
  k = jax.random.split(jax.random.PRNGKey(2), 40)
  params = {f"w{i:02d}": jax.random.normal(k[i], (4, 1 + i % 5)) for i in range(40)}

  def loss(p, batch, rng):
    del rng
    return sum(jnp.mean((batch["x"] @ w) ** 2) for w in p.values()), {}

  tx_on, _ = optim.make_optimizer(_cfg(name="adamw", weight_decay=0.1, fused_update="auto"), 100)
  tx_off, _ = optim.make_optimizer(_cfg(name="adamw", weight_decay=0.1), 100)  # "off"
  assert optim.fused_update_mode(tx_on) == "auto" and optim.fused_update_mode(tx_off) == "off"
  batch = {"x": jnp.ones((8, 4))}
  ops = {}
  for mode, tx in (("auto", tx_on), ("off", tx_off)):
    state = create_train_state(params, tx, jax.random.PRNGKey(0))
    body = step_lib.make_train_step(loss, tx, ema_decay=0.9)
    ops[mode] = program_size.op_stats(jax.jit(body).lower(state, batch).as_text())["ops"]
  assert ops["auto"] < 0.5 * ops["off"], ops


def test_pmap_fused_equals_per_tensor():
  devices = jax.devices()[:2]
  wrap = lambda body: pmap_step.make_pmap_train_step(body, devices=devices)
  put = lambda state: pmap_step.replicate(state, devices)
  batches = [pmap_step.shard_batch(jax.device_get(b), 2) for b in _batches(3)]
  on_states, on_m = _run(_cfg(fused_update="on"), _params(), batches, wrap, put)
  off_states, off_m = _run(_cfg(fused_update="off"), _params(), batches, wrap, put)
  for on, off in zip(on_states, off_states):
    for field in ("params", "ema_params", "opt_state"):
      _assert_close(getattr(on, field), getattr(off, field))
  for on, off in zip(on_m, off_m):
    for key in ("loss", "grad_norm", "update_norm"):
      np.testing.assert_allclose(on[key], off[key], rtol=1e-6, err_msg=key)


def _fsdp_run(cfg, batches):
  """Steps under the jit placement on a 2-device fsdp mesh, the conv kernel sharded."""
  mesh = mesh_lib.create_mesh((("data", 1), ("fsdp", 2)), devices=jax.devices()[:2])
  placement = placement_lib.JitPlacement(mesh)
  tx, _ = optim.make_optimizer(cfg, 100)
  state = create_train_state(_params(), tx, jax.random.PRNGKey(0))
  rep = placement.replicated
  param_sh = jax.tree.map(lambda _: rep, state.params)
  param_sh["conv"]["kernel"] = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, None, None, "fsdp")
  )
  shardings = TrainState(
      step=rep,
      params=param_sh,
      ema_params=param_sh,
      opt_state=sharding_lib.opt_state_shardings(
          tx, state.opt_state, state.params, param_sh, mesh, 0.0
      ),
      rng=rep,
      skipped=rep,
  )
  state = jax.device_put(state, shardings)
  batches = [jax.device_put(b, placement.batch_sharding) for b in batches]
  step = placement.lower_step(_step(tx), shardings, state, batches[0]).compile()
  states, metrics = [], []
  for batch in batches:
    state, m = step(state, batch)  # the placements' steps donate the state: copy it out
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  layout = fused_update.plan(
      state.params, state.ema_params, state.opt_state, mode="auto", param_shardings=param_sh
  )
  return states, metrics, layout, state


def test_sharded_params_stay_per_tensor_and_on_refuses_them():
  batches = _batches(3)
  on_states, on_m, layout, last = _fsdp_run(_cfg(fused_update="auto"), batches)
  off_states, off_m, _, _ = _fsdp_run(_cfg(fused_update="off"), batches)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(_params())[0]]
  assert [names[i] for i in layout.kept] == ["['conv']['kernel']"] and layout.fused
  assert last.params["conv"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, None, None, "fsdp"
  )
  for on, off in zip(on_states, off_states):
    for field in ("params", "ema_params", "opt_state"):
      _assert_close(getattr(on, field), getattr(off, field))
  for on, off in zip(on_m, off_m):
    for key in ("loss", "grad_norm", "update_norm"):
      np.testing.assert_allclose(on[key], off[key], rtol=1e-6, err_msg=key)
  with pytest.raises(ValueError, match=r"fused_update='on', but 1 params are sharded .*conv"):
    _fsdp_run(_cfg(fused_update="on"), batches[:1])


def test_adafactor_stays_per_tensor_and_refuses_on():
  tx, _ = optim.make_optimizer(_cfg(name="adafactor", fused_update="auto"), 100)
  assert optim.fused_update_mode(tx) == "off"
  on, off = (
      _op_counts(_cfg(name="adafactor", fused_update=mode), _params(), _batches(1)[0])
      for mode in ("auto", "off")
  )
  assert on == off
  with pytest.raises(ValueError, match=r"fused_update='on' needs an elementwise optimizer"):
    optim.make_optimizer(_cfg(name="adafactor", fused_update="on"), 100)


def test_bad_mode_is_named():
  with pytest.raises(ValueError, match=r"config.optim.fused_update='yes'; expected one of"):
    optim.make_optimizer(_cfg(fused_update="yes"), 100)
