"""Guide models for sampling: a trained noise-aware classifier as `log_prob_fn(x_t, t)`.

`load_classifier(workdir)` rebuilds a classifier trained with `config.task="classifier"`
(configs/shapes.py:stage=classifier) from its checkpoint; `Classifier.log_prob_fn(labels,
schedule)` is log p(y | x_t) = sum over label groups g of log softmax(logits_g)[y_g] for
`diffusion.classifier_guidance`, with the stage's `schedule` mapping t to the log-SNR the
classifier reads (so a classifier guides any stage whose resolution it matches).

`ClassifierGuide(classifier)` is the same guide for a cascade's base stage
(`CascadeSampler.sample(..., guide=, guide_scale=)`): it reads each prompt's labels
(`shapes.caption_labels`, the first-named object) on the host, and `steer(params, labels,
scale)` is the pure `(denoise_fn, schedule, prediction) -> denoise_fn` the jitted sampler
applies after classifier-free guidance. `min_log_snr` guides only the steps whose log-SNR is
at least that (None: every step): at high noise a weak classifier's gradient is mostly noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import diffusion
from imagen_jax.data import shapes_world
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

  def log_prob_fn(self, labels, schedule, weights: Sequence[float] | None = None, params=None):
    """(x_t, t) -> [B] log p(y | x_t); `labels` int [B, groups] (a label < 0, UNSTATED,
    leaves its group out of that example's sum), `weights` per group
    (None: all 1, the joint log-probability of independent heads); `params` (None: the
    loaded ones) lets a jitted caller pass them as an argument rather than a constant."""
    params = self.params if params is None else params
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
      logits = self.model.apply({"params": params}, x_t, schedule.log_snr(t))
      total = 0.0
      for g, lg in enumerate(logits):
        lp = jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1)
        y = labels[:, g : g + 1]
        picked = jnp.take_along_axis(lp, jnp.maximum(y, 0), axis=-1)[:, 0]
        total = total + w[g] * jnp.where(y[:, 0] >= 0, picked, 0.0)  # UNSTATED: no term
      return total

    return log_prob


@dataclasses.dataclass(eq=False)  # hashed by identity: a jitted sampler's cache key
class ClassifierGuide:
  """Classifier guidance of a cascade's base stage; labels from the prompts (module
  docstring)."""

  classifier: Classifier
  weights: Sequence[float] | None = None
  min_log_snr: float | None = None
  name: str = "classifier"
  # "x_t": log p(y | x_t) at the step's log-SNR (Dhariwal & Nichol); "x0": log p(y | x0_hat)
  # of the denoiser's clipped x0 estimate at the least noisy time, the gradient through the
  # U-Net (a U-Net backward pass per step; `diffusion.similarity_guidance(on="x0")`).
  on: str = "x_t"

  def __post_init__(self):
    if self.on not in diffusion.GUIDE_ON:
      raise ValueError(f"on={self.on!r}; allowed: {', '.join(diffusion.GUIDE_ON)}")

  @property
  def resolution(self) -> int:
    return self.classifier.resolution

  @property
  def params(self):
    return self.classifier.params

  def check_stage(self, resolution: int, what: str = "the stage") -> None:
    self.classifier.check_stage(resolution, what)

  def conditions(self, prompts: Sequence[str]) -> np.ndarray:
    """int32 [N, groups]: each prompt's labels; ValueError naming a prompt without any."""
    return np.stack([shapes_world.caption_labels(p) for p in prompts])

  def steer(self, params, labels, scale):
    """(denoise_fn, schedule, prediction) -> the classifier-guided denoise_fn."""

    def apply(denoise_fn, schedule, prediction):
      fn = self.classifier.log_prob_fn(labels, schedule, self.weights, params=params)
      kw = dict(schedule=schedule, prediction=prediction)
      if self.on == "x0":

        def clean(x0, t):
          return fn(jnp.clip(x0, -1.0, 1.0), jnp.zeros_like(t))

        guided_with = lambda s: diffusion.similarity_guidance(
            denoise_fn, clean, scale=s, on="x0", **kw
        )
      else:
        guided_with = lambda s: diffusion.classifier_guidance(denoise_fn, fn, scale=s, **kw)
      return _gated(guided_with, scale, schedule, self.min_log_snr)

    return apply


@dataclasses.dataclass(eq=False)  # hashed by identity: a jitted sampler's cache key
class ClipGuide:
  """CLIP (semantic) guidance of a cascade's base stage by a noise-aware CLIP
  (`clip.load_clip(workdir)` of a configs/shapes.py:stage=clip run): the similarity is the
  cosine between the CLIP embedding of x_t at the step's log-SNR and the prompt's text
  embedding, evaluated on x_t (`diffusion.similarity_guidance(on="x_t")`, GLIDE's noised
  CLIP), so a step costs the CLIP's backward pass, not the U-Net's."""

  clip: Any
  min_log_snr: float | None = None
  name: str = "clip"

  @property
  def resolution(self) -> int:
    return int(self.clip.resolution)

  @property
  def params(self):
    return self.clip.params

  def check_stage(self, resolution: int, what: str = "the stage") -> None:
    self.clip.check_stage(resolution, what)

  def conditions(self, prompts: Sequence[str]) -> np.ndarray:
    """float32 [N, proj]: the prompts' L2-normalised text embeddings (a prompt longer than
    the text tower takes is a ValueError naming it)."""
    return np.asarray(self.clip.encode_texts(list(prompts)), np.float32)

  def steer(self, params, text_emb, scale):
    """(denoise_fn, schedule, prediction) -> the CLIP-guided denoise_fn."""

    def apply(denoise_fn, schedule, prediction):
      def similarity(x_t, t):
        image = self.clip.encode_images_fn(params, x_t, schedule.log_snr(t))
        return jnp.sum(image * text_emb, axis=-1)

      return _gated(
          lambda s: diffusion.similarity_guidance(
              denoise_fn, similarity, scale=s, schedule=schedule, prediction=prediction, on="x_t"
          ),
          scale,
          schedule,
          self.min_log_snr,
      )

    return apply


def _gated(guided_with, scale, schedule, min_log_snr):
  """guided_with(scale) with the scale zeroed per example on steps whose log-SNR is below
  `min_log_snr` (None: the plain guided_with(scale))."""
  if min_log_snr is None:
    return guided_with(scale)

  def gated(x_t, t):
    on = schedule.log_snr(t) >= float(min_log_snr)
    return guided_with(jnp.where(on, scale, 0.0))(x_t, t)

  return gated


def load_classifier(workdir: str, *, step: int | None = None, use_ema: bool = True):
  """The classifier trained in `workdir` (EMA params by default)."""
  (model, _), config, params, step = cascade.restore_task_run(
      workdir,
      "classifier",
      classifier_task.build_classifier,
      lambda m: (jnp.zeros((1, int(m.resolution), int(m.resolution), 3)), jnp.zeros((1,))),
      not_what="a classifier (config.task='classifier')",
      step=step,
      use_ema=use_ema,
      train_hint="train the classifier first (--config configs/shapes.py:stage=classifier)",
  )
  return Classifier(model, params, config, step)
