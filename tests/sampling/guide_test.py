"""Classifier guidance through the cascade sampler (`CascadeSampler.sample(guide=...)`) and
the labels a guide reads from a prompt, on a random-weight base stage and classifier."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from configs import shapes as shapes_config
from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax import pipeline as pipeline_lib
from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.sampling import guides
from imagen_jax.train import checkpoint as ckpt_lib
from imagen_jax.train import classifier_task
from imagen_jax.train import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPTS = [
    "a large red circle on the left",
    "there is a small blue square",
    "at the top, a large green triangle",
    "a small yellow triangle in the middle",
]
FAST = [sampling.StageSettings(sampler="ddim", num_steps=3, guidance_scale=1.0)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  config = shapes_config.get_config("stage=base,runlocal")
  pipe = pipeline_lib.StagePipeline.from_config(config)
  params = meta.unbox(pipe.init(jax.random.PRNGKey(1))["params"])
  state = state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))
  path = tmp_path_factory.mktemp("stage") / "base"
  ckpt = ckpt_lib.Checkpointer(path, every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=config.to_dict(), force=True)
  ckpt.close()
  return sampling.load_stage(str(path))


def _classifier(**overrides):
  config = shapes_config.get_config("stage=classifier,runlocal")
  model = models.get_model(config.model.name, config.model.variant, **overrides)
  classifier_task.check_label_groups(model, "test")
  r = model.resolution
  params = model.init(jax.random.PRNGKey(7), jnp.zeros((1, r, r, 3)), jnp.zeros((1,)))["params"]
  return guides.Classifier(model, meta.unbox(params), config, 0)


def test_caption_labels_are_the_scene_labels_of_one_object_scenes():
  rng = np.random.default_rng(0)
  for _ in range(300):
    scene = shapes.sample_scene(rng, "all", max_objects=1)
    np.testing.assert_array_equal(
        shapes.caption_labels(shapes.caption(scene)), shapes.scene_labels(scene)
    )
  # The first-named object of a longer caption, plurals included.
  labels = shapes.caption_labels("two small cyan squares above a large red circle")
  decoded = [classes[i] for (_, classes), i in zip(shapes.LABEL_GROUPS[:3], labels)]
  assert decoded == ["cyan", "square", "small"]
  assert labels[3] == shapes.UNSTATED  # a relation, no place
  # The place phrase after the first-named object, or opening the caption; not another's.
  place = lambda caption: shapes.PLACES[shapes.caption_labels(caption)[3]]
  assert place("a small red circle on the left side and a large blue square at the top") == "left"
  assert place("near the bottom, a large green triangle") == "bottom"
  assert place("two large red circles, both in the middle") == "centre"
  unplaced = shapes.caption_labels("a small red circle and a large blue square at the top")
  assert unplaced[3] == shapes.UNSTATED
  with pytest.raises(ValueError, match="'a photo of a dog' names no shapes-world object"):
    shapes.caption_labels("a photo of a dog")


def test_log_prob_leaves_unstated_groups_out():
  """log p(y | x_t) sums the stated groups' log-softmax (numpy reference); an UNSTATED
  place is the same as a zero weight on the place group."""
  clf = _classifier()
  schedule = diffusion.get_schedule("cosine")
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  t = jnp.array([0.2, 0.5, 0.8])
  labels = np.array([[0, 1, 0, 3], [4, 2, 1, -1], [2, 0, 1, 0]], np.int32)
  got = np.asarray(clf.log_prob_fn(labels, schedule)(x, t))
  logits = clf.model.apply({"params": clf.params}, x, schedule.log_snr(t))
  want = np.zeros(3)
  for g, lg in enumerate(logits):
    lg = np.asarray(lg, np.float64)
    lp = lg - lg.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    for i in range(3):
      if labels[i, g] >= 0:
        want[i] += lp[i, labels[i, g]]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  no_place = clf.log_prob_fn(np.maximum(labels, 0), schedule, weights=(1, 1, 1, 0))(x, t)
  np.testing.assert_allclose(got[1], np.asarray(no_place)[1], rtol=1e-6)


def _log_prob_clean(clf, images, prompts, schedule):
  """log p(y | x) of the classifier on final images at the schedule's least noisy t."""
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  labels = np.stack([shapes.caption_labels(p) for p in prompts])
  return np.asarray(clf.log_prob_fn(labels, schedule)(x, jnp.zeros((len(prompts),))))


@pytest.mark.slow  # about 60 s on 2 free cores: three sampler compilations with a guide
def test_guided_cascade_matches_the_composed_sampler_and_raises_the_guide_log_prob(base):
  clf = _classifier()
  guide = guides.ClassifierGuide(clf)
  cascade = sampling.CascadeSampler([base], FAST, batch_size=len(PROMPTS))
  plain = cascade.sample(PROMPTS, seed=5, progress=False)[0]
  off = cascade.sample(PROMPTS, seed=5, progress=False, guide=guide, guide_scale=0.0)[0]
  np.testing.assert_array_equal(plain, off)  # scale 0: no guide, bit-identical
  scale = 30.0
  guided = cascade.sample(PROMPTS, seed=5, progress=False, guide=guide, guide_scale=scale)[0]
  assert np.mean(np.abs(guided.astype(int) - plain)) > 1.0

  # The same sampler composed by hand, outside the cascade.
  pipe = base.pipeline
  emb, mask = cascade.encoder(0).encode(PROMPTS)
  labels = np.stack([shapes.caption_labels(p) for p in PROMPTS])

  def steer(fn, schedule, prediction):
    log_prob = clf.log_prob_fn(labels, schedule)
    return diffusion.classifier_guidance(
        fn, log_prob, scale=scale, schedule=schedule, prediction=prediction
    )

  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(5), 0), 0)
  st = FAST[0]
  by_hand = jax.jit(
      lambda params, emb, mask, key: pipe.sample(
          params,
          emb,
          mask,
          key,
          sampler=st.sampler,
          num_steps=st.num_steps,
          threshold=st.threshold,
          steer=steer,
      )
  )(base.params, emb, mask, key)
  by_hand = sampling.to_uint8(np.asarray(jnp.clip(by_hand, -1, 1)))
  diff = np.abs(by_hand.astype(int) - guided)
  assert np.mean(diff <= 1) > 0.99 and diff.max() <= 3, diff.max()

  # Guidance raises the guide's log p(y | x) of the samples over unguided ones.
  sched = pipe.schedule
  assert np.mean(_log_prob_clean(clf, guided, PROMPTS, sched)) > np.mean(
      _log_prob_clean(clf, plain, PROMPTS, sched)
  )

  # min_log_snr above every step's log-SNR: the gate is shut, the samples are unguided.
  shut = guides.ClassifierGuide(clf, min_log_snr=1e6)
  gated = cascade.sample(PROMPTS, seed=5, progress=False, guide=shut, guide_scale=scale)[0]
  np.testing.assert_array_equal(gated, plain)


def test_guide_errors(base):
  cascade = sampling.CascadeSampler([base], FAST, batch_size=len(PROMPTS))
  guide = guides.ClassifierGuide(_classifier())
  with pytest.raises(ValueError, match="'a photo of a dog' names no shapes-world object"):
    cascade.sample(["a photo of a dog"], progress=False, guide=guide, guide_scale=1.0)
  with pytest.raises(ValueError, match="guide_scale=-1.0 must be a finite number >= 0"):
    cascade.sample(PROMPTS, progress=False, guide=guide, guide_scale=-1.0)
  with pytest.raises(ValueError, match="on='x1'; allowed: x_t, x0"):
    guides.ClassifierGuide(_classifier(), on="x1")
  wrong = guides.ClassifierGuide(_classifier(resolution=32))
  with pytest.raises(ValueError, match=r"\(shapes_classifier16, 32x32\) cannot guide stage 0"):
    cascade.sample(PROMPTS, progress=False, guide=wrong, guide_scale=1.0)


@pytest.mark.slow  # two script runs, each compiling a guided sampler
def test_sample_script_with_classifier_guidance(base, tmp_path):
  config = shapes_config.get_config("stage=classifier,runlocal")
  clf = _classifier()
  state = state_lib.create_train_state(clf.params, optax.adam(1e-3), jax.random.PRNGKey(0))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "clf", every_steps=1, keep=1, async_save=False)
  ckpt.save(1, state, data_state={}, config=config.to_dict(), force=True)
  ckpt.close()
  cmd = [
      sys.executable,
      str(ROOT / "scripts/sample.py"),
      f"--workdir_base={base.workdir}",
      "--prompt=a large red circle on the left",
      "--num_steps=2",
      "--sampler=ddim",
      f"--classifier_workdir={tmp_path / 'clf'}",
      "--classifier_scale=3",
      f"--output_dir={tmp_path / 'out'}",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "out" / "samples.json").read_text())
  assert record["classifier_guidance"]["scale"] == 3.0
  assert record["classifier_guidance"]["checkpoint_step"] == 1
  bad = subprocess.run(
      cmd[:3] + ["--prompt=a photo of a dog"] + cmd[4:],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=ROOT,
  )
  assert bad.returncode != 0
  assert "'a photo of a dog' names no shapes-world object" in bad.stderr
