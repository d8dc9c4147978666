"""Rematerialisation saves memory without changing numbers (models/remat.py).

A small U-Net's and Efficient U-Net's training gradient (value_and_grad of an eps-prediction
diffusion loss) is compiled with remat none, block and full. XLA's compiled memory analysis
must show fewer temporaries with remat than without, and the loss and gradients must agree.

XLA:CPU's default scheduler (concurrency-optimised) hoists the recomputation next to the
forward pass, which undoes remat: the temporaries are the same with and without it
(BENCHMARKS.md "Memory (remat)"). GPU and TPU schedule for memory, so the programs are
compiled in a subprocess with `--xla_cpu_enable_concurrency_optimized_scheduler=false`
(XLA reads XLA_FLAGS once per process; conftest.py has set them already).
benchmarks/remat_memory.py measures the real stage sizes.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.models import get_model
from imagen_jax.models import registry
from imagen_jax.models import remat as remat_lib

BATCH, TEXT_LEN = 4, 6
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# The base U-Net and the Efficient U-Net, two levels each (attention at 16x16 / 8x8): graphs
# small enough to compile in seconds.
MODELS = {
    "imagen_base64": dict(resolution=32, channel_mult=(1, 2), attention_resolutions=(16,)),
    "shapes_sr32": dict(
        channels=(16, 32),
        num_res_blocks=(1, 1),
        strides=(2, 2),
        self_attention=(False, True),
        cross_attention=(False, True),
    ),
}
# Each compile takes seconds: the Efficient U-Net's "full" (per DBlock/UBlock, as the U-Net's
# per level) is left to networks_test.py's numerics and the residual count below.
SETTINGS = {"imagen_base64": ("none", "block", "full"), "shapes_sr32": ("none", "block")}


def _model(name, remat="none", policy=None):
  return get_model(name, "tiny", remat=remat, remat_policy=policy, **MODELS[name])


def _inputs(model):
  rs = np.random.RandomState(0)
  r = model.resolution
  args = dict(
      x0=rs.uniform(-1, 1, (BATCH, r, r, model.in_channels)).astype(np.float32),
      eps=rs.randn(BATCH, r, r, model.in_channels).astype(np.float32),
      log_snr=np.linspace(-6.0, 6.0, BATCH).astype(np.float32),
      text_emb=rs.randn(BATCH, TEXT_LEN, model.text_dim).astype(np.float32),
      text_mask=np.arange(TEXT_LEN)[None] < np.arange(1, BATCH + 1)[:, None],
  )
  if model.lowres_resolution is not None:
    lr = model.lowres_resolution
    args["lowres"] = rs.uniform(-1, 1, (BATCH, lr, lr, 3)).astype(np.float32)
    args["lowres_log_snr"] = np.full((BATCH,), 2.0, np.float32)
  return args


def _loss_fn(model, params, args):
  """x_t = alpha x0 + sigma eps at each row's log-SNR; MSE of the eps prediction."""
  a = dict(args)
  x0, eps, log_snr = a.pop("x0"), a.pop("eps"), a.pop("log_snr")
  alpha = jnp.sqrt(jax.nn.sigmoid(log_snr))[:, None, None, None]
  sigma = jnp.sqrt(jax.nn.sigmoid(-log_snr))[:, None, None, None]
  x_t = alpha * x0 + sigma * eps
  pred = model.apply(
      {"params": params}, x_t, log_snr, a.pop("text_emb"), a.pop("text_mask"), train=True, **a
  )
  return jnp.mean(jnp.square(pred - eps))


@functools.lru_cache(maxsize=None)
def _abstract_params(name):
  """The parameter shapes (the same whatever the remat setting)."""
  model = _model(name)
  a = {k: v for k, v in _inputs(model).items() if k != "eps"}
  init = lambda: model.init(
      jax.random.key(0), a.pop("x0"), a.pop("log_snr"), a.pop("text_emb"), a.pop("text_mask"), **a
  )
  return jax.eval_shape(init)["params"]


def _random_params(name):
  """Random parameters of the right shapes (no init program to compile; numbers only)."""
  rs = np.random.RandomState(1)

  def draw(s):  # kernels at 1 / sqrt(fan-in), vectors near 0
    scale = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return (scale * rs.randn(*s.shape)).astype(s.dtype)

  return jax.tree.map(draw, _abstract_params(name))


def _measure():
  """{name: {setting: {temp_bytes, loss, grad_max_abs_diff}}}; differences vs remat none."""
  jax.config.update("jax_disable_most_optimizations", True)  # compile time; remat unaffected
  out = {}
  for name in MODELS:
    args, params = _inputs(_model(name)), _random_params(name)
    rows, ref = {}, None
    for setting in SETTINGS[name]:
      fn = jax.jit(jax.value_and_grad(functools.partial(_loss_fn, _model(name, setting))))
      compiled = fn.lower(params, args).compile()
      memory = compiled.memory_analysis()
      loss, grads = compiled(params, args)
      ref = ref or (loss, grads)
      diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, ref[1])
      rows[setting] = {
          "temp_bytes": None if memory is None else int(memory.temp_size_in_bytes),
          "loss": float(loss),
          "grad_max_abs_diff": max(jax.tree.leaves(diffs)),
          "grad_max_abs": max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref[1])),
      }
    out[name] = rows
  return out


@pytest.fixture(scope="module")
def measured():
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SCHEDULER_FLAG}".strip()
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile here: read the analysis afresh
  proc = subprocess.run(
      [sys.executable, __file__], env=env, capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(MODELS))
def test_remat_lowers_temporaries(measured, name):
  rows = measured[name]
  assert rows["none"]["temp_bytes"] is not None, "no compiled memory analysis"
  for remat in SETTINGS[name][1:]:
    assert rows[remat]["temp_bytes"] < rows["none"]["temp_bytes"], rows


@pytest.mark.parametrize("name", list(MODELS))
def test_remat_keeps_loss_and_grads(measured, name):
  rows = measured[name]
  for remat in SETTINGS[name][1:]:
    np.testing.assert_allclose(rows[remat]["loss"], rows["none"]["loss"], rtol=1e-5, atol=1e-5)
    assert rows[remat]["grad_max_abs_diff"] <= 1e-5, rows
  assert rows["none"]["grad_max_abs"] > 1e-3, rows  # the gradients compared are not ~0


def _residual_bytes(name, remat, policy=None):
  """Bytes of activations the forward saves for the backward (jax.vjp residuals, traced)."""
  model = _model(name, remat, policy)
  args, params = _inputs(model), _abstract_params(name)
  vjp = jax.eval_shape(lambda p: jax.vjp(lambda q: _loss_fn(model, q, args), p)[1], params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp) if x.shape[:1] == (BATCH,))


@pytest.mark.parametrize("name", list(MODELS))
def test_remat_policy_reaches_nn_remat(name):
  """dots_saveable keeps the conv and matmul outputs inside each block, so what the forward
  saves sits between plain block remat (block inputs only) and no remat."""
  none = _residual_bytes(name, "none")
  block = _residual_bytes(name, "block")
  dots = _residual_bytes(name, "block", "dots_saveable")
  assert block < dots < none, (block, dots, none)
  assert _residual_bytes(name, "full", "dots_saveable") > _residual_bytes(name, "full")


def test_policy_names_are_checked():
  assert {"nothing_saveable", "dots_saveable"} <= set(remat_lib.REMAT_POLICIES)
  for mode in remat_lib.REMAT_MODES:
    assert remat_lib.check_remat(mode) == mode
  with pytest.raises(ValueError, match="remat must be one of"):
    remat_lib.check_remat("sometimes")
  with pytest.raises(ValueError, match=r"'dots'.*'dots_saveable'"):
    remat_lib.check_remat("block", "dots")
  with pytest.raises(ValueError, match="no effect with remat='none'"):
    remat_lib.check_remat("none", "dots_saveable")
  # A policy factory (it takes names) is not a policy.
  with pytest.raises(ValueError, match="save_only_these_names"):
    remat_lib.check_remat("full", "save_only_these_names")
  with pytest.raises(ValueError, match="remat_policy"):
    registry.model_config("imagen_sr256", "tiny", remat="full", remat_policy="dots")
  with pytest.raises(ValueError, match="remat='none'"):
    registry.model_config("imagen_base64", "tiny", remat_policy="dots_saveable")


if __name__ == "__main__":  # the subprocess of `measured`
  print(json.dumps(_measure()))
