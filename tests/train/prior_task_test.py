"""The unCLIP prior task (config.task="prior"): its checks, loss and guided denoiser on small
inputs; and end to end (slow), a runlocal shapes CLIP, the prior trained on it from the
command line, read back by load_prior and sampled by PriorSampler."""

import math
import os
import pathlib
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from imagen_jax import config_check
from imagen_jax import diffusion
from imagen_jax.launch import sweep as sweep_lib
from imagen_jax.models.prior import DiffusionPrior
from imagen_jax.sampling import unclip
from imagen_jax.train import loop
from imagen_jax.train import prior_task

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny():
  return DiffusionPrior(embed_dim=8, text_dim=4, width=16, depth=1, num_heads=2)


def _schedule():
  return diffusion.get_schedule("cosine", log_snr_min=-20.0, log_snr_max=20.0)


def test_missing_clip_is_a_clear_error(tmp_path):
  c = shapes_config.get_config("stage=prior,runlocal")
  assert c.task == "prior" and c.prior.clip == "" and c.diffusion.prediction == "x0"
  with pytest.raises(ValueError, match=r"config\.prior\.clip is required: the CLIP run dir"):
    loop.train_and_evaluate(c, str(tmp_path / "prior"))


def test_config_check_task_and_model_must_agree():
  c = shapes_config.get_config("stage=prior,runlocal")
  c.task = "diffusion"
  with pytest.raises(config_check.ConfigError, match="shapes_prior/tiny is a diffusion prior"):
    config_check.validate(c)
  c = shapes_config.get_config("stage=base,runlocal")
  c.task = "prior"
  with pytest.raises(config_check.ConfigError, match="task='prior'.*a diffusion network"):
    config_check.validate(c)
  c = shapes_config.get_config("stage=prior,runlocal")
  del c["prior"]
  with pytest.raises(config_check.ConfigError, match="config.prior.clip must be a string"):
    config_check.validate(c)


def test_build_prior_refuses_other_models_and_predictions():
  c = shapes_config.get_config("stage=prior,runlocal")
  model, _ = prior_task.build_prior(c)
  assert isinstance(model, DiffusionPrior) and model.embed_dim == 64 and model.text_dim == 64
  c.diffusion.prediction = "eps"
  with pytest.raises(ValueError, match="prediction='eps': the prior predicts the clean"):
    prior_task.build_prior(c)
  c = shapes_config.get_config("stage=base,runlocal")
  with pytest.raises(ValueError, match="needs a DiffusionPrior model.*is a UNet"):
    prior_task.build_prior(c)


@pytest.mark.parametrize("arg", ["variant=paper", "variant=tiny,runlocal"])
def test_unclip_config_builds_and_validates(arg):
  c = sweep_lib.load_module(ROOT / "configs" / "unclip.py").get_config(arg)
  config_check.validate(c)
  model, _ = prior_task.build_prior(c)
  e, d = (768, 4096) if arg == "variant=paper" else (64, 64)
  assert (model.embed_dim, model.text_dim) == (e, d) and c.task == "prior"
  variables = jax.eval_shape(
      lambda: model.init(
          jax.random.PRNGKey(0),
          jnp.zeros((1, e)),
          jnp.zeros((1,)),
          jnp.zeros((1, 4, d)),
          jnp.ones((1, 4), bool),
      )
  )
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(variables["params"])))
  assert n > 1e9 if arg == "variant=paper" else n < 1e6


def test_check_clip_names_both_values():
  model = _tiny()
  noisy = types.SimpleNamespace(projection_dim=8, resolution=16)
  prior_task.check_clip(model, noisy, 16)
  with pytest.raises(ValueError, match="embed_dim=8 but the CLIP \\(DIR\\) has projection_dim=64"):
    prior_task.check_clip(model, types.SimpleNamespace(projection_dim=64), 16, "DIR")
  with pytest.raises(ValueError, match="resolution=32 but the noise-aware CLIP reads 16x16"):
    prior_task.check_clip(model, noisy, 32)
  prior_task.check_clip(model, types.SimpleNamespace(projection_dim=8), 32)  # HF: resizes


def test_target_embedding_has_unit_variance_scale():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 64)) * 5.0
  z = prior_task.target_embedding(x)
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), math.sqrt(64), rtol=1e-5)
  np.testing.assert_allclose(z / 8.0, x / np.linalg.norm(x, axis=-1, keepdims=True), atol=1e-6)


def test_loss_nulls_dropped_text_and_reports_cosine():
  model, schedule = _tiny(), _schedule()
  rng = np.random.default_rng(0)
  z0 = prior_task.target_embedding(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32))
  emb = jnp.asarray(rng.normal(size=(4, 3, 4)), jnp.float32)
  mask = jnp.ones((4, 3), bool)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), z0, jnp.zeros((4,)), emb, mask)["params"])
  loss_fn = jax.jit(prior_task.prior_loss_fn(model, schedule))
  batch = dict(z0=z0, text_emb=emb, text_mask=mask, drop_text=jnp.zeros((4,), bool))
  key = jax.random.PRNGKey(1)
  loss, metrics = loss_fn(params, batch, key)
  assert np.isfinite(loss) and set(metrics) == {"loss", "cosine"}
  assert -1.0 <= float(metrics["cosine"]) <= 1.0
  # Dropped rows see the null text: their loss does not depend on the caption.
  other = dict(batch, text_emb=emb[::-1])
  assert float(loss_fn(params, other, key)[0]) != pytest.approx(float(loss), abs=1e-7)
  dropped = dict(batch, drop_text=jnp.ones((4,), bool))
  np.testing.assert_allclose(
      loss_fn(params, dropped, key)[0], loss_fn(params, dict(other, drop_text=True), key)[0]
  )
  # The gradient reaches the prior's parameters.
  grads = jax.grad(lambda p: loss_fn(p, batch, key)[0])(params)
  assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0


def test_guided_denoiser_combines_cond_and_uncond():
  model, schedule = _tiny(), _schedule()
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8))
  emb, mask = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4)), jnp.ones((2, 3), bool)
  params = model.init(jax.random.PRNGKey(2), z, jnp.zeros((2,)), emb, mask)["params"]
  t = jnp.full((2,), 0.5)
  cond = unclip.prior_denoise_fn(model, params, schedule, emb, mask, 1.0)(z, t)
  uncond = unclip.prior_denoise_fn(model, params, schedule, emb, jnp.zeros_like(mask), 1.0)(z, t)
  for w in (0.0, 3.0):
    guided = unclip.prior_denoise_fn(model, params, schedule, emb, mask, w)(z, t)
    np.testing.assert_allclose(guided, uncond + w * (cond - uncond), atol=1e-5)


# -- end to end: a shapes CLIP, the prior from the command line, sampling -------------------


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
  """configs/shapes.py:stage=clip,runlocal trained 3 steps in-process; its workdir."""
  workdir = tmp_path_factory.mktemp("prior_e2e") / "clip"
  loop.train_and_evaluate(shapes_config.get_config("stage=clip,runlocal"), str(workdir))
  return workdir


@pytest.mark.slow  # trains the shapes CLIP and the prior 3 steps each (~90 s on 2 cores)
def test_prior_trains_on_a_clip_run_and_samples(clip_run, tmp_path):
  workdir = tmp_path / "prior"
  cmd = [
      sys.executable,
      "scripts/train.py",
      "--config=configs/shapes.py:stage=prior,runlocal",
      f"--config.prior.clip={clip_run}",
      f"--workdir={workdir}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  prior = unclip.load_prior(workdir)
  assert prior.step == 3 and prior.clip_path == str(clip_run) and prior.embed_dim == 64
  sampler = unclip.PriorSampler(prior)
  captions = ["a small red circle", "a big blue square"]
  z = sampler.sample(captions, guidance_scale=3.0, num_steps=4, sampler="ddpm", seed=0)
  assert z.shape == (2, 64) and z.dtype == np.float32 and np.all(np.isfinite(z))
  again = sampler.sample(captions, guidance_scale=3.0, num_steps=4, sampler="ddpm", seed=0)
  np.testing.assert_array_equal(z, again)
  unit = sampler.sample(captions, num_steps=3, sampler="ddim", seed=1, normalize=True)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, rtol=1e-5)
  assert sampler.scale == pytest.approx(8.0)
  with pytest.raises(ValueError, match="not a diffusion prior"):
    unclip.load_prior(clip_run)


@pytest.mark.slow  # needs the CLIP run of the fixture above
def test_mismatches_with_the_clip_run_are_named(clip_run, tmp_path):
  c = shapes_config.get_config("stage=prior,runlocal")
  c.prior.clip = str(clip_run)
  c.model.overrides.embed_dim = 128
  with pytest.raises(ValueError, match="embed_dim=128 but the CLIP .* has projection_dim=64"):
    loop.train_and_evaluate(c, str(tmp_path / "a"))
  c = shapes_config.get_config("stage=prior,runlocal")
  c.prior.clip = str(clip_run)
  c.model.overrides.text_dim = 32
  with pytest.raises(ValueError, match="gives 64-dim embeddings but the prior has text_dim=32"):
    loop.train_and_evaluate(c, str(tmp_path / "b"))
