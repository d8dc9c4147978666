"""Guide models for sampling: a trained noise-aware classifier as `log_prob_fn(x_t, t)`.

`load_classifier(workdir)` rebuilds a classifier trained with `config.task="classifier"`
(configs/shapes.py:stage=classifier) from its checkpoint; `Classifier.log_prob_fn(labels,
schedule)` is log p(y | x_t) = sum over label groups g of log softmax(logits_g)[y_g] for
`diffusion.classifier_guidance`, with the stage's `schedule` mapping t to the log-SNR the
classifier reads (so a classifier guides any stage whose resolution it matches).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax.core import meta

from imagen_jax.sampling import cascade
from imagen_jax.train import classifier_task


@dataclasses.dataclass
class Classifier:
  model: Any
  params: Any
  config: Any
  step: int

  @property
  def resolution(self) -> int:
    return int(self.model.resolution)

  def check_stage(self, resolution: int, what: str = "the stage") -> None:
    if int(resolution) != self.resolution:
      raise ValueError(
          f"the classifier ({self.config.model.name}, {self.resolution}x{self.resolution}) "
          f"cannot guide {what} at {resolution}x{resolution}: the resolutions must match"
      )

  def log_prob_fn(self, labels, schedule, weights: Sequence[float] | None = None):
    """(x_t, t) -> [B] log p(y | x_t); `labels` int [B, groups], `weights` per group
    (None: all 1, the joint log-probability of independent heads)."""
    labels = jnp.asarray(labels, jnp.int32)
    groups = len(self.model.num_classes)
    if labels.ndim != 2 or labels.shape[1] != groups:
      raise ValueError(
          f"labels of shape {tuple(labels.shape)}; the classifier has {groups} label groups "
          f"(expected [B, {groups}])"
      )
    w = [1.0] * groups if weights is None else [float(v) for v in weights]
    if len(w) != groups:
      raise ValueError(f"weights={tuple(w)}: expected {groups} (one per label group)")

    def log_prob(x_t, t):
      logits = self.model.apply({"params": self.params}, x_t, schedule.log_snr(t))
      total = 0.0
      for g, lg in enumerate(logits):
        lp = jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1)
        total = total + w[g] * jnp.take_along_axis(lp, labels[:, g : g + 1], axis=-1)[:, 0]
      return total

    return log_prob


def load_classifier(workdir: str, *, step: int | None = None, use_ema: bool = True):
  """The classifier trained in `workdir` (EMA params by default)."""
  models = []

  def abstract(config):
    if config.get("task") != "classifier":
      raise ValueError(
          f"{workdir!r} holds a config.task={config.get('task', 'diffusion')!r} run, not a "
          "classifier (config.task='classifier')"
      )
    model, _ = classifier_task.build_classifier(config)
    models.append(model)
    r = int(model.resolution)
    return jax.eval_shape(
        lambda: meta.unbox(
            model.init(jax.random.PRNGKey(0), jnp.zeros((1, r, r, 3)), jnp.zeros((1,)))["params"]
        )
    )

  config, params, step = cascade.restore_run(
      workdir,
      abstract,
      step=step,
      use_ema=use_ema,
      train_hint="train the classifier first (--config configs/shapes.py:stage=classifier)",
  )
  return Classifier(models[0], params, config, step)
