"""Nothing non-finite is ever committed: the step's guard covers the update itself (its norm),
`skip` runs are bounded and say how many steps they skipped."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import loop, toy_task
from imagen_jax.train.task import TrainingHalted


def committed_states(workdir):
  """{step: the committed `state` item as host arrays}, read without a target."""
  root = workdir / ckpt_lib.CHECKPOINT_DIR
  out = {}
  for step_dir in sorted(p for p in root.iterdir() if p.name.isdigit()):
    out[int(step_dir.name)] = ocp.PyTreeCheckpointer().restore(step_dir / "state")
  return out


def nonfinite_leaves(tree):
  return [
      jax.tree_util.keystr(k)
      for k, x in jax.tree_util.tree_leaves_with_path(tree)
      if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x))
  ]


# lr=1e39 overflows float32: a finite loss and gradient, but an infinite update (the case
# that used to commit NaN parameters at every save).
OVERFLOW = {"optim.lr": 1e39, "optim.warmup_steps": 0, "optim.decay": "constant"}


def test_overflowing_update_is_skipped_and_never_committed(tmp_path):
  config = toy_task.toy_config(
      total_steps=6, log_every_steps=2, **{"checkpoint.every_steps": 2, **OVERFLOW}
  )
  state = jax.device_get(loop.train(config, str(tmp_path), toy_task.toy_task_factory))
  assert int(state.step) == 6 and int(state.skipped) == 6
  assert not nonfinite_leaves((state.params, state.ema_params, state.opt_state))
  states = committed_states(tmp_path)
  assert sorted(states) == [4, 6]  # keep=2
  for step, saved in states.items():
    assert not nonfinite_leaves(saved), (step, nonfinite_leaves(saved))
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert final["skipped_steps"] == 6


def test_halt_names_the_update(tmp_path):
  config = toy_task.toy_config(total_steps=4, nonfinite="halt", **OVERFLOW)
  with pytest.raises(TrainingHalted, match=r"Non-finite update_norm \(inf\) at step 1"):
    loop.train(config, str(tmp_path), toy_task.toy_task_factory)
  assert not (tmp_path / "checkpoints").exists() or not committed_states(tmp_path)


def test_skip_bound_turns_into_a_halt(tmp_path):
  config = toy_task.toy_config(
      total_steps=8,
      log_every_steps=1,
      nonfinite_max_skips=2,
      **{"input.nan_steps": [2, 3, 5], "checkpoint.every_steps": 100},
  )
  with pytest.raises(
      TrainingHalted, match=r"3 steps skipped .*nonfinite_max_skips=2; the last at step 5"
  ):
    loop.train(config, str(tmp_path), toy_task.toy_task_factory)
