"""The `TrainTask` of a noise-aware CLIP (`config.task = "clip"`): GLIDE's noised CLIP, the
guide of CLIP guidance at every noise level.

Each step draws t ~ U[0, 1] per example, noises the clean image with the config's schedule,
x_t = alpha_t x0 + sigma_t eps, and trains `models.NoisyClip` with a symmetric InfoNCE loss
between the image embeddings of (x_t, log_snr(t)) and the text embeddings of the captions
(byte ids, `models.noisy_clip.byte_ids`). The shapes world's captions can repeat inside a
batch, and two examples with the same caption are positives of each other, not negatives:
the targets are multi-positive, row i's target distribution is uniform over the examples
whose caption equals caption i (`multi_positive_info_nce`).

Metrics: the loss, the logit scale, and the image -> text retrieval top-1 accuracy (the
best-scoring caption of the batch is right when it equals the image's own) over the batch
and over its low-noise half (log-SNR > 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax.data import input_pipeline
from imagen_jax.models import noisy_clip
from imagen_jax.train.task import TrainTask


def build_clip(config: Any):
  """(NoisyClip, schedule) of a clip config; ValueError when the model is not a CLIP."""
  model = models.get_model(
      config.model.name, config.model.variant, **dict(config.model.get("overrides") or {})
  )
  if not isinstance(model, noisy_clip.NoisyClip):
    raise ValueError(
        f"config.task='clip' needs a NoisyClip model; config.model.name="
        f"{config.model.name!r} is a {type(model).__name__}"
    )
  d = config.diffusion
  schedule = diffusion.get_schedule(
      d.schedule, log_snr_min=d.get("log_snr_min", -20.0), log_snr_max=d.get("log_snr_max", 20.0)
  )
  return model, schedule


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def same_caption(ids: jax.Array) -> jax.Array:
  """bool [B, B]: rows i, j hold identical token ids (the same caption)."""
  return jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)


def multi_positive_info_nce(image_emb, text_emb, same, scale):
  """(loss, logits [B, B]) of the symmetric InfoNCE with multi-positive targets.

  image_emb, text_emb: L2-normalised [B, D]; same: bool [B, B], True where captions i and j
  are equal (a symmetric relation with a true diagonal); scale: the logit scale.
  logits[i, j] = scale * <image_i, text_j>. Image -> text: row i's target is uniform over
  {j : same[i, j]}; text -> image likewise over columns; the loss is their mean.
  """
  logits = scale * jnp.einsum("id,jd->ij", image_emb, text_emb)
  targets = same.astype(jnp.float32)
  targets = targets / jnp.sum(targets, axis=1, keepdims=True)
  i2t = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  t2i = -jnp.sum(targets * jax.nn.log_softmax(logits.T, axis=1), axis=1)
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i)), logits


def retrieval_hits(logits, same) -> jax.Array:
  """bool [B]: image i's best-scoring caption of the batch equals its own."""
  best = jnp.argmax(logits, axis=1)
  return jnp.take_along_axis(same, best[:, None], axis=1)[:, 0]


def clip_loss_fn(model: Any, schedule: Any):
  """(params, batch, rng) -> (loss, metrics) on noised images (module docstring)."""

  def loss_fn(params, batch, rng):
    x0, ids, mask = batch["image"], batch["ids"], batch["ids_mask"]
    t_rng, eps_rng, drop_rng = jax.random.split(rng, 3)
    b = x0.shape[0]
    t = jax.random.uniform(t_rng, (b,))
    alpha, sigma = schedule.alpha_sigma(t)
    eps = jax.random.normal(eps_rng, x0.shape)
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    log_snr = schedule.log_snr(t)
    image, text, scale = model.apply(
        {"params": params}, x_t, log_snr, ids, mask, train=True, rngs={"dropout": drop_rng}
    )
    same = same_caption(ids)
    loss, logits = multi_positive_info_nce(l2_normalize(image), l2_normalize(text), same, scale)
    hits = retrieval_hits(logits, same)
    low_noise = log_snr > 0
    metrics = {
        "loss": loss,
        "logit_scale": scale,
        "retrieval/top1": jnp.mean(hits),
        "retrieval/top1_low_noise": jnp.sum(hits & low_noise) / jnp.maximum(jnp.sum(low_noise), 1),
    }
    return loss, metrics

  return loss_fn


def build_clip_task(config: Any, mesh: Mesh, local_batch_size: int) -> TrainTask:
  """The noise-aware CLIP's task: the shapes input's (image, caption), the model, its loss."""
  del mesh, local_batch_size  # the input pipeline derives the batch from the global one
  if config.input.get("dataset", "shapes") != "shapes":
    raise ValueError(
        "config.task='clip' trains on the shapes world's captions: config.input.dataset="
        f"'shapes' (given {config.input.get('dataset')!r})"
    )
  model, schedule = build_clip(config)
  r, length = int(model.resolution), int(model.max_length)
  iterator = input_pipeline.create_input_iterator(
      config.input,
      global_batch_size=int(config.batch_size),
      resolution=r,
      seed=int(config.seed),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )

  def host_to_numeric(host: dict) -> dict:
    ids, mask = noisy_clip.byte_ids([str(c) for c in host["caption"]], length)
    return {"image": host["image"], "ids": ids, "ids_mask": mask}

  def preprocess(frozen: Any, batch: dict) -> dict:
    del frozen
    return {
        "image": batch["image"].astype(jnp.float32) / 127.5 - 1.0,
        "ids": batch["ids"],
        "ids_mask": batch["ids_mask"],
    }

  def init_variables(rng):
    return model.init(
        rng,
        jnp.zeros((1, r, r, model.in_channels)),
        jnp.zeros((1,)),
        jnp.asarray(np.full((1, length), noisy_clip.EOS_ID, np.int32)),
    )

  return TrainTask(
      init_variables=init_variables,
      loss_fn=clip_loss_fn(model, schedule),
      iterator=iterator,
      host_to_numeric=host_to_numeric,
      preprocess=preprocess,
  )
