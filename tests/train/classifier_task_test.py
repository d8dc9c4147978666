"""The noise-aware classifier (config.task="classifier"): labels, model, errors, a short run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes as shapes_config
from imagen_jax import config_check
from imagen_jax import models
from imagen_jax.data import shapes
from imagen_jax.data import sources
from imagen_jax.sampling import guides
from imagen_jax.train import classifier_task
from imagen_jax.train import loop


def test_scene_labels_name_the_first_object():
  scene = shapes.Scene(
      objects=(
          shapes.Object("triangle", "cyan", "large", 0.3, 0.3),
          shapes.Object("circle", "red", "small", 0.7, 0.7),
      )
  )
  labels = shapes.scene_labels(scene)
  assert labels.dtype == np.int32
  decoded = [classes[i] for (_, classes), i in zip(shapes.LABEL_GROUPS[:3], labels)]
  assert decoded == ["cyan", "triangle", "large"]
  assert labels[3] == shapes.UNSTATED  # the scene states no place for it
  placed = shapes.Scene(objects=(shapes.Object("circle", "red", "small", 0.2, 0.5, "left"),))
  np.testing.assert_array_equal(
      shapes.scene_labels(placed),
      [list(shapes.COLOURS).index("red"), 0, 0, shapes.PLACES.index("left")],
  )


def test_unstated_labels_train_nothing():
  """The loss is each group's mean cross-entropy over the examples that state it (numpy
  reference on the same noised inputs): an UNSTATED place adds nothing for its example."""
  c = shapes_config.get_config("stage=classifier,runlocal")
  model, schedule = classifier_task.build_classifier(c)
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x0[:1], jnp.zeros((1,)))["params"]
  labels = np.array([[0, 1, 0, 2], [3, 2, 1, 4], [5, 0, 1, -1], [1, 1, 0, -1]], np.int32)
  rng = jax.random.PRNGKey(1)
  loss, metrics = classifier_task.classifier_loss_fn(model, schedule)(
      params, {"image": x0, "labels": jnp.asarray(labels)}, rng
  )
  # The same noised inputs, as the loss draws them (its rng split, no channel permutation).
  t_rng, eps_rng, drop_rng, _ = jax.random.split(rng, 4)
  t = jax.random.uniform(t_rng, (4,))
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * jax.random.normal(
      eps_rng, x0.shape
  )
  logits = model.apply(
      {"params": params}, x_t, schedule.log_snr(t), train=True, rngs={"dropout": drop_rng}
  )
  want = 0.0
  for g, lg in enumerate(logits):
    lg = np.asarray(lg, np.float64)
    log_p = lg - lg.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    stated = labels[:, g] >= 0
    want += -np.mean(log_p[stated, labels[stated, g]])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert 0.0 <= float(metrics["accuracy/place"]) <= 1.0


def test_shapes_source_labels_match_its_scenes():
  plain = sources.ShapesSource(16, "train", 1)
  labelled = sources.ShapesSource(16, "train", 1, labels=True)
  for seed in range(5):
    image, caption = plain.read(0, np.random.default_rng(seed))
    image2, caption2, extra = labelled.read(0, np.random.default_rng(seed))
    scene = shapes.sample_scene(np.random.default_rng(seed), "train", max_objects=1)
    np.testing.assert_array_equal(image, image2)
    assert caption == caption2
    np.testing.assert_array_equal(extra["labels"], shapes.scene_labels(scene))


def test_classifier_model_shapes_and_resolution_error():
  model = models.get_model("shapes_classifier16", "tiny")
  x, log_snr = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,))
  params = model.init(jax.random.PRNGKey(0), x, log_snr)
  logits = model.apply(params, x, log_snr)
  assert [tuple(a.shape) for a in logits] == [(2, 6), (2, 3), (2, 2), (2, 5)]
  with pytest.raises(ValueError, match=r"\[B, 16, 16, 3\].*resolution must match"):
    model.apply(params, jnp.zeros((2, 32, 32, 3)), log_snr)


def test_task_and_model_must_agree():
  c = shapes_config.get_config("stage=base,runlocal")
  with c.unlocked():
    c.task = "classifier"
  with pytest.raises(config_check.ConfigError, match="config.task='classifier'.*not a classifier"):
    config_check.validate(c)
  c = shapes_config.get_config("stage=classifier,runlocal")
  with c.unlocked():
    c.task = "clasifier"
  with pytest.raises(config_check.ConfigError, match="config.task='clasifier'; expected one of"):
    config_check.validate(c)


def test_heads_that_do_not_match_the_label_groups_are_refused():
  c = shapes_config.get_config("stage=classifier,runlocal")
  c.model.overrides.num_classes = (6, 3, 2)  # a classifier from before the place group
  with pytest.raises(ValueError, match=r"heads of \(6, 3, 2\) classes.*size \(2\), place \(5\)"):
    classifier_task.build_classifier(c)


@pytest.mark.slow
def test_short_run_learns_the_labels(tmp_path):
  """60 steps on the CPU: on fresh lightly-noised images the trained classifier beats chance
  on colour (1/6) and size (1/2) by a wide margin, and the untrained one does not."""
  c = shapes_config.get_config("stage=classifier,runlocal")
  c.total_steps = 60
  c.batch_size = 32
  c.log_every_steps = 20
  c.checkpoint.every_steps = 0
  c.optim.warmup_steps = 5
  state = loop.train_and_evaluate(c, str(tmp_path))
  model, schedule = classifier_task.build_classifier(c)
  rng = np.random.default_rng(123)
  scenes = [shapes.sample_scene(rng, "train", max_objects=1) for _ in range(96)]
  x0 = np.stack([shapes.render(s, 16) for s in scenes]).astype(np.float32) / 127.5 - 1
  labels = np.stack([shapes.scene_labels(s) for s in scenes])
  t = jnp.full((len(scenes),), 0.2)
  alpha, sigma = schedule.alpha_sigma(t)
  x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * jax.random.normal(
      jax.random.PRNGKey(1), x0.shape
  )

  def accuracy(params):
    logits = model.apply({"params": params}, x_t, schedule.log_snr(t))
    return [float(np.mean(np.argmax(l, -1) == labels[:, g])) for g, l in enumerate(logits)]

  trained = accuracy(jax.device_get(state.params))
  untrained = accuracy(
      model.init(jax.random.PRNGKey(0), x_t[:1], schedule.log_snr(t[:1]))["params"]
  )
  assert trained[0] > 0.5 and trained[2] > 0.75, (trained, untrained)
  assert untrained[0] < 0.4, untrained

  # The trained classifier as a guide: sampling.guides reads it back from the workdir.
  clf = guides.load_classifier(str(tmp_path), use_ema=False)
  log_prob = clf.log_prob_fn(labels, schedule)(x_t, t)
  logits = model.apply({"params": jax.device_get(state.params)}, x_t, schedule.log_snr(t))
  expected = sum(
      np.take_along_axis(np.asarray(jax.nn.log_softmax(lg)), labels[:, g : g + 1], 1)[:, 0]
      for g, lg in enumerate(logits)
  )
  np.testing.assert_allclose(np.asarray(log_prob), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="cannot guide the stage at 32x32"):
    clf.check_stage(32)
  with pytest.raises(ValueError, match=r"labels of shape \(96, 2\).*3 label groups"):
    clf.log_prob_fn(labels[:, :2], schedule)


def test_channel_permutation_trains_only_the_colour_blind_heads():
  """Permuted examples keep their shape/size labels and drop their colour label: with every
  example permuted the loss ignores the colour labels; without permutation it does not."""
  c = shapes_config.get_config("stage=classifier,runlocal")
  model, schedule = classifier_task.build_classifier(c)
  rng = np.random.default_rng(0)
  scenes = [shapes.sample_scene(rng, "train", max_objects=1) for _ in range(8)]
  image = np.stack([shapes.render(s, 16) for s in scenes]).astype(np.float32) / 127.5 - 1
  labels = np.stack([shapes.scene_labels(s) for s in scenes])
  wrong = labels.copy()
  wrong[:, 0] = (wrong[:, 0] + 1) % 6
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(image[:1]), jnp.zeros((1,)))["params"]
  key = jax.random.PRNGKey(3)

  def loss(fraction, lab):
    fn = classifier_task.classifier_loss_fn(model, schedule, fraction)
    return float(fn(params, {"image": jnp.asarray(image), "labels": jnp.asarray(lab)}, key)[0])

  assert loss(0.999999, labels) == pytest.approx(loss(0.999999, wrong), abs=1e-6)
  assert abs(loss(0.0, labels) - loss(0.0, wrong)) > 1e-3
  # The permutation moves channels, keeps pixels' values and the grey background.
  x, on = classifier_task.permute_channels(jax.random.PRNGKey(1), jnp.asarray(image), 0.999999)
  assert bool(np.all(on))
  np.testing.assert_allclose(np.sort(np.asarray(x), -1), np.sort(image, -1))
  assert np.all(np.any(np.asarray(x) != image, axis=(1, 2, 3)))
  c.classifier.permute_channels = 1.0
  with pytest.raises(ValueError, match=r"permute_channels=1.0 must be in \[0, 1\)"):
    classifier_task.permute_fraction(c)
