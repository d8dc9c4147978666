"""`NoisyClipModel`: a noise-aware CLIP trained by this project (`config.task = "clip"`,
configs/shapes.py:stage=clip), read back from its workdir by `load_clip(workdir)`.

It has `ClipModel`'s interface where that makes sense, plus the noise level: the image
tower reads x_t with its log-SNR (GLIDE's noised CLIP), so every image function takes
`log_snr` ([B], a scalar, or None: clean images, the training schedule's largest log-SNR,
`clean_log_snr`). Images are uint8 [B, R, R, 3] or float in [-1, 1] at the model's
`resolution` (no resizing: a guide reads the stage's own x_t); captions are the model's
byte ids (`models.noisy_clip.byte_ids`), and one longer than the text tower takes is a
ValueError naming it.

  m.image_features_fn(params, pixel_values [-1, 1], log_snr) -> [B, proj]
  m.text_features_fn(params, input_ids, mask=None)           -> [B, proj]
  m.preprocess_fn(images)                                    -> [-1, 1] float32
  m.encode_images_fn(params, images, log_snr=None)           -> L2-normalised
  m.encode_ids_fn(params, input_ids, mask=None)              -> L2-normalised
  m.similarity_fn(texts, schedule) -> (x_t, t) -> [B]: the cosine similarity between the
    image embedding of x_t at schedule.log_snr(t) and each caption's (one caption, or one
    per example), the `similarity_fn` of `diffusion.similarity_guidance(..., on="x_t")`.

The methods without `_fn` close over `m.params` and are jitted; `check_stage(resolution)`
refuses a stage of another resolution, like `sampling.guides.Classifier.check_stage`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.models import noisy_clip
from imagen_jax.sampling import cascade
from imagen_jax.train import clip_task


def _l2_normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass(eq=False)  # hashed by identity, like the guides
class NoisyClipModel:
  """A project-trained noise-aware CLIP: `model` (NoisyClip), `params`, the training
  `config`, its checkpoint `step` and training `schedule` (module docstring)."""

  model: Any
  params: Any
  config: Any
  step: int
  schedule: Any
  directory: str = ""

  def __post_init__(self):
    self._clean_log_snr = float(jax.device_get(self.schedule.log_snr(jnp.zeros((1,))))[0])
    self._jit_image = jax.jit(self.image_features_fn)
    self._jit_text = jax.jit(self.text_features_fn)
    self._jit_encode_images = jax.jit(self.encode_images_fn)

  # -- properties ---------------------------------------------------------------------------
  @property
  def resolution(self) -> int:
    return int(self.model.resolution)

  @property
  def image_size(self) -> int:
    return self.resolution

  @property
  def projection_dim(self) -> int:
    return int(self.model.projection_dim)

  @property
  def max_length(self) -> int:
    return int(self.model.max_length)

  @property
  def logit_scale(self) -> float:
    """The log of the similarity scale (clamped at log logit_scale_max), as
    `ClipModel.logit_scale`: logits are ``exp(logit_scale) * cosine``."""
    return min(float(self.params["logit_scale"]), math.log(float(self.model.logit_scale_max)))

  @property
  def clean_log_snr(self) -> float:
    """The log-SNR of a clean image: the training schedule's at t = 0."""
    return self._clean_log_snr

  def check_stage(self, resolution: int, what: str = "the stage") -> None:
    if int(resolution) != self.resolution:
      raise ValueError(
          f"the noise-aware CLIP ({self.config.model.name}, {self.resolution}x"
          f"{self.resolution}) cannot guide {what} at {resolution}x{resolution}: the "
          "resolutions must match"
      )

  # -- pure functions -----------------------------------------------------------------------
  def _log_snr(self, log_snr, batch: int):
    if log_snr is None:
      log_snr = self.clean_log_snr
    return jnp.broadcast_to(jnp.asarray(log_snr, jnp.float32), (batch,))

  def image_features_fn(self, params, pixel_values, log_snr=None):
    """pixel_values float [B, R, R, 3] in [-1, 1] (or x_t) -> projected features."""
    x = self.preprocess_fn(pixel_values)
    return self.model.apply(
        {"params": params}, x, self._log_snr(log_snr, x.shape[0]), method="image_features"
    )

  def text_features_fn(self, params, input_ids, mask=None):
    return self.model.apply({"params": params}, input_ids, mask, method="text_features")

  def preprocess_fn(self, images):
    """uint8 -> [-1, 1] float32; float images pass through. ValueError on another size."""
    images = jnp.asarray(images)
    r = self.resolution
    if images.ndim != 4 or tuple(images.shape[1:]) != (r, r, int(self.model.in_channels)):
      raise ValueError(
          f"images of shape {tuple(images.shape)}: the noise-aware CLIP takes "
          f"[B, {r}, {r}, {self.model.in_channels}] (its resolution {r}; no resizing)"
      )
    if images.dtype == jnp.uint8:
      return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)

  def encode_images_fn(self, params, images, log_snr=None):
    return _l2_normalize(self.image_features_fn(params, images, log_snr))

  def encode_ids_fn(self, params, input_ids, mask=None):
    return _l2_normalize(self.text_features_fn(params, input_ids, mask))

  # -- bound, jitted ------------------------------------------------------------------------
  def image_features(self, pixel_values, log_snr=None) -> jax.Array:
    return self._jit_image(self.params, pixel_values, log_snr)

  def text_features(self, input_ids, mask=None) -> jax.Array:
    return self._jit_text(self.params, input_ids, mask)

  def encode_images(self, images, log_snr=None) -> jax.Array:
    """uint8 or [-1, 1] images (at log_snr; None: clean) -> L2-normalised [B, proj]."""
    return self._jit_encode_images(self.params, images, log_snr)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return noisy_clip.byte_ids(list(texts), self.max_length)

  def encode_texts(self, texts: Sequence[str]) -> jax.Array:
    """Captions -> L2-normalised text embeddings [N, proj]; a caption longer than the text
    tower takes is a ValueError naming it."""
    ids, mask = self.tokenize(texts)
    return _l2_normalize(self.text_features(ids, mask))

  def similarity_fn(self, texts: Sequence[str], schedule, params=None):
    """(x_t, t) -> [B] cosine similarity of x_t's embedding at schedule.log_snr(t) to the
    captions' (one caption for all, or one per example); `params` (None: the loaded ones)
    lets a jitted caller pass them as an argument."""
    params = self.params if params is None else params
    text = self.encode_texts(texts)

    def similarity(x_t, t):
      t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_t.shape[0],))
      image = self.encode_images_fn(params, x_t, schedule.log_snr(t))
      return jnp.sum(image * text, axis=-1)

    return similarity


def load_noisy_clip(workdir, *, step: int | None = None, use_ema: bool = True):
  """The noise-aware CLIP trained in `workdir` (EMA params by default); ValueError for a
  run of another task (a diffusion stage, a classifier)."""
  (model, schedule), config, params, step = cascade.restore_task_run(
      workdir,
      "clip",
      clip_task.build_clip,
      lambda m: (
          jnp.zeros((1, int(m.resolution), int(m.resolution), m.in_channels)),
          jnp.zeros((1,)),
          jnp.full((1, int(m.max_length)), noisy_clip.EOS_ID, jnp.int32),
      ),
      not_what="a noise-aware CLIP (config.task='clip'); load_clip reads a Hugging Face "
      "CLIPModel directory or a clip workdir",
      step=step,
      use_ema=use_ema,
      train_hint="train the noise-aware CLIP first (--config configs/shapes.py:stage=clip)",
  )
  return NoisyClipModel(model, params, config, step, schedule, str(workdir))
