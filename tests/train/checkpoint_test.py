"""Checkpointer: 8 -> 4 device restore, resume order, init_from, preemption flag."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from imagen_jax.parallel import mesh as mesh_lib
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import loop, toy_task
from imagen_jax.train.state import TrainState, create_train_state


def _state(mesh, spec=P(None, "data")):
  params = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.ones((8,))}
  tx = optax.adam(1e-3)
  state = create_train_state(params, tx, jax.random.PRNGKey(3))
  shard = lambda x: jax.device_put(
      x, NamedSharding(mesh, spec if getattr(x, "ndim", 0) == 2 else P())
  )
  return jax.tree.map(shard, state)


def test_restore_8_device_checkpoint_into_4_device_mesh(tmp_path):
  mesh8 = mesh_lib.create_mesh([("data", -1)])
  state = _state(mesh8).replace(step=jnp.asarray(5, jnp.int32))
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, keep=2)
  assert ckpt.save(5, state, data_state={"index": 5}, config={"a": 1})
  ckpt.close()

  mesh4 = mesh_lib.create_mesh([("data", 2), ("fsdp", 2)], devices=jax.devices()[:4])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=NamedSharding(mesh4, P("fsdp", "data") if x.ndim == 2 else P())
      ),
      state,
  )
  ckpt = ckpt_lib.Checkpointer(tmp_path, every_steps=1, keep=2)
  restored, data_state = ckpt.restore(None, target)
  ckpt.close()
  assert data_state == {"index": 5}
  assert restored.params["w"].sharding.mesh.devices.size == 4
  assert restored.params["w"].sharding.spec == P("fsdp", "data")
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state
  )


def test_resume_order_and_init_from(tmp_path):
  base = toy_task.toy_config(total_steps=4, **{"checkpoint.every_steps": 2})
  src = loop.train(base, str(tmp_path / "src"), toy_task.toy_task_factory)
  src = jax.device_get(src)

  # resume_from: the full state (step, optimizer) continues in a new workdir.
  cfg = toy_task.toy_config(total_steps=6, resume_from=str(tmp_path / "src"))
  resumed = jax.device_get(loop.train(cfg, str(tmp_path / "b"), toy_task.toy_task_factory))
  assert int(resumed.step) == 6

  # init_from: params only; step, optimizer state and EMA restart from scratch.
  cfg = toy_task.toy_config(total_steps=4, init_from=str(tmp_path / "src" / "checkpoints"))
  fresh = loop.train(cfg, str(tmp_path / "c"), toy_task.toy_task_factory, stop_at=0)
  fresh = jax.device_get(fresh)
  assert int(fresh.step) == 0
  jax.tree.map(np.testing.assert_array_equal, fresh.params, src.params)
  jax.tree.map(np.testing.assert_array_equal, fresh.ema_params, src.params)
  assert all(not np.any(x) for x in jax.tree.leaves(fresh.opt_state))  # counts, mu, nu = 0

  # The workdir's own checkpoint wins over resume_from / init_from.
  cfg = toy_task.toy_config(
      total_steps=6, init_from=str(tmp_path / "src"), resume_from=str(tmp_path / "src")
  )
  again = jax.device_get(loop.train(cfg, str(tmp_path / "b"), toy_task.toy_task_factory))
  jax.tree.map(np.testing.assert_array_equal, again.params, resumed.params)


def test_missing_resume_source_is_a_clear_error(tmp_path):
  cfg = toy_task.toy_config(resume_from=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    loop.train(cfg, str(tmp_path / "wd"), toy_task.toy_task_factory)


def test_check_writable(tmp_path):
  assert ckpt_lib.check_writable(tmp_path / "new").name == "checkpoints"
  os.chmod(tmp_path, 0o500)
  try:
    if os.access(tmp_path, os.W_OK):  # running as root: permissions are not enforced
      pytest.skip("permissions not enforced for this user")
    with pytest.raises(PermissionError, match="not writable"):
      ckpt_lib.check_writable(tmp_path / "other")
  finally:
    os.chmod(tmp_path, 0o700)


def test_sigterm_sets_flag_instead_of_exiting():
  previous = signal.getsignal(signal.SIGTERM)
  watcher = ckpt_lib.PreemptionWatcher()
  try:
    assert not watcher.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested
  finally:
    watcher.close()
  assert signal.getsignal(signal.SIGTERM) == previous


def test_state_is_a_pure_pytree():
  mesh = mesh_lib.create_mesh([("data", -1)])
  state = _state(mesh)
  assert isinstance(state, TrainState)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
