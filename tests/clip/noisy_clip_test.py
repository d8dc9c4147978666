"""The noise-aware CLIP (config.task="clip"): model, multi-positive InfoNCE against numpy, a
short run through the trainer read back by load_clip, the guide's similarity, errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from imagen_jax import config_check
from imagen_jax import models
from imagen_jax.clip import load_clip
from imagen_jax.data import shapes
from imagen_jax.models import noisy_clip
from imagen_jax.train import clip_task
from imagen_jax.train import loop


def _init(model, b=2, length=80):
  x, log_snr = jnp.zeros((b, 16, 16, 3)), jnp.zeros((b,))
  ids = jnp.full((b, length), noisy_clip.EOS_ID, jnp.int32)
  return jax.jit(model.init)(jax.random.PRNGKey(0), x, log_snr, ids)["params"]


def _numpy_info_nce(img, txt, captions, scale):
  """Multi-positive symmetric InfoNCE written out with numpy loops (the reference)."""
  n = len(captions)
  logits = scale * img @ txt.T
  total = 0.0
  for mat in (logits, logits.T):
    for i in range(n):
      pos = [j for j in range(n) if captions[j] == captions[i]]
      row = mat[i] - mat[i].max()
      log_p = row - np.log(np.sum(np.exp(row)))
      total += -np.mean([log_p[j] for j in pos]) / n
  return total / 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The runlocal config trained 3 steps by the real trainer, and its workdir."""
  workdir = tmp_path_factory.mktemp("clip_run")
  c = shapes_config.get_config("stage=clip,runlocal")
  state = loop.train_and_evaluate(c, str(workdir))
  return c, state, str(workdir)


def test_forward_shapes_and_logit_scale():
  model = models.get_model("shapes_clip16", "tiny")
  params = _init(model)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert 100_000 < n < 1_000_000, n
  ids, mask = noisy_clip.byte_ids(["a red circle", "x"], 80)
  image, text, scale = jax.jit(model.apply)(
      {"params": params}, jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,)), ids, mask
  )
  assert image.shape == text.shape == (2, 64)
  np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-5)
  clamped = {**params, "logit_scale": jnp.float32(10.0)}
  assert float(model.apply({"params": clamped}, method="scale")) == pytest.approx(100.0)
  # Causal attention: the EOS-pooled feature does not depend on what follows the EOS.
  junk = ids.copy()
  junk[:, 20:] = 77
  text_fn = jax.jit(lambda p, i: model.apply({"params": p}, i, method="text_features"))
  np.testing.assert_allclose(text_fn(params, ids), text_fn(params, junk), atol=1e-6)


def test_byte_ids_and_too_long_caption():
  ids, mask = noisy_clip.byte_ids(["ab", ""], 4)
  np.testing.assert_array_equal(ids, [[ord("a") + 3, ord("b") + 3, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  with pytest.raises(ValueError, match="caption 'abcd' is 4 bytes.*max_length=4"):
    noisy_clip.byte_ids(["abc", "abcd"], 4)


def test_loss_matches_numpy_with_repeated_captions_as_positives():
  rng = np.random.default_rng(0)
  captions = ["a red circle", "a blue square", "a red circle", "a cyan triangle", "a red circle"]
  img = rng.normal(size=(5, 8)).astype(np.float32)
  txt = rng.normal(size=(5, 8)).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  ids, _ = noisy_clip.byte_ids(captions, 20)
  same = clip_task.same_caption(jnp.asarray(ids))
  expected_same = np.array([[a == b for b in captions] for a in captions])
  np.testing.assert_array_equal(np.asarray(same), expected_same)
  loss, logits = clip_task.multi_positive_info_nce(img, txt, same, 3.0)
  assert float(loss) == pytest.approx(_numpy_info_nce(img, txt, captions, 3.0), rel=1e-5)
  # Treating the repeats as negatives (plain InfoNCE) gives another number.
  plain, _ = clip_task.multi_positive_info_nce(img, txt, jnp.eye(5, dtype=bool), 3.0)
  assert abs(float(plain) - float(loss)) > 1e-3
  # Image 0's best caption being another copy of its own caption counts as a hit.
  logits = np.asarray(logits).copy()
  logits[0] = [0, 0, 9, 0, 0]
  logits[1] = [9, 0, 0, 0, 0]
  hits = np.asarray(clip_task.retrieval_hits(jnp.asarray(logits), same))
  assert hits[0] and not hits[1]


def test_runlocal_trains_and_load_clip_reads_it_back(trained):
  c, state, workdir = trained
  assert int(state.step) == 3
  m = load_clip(workdir)
  assert m.step == 3 and m.resolution == 16 and m.projection_dim == 64
  model, schedule = clip_task.build_clip(c)
  params = jax.device_get(state.ema_params)
  rng = np.random.default_rng(5)
  scenes = [shapes.sample_scene(rng, "train", max_objects=1) for _ in range(4)]
  images = np.stack([shapes.render(s, 16) for s in scenes])
  x0 = images.astype(np.float32) / 127.5 - 1
  log_snr = np.array([-3.0, 0.0, 2.0, 5.0], np.float32)
  direct = jax.jit(lambda p, x, s: model.apply({"params": p}, x, s, method="image_features"))(
      params, x0, log_snr
  )
  np.testing.assert_allclose(m.image_features(x0, log_snr), direct, rtol=1e-4, atol=1e-5)
  emb = m.encode_images(images, log_snr)
  np.testing.assert_allclose(emb, direct / np.linalg.norm(direct, axis=1, keepdims=True), 1e-4)
  # No log_snr: clean images, the schedule's log-SNR at t = 0.
  clean = np.full((4,), float(schedule.log_snr(jnp.zeros(()))), np.float32)
  np.testing.assert_allclose(m.encode_images(images), m.encode_images(images, clean), 1e-5)
  captions = [shapes.caption(s) for s in scenes]
  ids, mask = noisy_clip.byte_ids(captions, 80)
  text = jax.jit(lambda p, i, k: model.apply({"params": p}, i, k, method="text_features"))(
      params, ids, mask
  )
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  np.testing.assert_allclose(m.encode_texts(captions), text, rtol=1e-4, atol=1e-5)

  # The guide: cosine of the noisy image embedding at schedule.log_snr(t) and the text's.
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  x_t = jnp.asarray(x0) * 0.7
  sim = jax.jit(m.similarity_fn(captions, schedule))(x_t, t)
  expected = np.sum(np.asarray(m.encode_images(x_t, schedule.log_snr(t))) * text, axis=1)
  np.testing.assert_allclose(sim, expected, rtol=1e-4, atol=1e-5)
  one = m.similarity_fn(captions[:1], schedule)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(one(x, t))))(x_t)
  assert grad.shape == x_t.shape and bool(jnp.all(jnp.isfinite(grad)))

  with pytest.raises(ValueError, match="cannot guide the stage at 32x32"):
    m.check_stage(32)
  with pytest.raises(ValueError, match=r"images of shape \(4, 32, 32, 3\).*resolution 16"):
    m.encode_images(np.zeros((4, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="caption 'aaaa.*longer than the text tower's"):
    m.encode_texts(["a red circle", "a" * 90])


@pytest.mark.parametrize("task", ["classifier", None])
def test_load_clip_refuses_a_workdir_of_another_task(trained, tmp_path, task):
  """A copy of the trained workdir whose saved configs say another task (a classifier, or a
  diffusion stage: no task field) - training one would cost another compile."""
  workdir = tmp_path / "run"
  shutil.copytree(trained[2], workdir)
  for meta_file in workdir.glob("checkpoints/*/config/metadata"):
    saved = json.loads(meta_file.read_text())
    saved.pop("task")
    if task:
      saved["task"] = task
    meta_file.write_text(json.dumps(saved))
  want = task or "diffusion"
  with pytest.raises(ValueError, match=f"config.task='{want}' run, not a noise-aware CLIP"):
    load_clip(str(workdir))


def test_task_and_model_must_agree():
  c = shapes_config.get_config("stage=clip,runlocal")
  with c.unlocked():
    c.task = "diffusion"
  with pytest.raises(
      config_check.ConfigError,
      match=r"config.task='diffusion' but config.model shapes_clip16/tiny is a noise-aware CLIP",
  ):
    config_check.validate(c)
  c = shapes_config.get_config("stage=classifier,runlocal")
  with c.unlocked():
    c.task = "clip"
  with pytest.raises(
      config_check.ConfigError,
      match=r"config.task='clip' but config.model shapes_classifier16/tiny is a classifier",
  ):
    config_check.validate(c)
  c = shapes_config.get_config("stage=base,runlocal")
  with c.unlocked():
    c.task = "clip"
  with pytest.raises(config_check.ConfigError, match=r"config.task='clip'.*diffusion network"):
    config_check.validate(c)


def _retrieval(model, params, schedule, scenes, captions, t):
  """Image -> text top-1 accuracy on fresh images noised at time t, any equal caption right,
  and chance (1 / the number of distinct captions)."""
  x0 = np.stack([shapes.render(s, 16) for s in scenes]).astype(np.float32) / 127.5 - 1
  tt = jnp.full((len(scenes),), t)
  alpha, sigma = schedule.alpha_sigma(tt)
  x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * jax.random.normal(
      jax.random.PRNGKey(1), x0.shape
  )
  ids, mask = noisy_clip.byte_ids(captions, int(model.max_length))
  image, text, _ = jax.jit(model.apply)({"params": params}, x_t, schedule.log_snr(tt), ids, mask)
  image = image / jnp.linalg.norm(image, axis=1, keepdims=True)
  text = text / jnp.linalg.norm(text, axis=1, keepdims=True)
  same = clip_task.same_caption(jnp.asarray(ids))
  hits = clip_task.retrieval_hits(image @ text.T, same)
  return float(jnp.mean(hits)), 1.0 / len(set(captions))


@pytest.mark.slow
def test_short_run_beats_chance_at_low_noise(tmp_path):
  """150 steps of the tiny model on the CPU: low-noise image -> caption retrieval on fresh
  scenes beats chance by a wide margin, and the untrained model does not."""
  c = shapes_config.get_config("stage=clip,runlocal")
  c.total_steps = 150
  c.batch_size = 32
  c.log_every_steps = 50
  c.checkpoint.every_steps = 0
  c.optim.warmup_steps = 10
  state = loop.train_and_evaluate(c, str(tmp_path))
  model, schedule = clip_task.build_clip(c)
  rng = np.random.default_rng(123)
  scenes = [shapes.sample_scene(rng, "train", max_objects=1) for _ in range(32)]
  captions = [shapes.caption(s) for s in scenes]
  trained, chance = _retrieval(model, jax.device_get(state.params), schedule, scenes, captions, 0.2)
  untrained, _ = _retrieval(model, _init(model), schedule, scenes, captions, 0.2)
  assert trained > 3 * chance, (trained, untrained, chance)
  assert untrained < 2 * chance, (trained, untrained, chance)
