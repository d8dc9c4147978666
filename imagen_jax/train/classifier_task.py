"""The `TrainTask` of a noise-aware classifier (`config.task = "classifier"`), the guide of
classifier guidance (Dhariwal & Nichol 2021).

Each step draws t ~ U[0, 1] per example, noises the clean image with the config's schedule,
x_t = alpha_t x0 + sigma_t eps, and trains `models.NoisyClassifier` on (x_t, log_snr(t)) to
predict the record's labels: the cross-entropy summed over the label groups (the shapes
world's colour, shape, size and place of a scene's first object, `config.input.labels =
True`; a label the scene does not state, UNSTATED, is left out of its group's loss).
The network sees log-SNR, not t, so a classifier trained under one schedule guides a stage
sampled under another. Metrics: the loss, the accuracy of each group, and the accuracy of
all groups at once on the low-noise half (log-SNR > 0) of the batch.

`config.classifier.permute_channels = f` permutes the RGB channels of a share f of each batch
and trains only the colour-invariant heads (shape, size, place) on those (`classifier_loss_fn`): colour-jitter
augmentation that keeps the shape head from reading shape off colour.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax.data import input_pipeline
from imagen_jax.data import shapes_world
from imagen_jax.train.task import TrainTask


def build_classifier(config: Any):
  """(NoisyClassifier, schedule) of a classifier config; ValueError when the model's heads
  do not match the data's label groups."""
  model = models.get_model(
      config.model.name, config.model.variant, **dict(config.model.get("overrides") or {})
  )
  if not hasattr(model, "num_classes"):
    raise ValueError(
        f"config.task='classifier' needs a classifier model; config.model.name="
        f"{config.model.name!r} is a {type(model).__name__}"
    )
  check_label_groups(model, f"config.model {config.model.name}/{config.model.variant}")
  d = config.diffusion
  schedule = diffusion.get_schedule(
      d.schedule, log_snr_min=d.get("log_snr_min", -20.0), log_snr_max=d.get("log_snr_max", 20.0)
  )
  return model, schedule


def check_label_groups(model: Any, what: str) -> None:
  """ValueError unless the model's heads are the shapes world's label groups."""
  expected = tuple(len(classes) for _, classes in shapes_world.LABEL_GROUPS)
  got = tuple(int(n) for n in model.num_classes)
  if got != expected:
    names = ", ".join(f"{n} ({len(c)})" for n, c in shapes_world.LABEL_GROUPS)
    raise ValueError(
        f"{what} has heads of {got} classes; the shapes world's label groups are {names}"
    )


# The five RGB channel permutations other than the identity.
_PERMUTATIONS = np.array(list(itertools.permutations(range(3)))[1:], np.int32)


def permute_channels(rng, x0, fraction: float):
  """(x0 with a random non-identity RGB channel permutation on a `fraction` of the
  examples, the [B] bool mask of those). The background is grey, so it stays; an object's
  colour becomes (near) another palette colour, its shape, size and place do not change."""
  b = x0.shape[0]
  which_rng, on_rng = jax.random.split(rng)
  which = jax.random.randint(which_rng, (b,), 0, len(_PERMUTATIONS))
  on = jax.random.uniform(on_rng, (b,)) < fraction
  perm = jnp.asarray(_PERMUTATIONS)[which]
  permuted = jnp.take_along_axis(x0, perm[:, None, None, :], axis=-1)
  return jnp.where(on[:, None, None, None], permuted, x0), on


def classifier_loss_fn(model: Any, schedule: Any, permute_fraction: float = 0.0):
  """(params, batch, rng) -> (loss, metrics) on noised images (module docstring).

  `permute_fraction` > 0: that share of each batch has its RGB channels permuted
  (`permute_channels`) and trains only the colour-invariant heads (shape, size, place), not the
  colour head. Without it the shape head learns the training split's colour -> shape
  shortcut (each colour misses one shape): a 2500-step classifier put 0.02 of held-out
  pairs' shapes right at low noise, against 1.00 on training pairs."""
  colour = [name for name, _ in shapes_world.LABEL_GROUPS].index("colour")

  def loss_fn(params, batch, rng):
    x0, labels = batch["image"], batch["labels"]
    t_rng, eps_rng, drop_rng, perm_rng = jax.random.split(rng, 4)
    b = x0.shape[0]
    keep = jnp.ones((b,), bool)
    if permute_fraction > 0:
      x0, permuted = permute_channels(perm_rng, x0, permute_fraction)
      keep = ~permuted
    t = jax.random.uniform(t_rng, (b,))
    alpha, sigma = schedule.alpha_sigma(t)
    eps = jax.random.normal(eps_rng, x0.shape)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    log_snr = schedule.log_snr(t)
    logits = model.apply({"params": params}, x_t, log_snr, train=True, rngs={"dropout": drop_rng})
    metrics, loss, all_right = {}, 0.0, jnp.ones((b,), bool)
    for g, (name, _) in enumerate(shapes_world.LABEL_GROUPS):
      y = labels[:, g]
      stated = y >= 0  # UNSTATED (a place the scene does not state) trains nothing
      ce = optax.softmax_cross_entropy_with_integer_labels(logits[g], jnp.maximum(y, 0))
      right = jnp.argmax(logits[g], -1) == y
      w = stated & keep if g == colour else stated  # permuted colours have no label
      loss = loss + jnp.sum(jnp.where(w, ce, 0.0)) / jnp.maximum(jnp.sum(w), 1)
      metrics[f"accuracy/{name}"] = jnp.sum(right & w) / jnp.maximum(jnp.sum(w), 1)
      all_right = all_right & (right | ~stated)
    low_noise = (log_snr > 0) & keep
    metrics["accuracy/all_low_noise"] = jnp.sum(all_right & low_noise) / jnp.maximum(
        jnp.sum(low_noise), 1
    )
    metrics["loss"] = loss
    return loss, metrics

  return loss_fn


def permute_fraction(config: Any) -> float:
  """`config.classifier.permute_channels` (0: off); ValueError outside [0, 1)."""
  value = float(config.get("classifier", {}).get("permute_channels", 0.0))
  if not 0.0 <= value < 1.0:
    raise ValueError(
        f"config.classifier.permute_channels={value} must be in [0, 1): the share of each "
        "batch trained colour-blind (the colour head needs the rest)"
    )
  return value


def build_classifier_task(config: Any, mesh: Mesh, local_batch_size: int) -> TrainTask:
  """The classifier's task: the shapes input with labels, the model, its loss."""
  del mesh, local_batch_size  # the input pipeline derives the batch from the global one
  if config.input.get("dataset", "shapes") != "shapes" or not config.input.get("labels"):
    raise ValueError(
        "config.task='classifier' trains on labelled records: config.input.dataset='shapes' "
        f"with config.input.labels=True (given dataset={config.input.get('dataset')!r}, "
        f"labels={config.input.get('labels')!r})"
    )
  model, schedule = build_classifier(config)
  r = int(model.resolution)
  iterator = input_pipeline.create_input_iterator(
      config.input,
      global_batch_size=int(config.batch_size),
      resolution=r,
      seed=int(config.seed),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )

  def host_to_numeric(host: dict) -> dict:
    return {"image": host["image"], "labels": np.asarray(host["labels"], np.int32)}

  def preprocess(frozen: Any, batch: dict) -> dict:
    del frozen
    return {"image": batch["image"].astype(jnp.float32) / 127.5 - 1.0, "labels": batch["labels"]}

  def init_variables(rng):
    return model.init(rng, jnp.zeros((1, r, r, model.in_channels)), jnp.zeros((1,)))

  return TrainTask(
      init_variables=init_variables,
      loss_fn=classifier_loss_fn(model, schedule, permute_fraction(config)),
      iterator=iterator,
      host_to_numeric=host_to_numeric,
      preprocess=preprocess,
  )
