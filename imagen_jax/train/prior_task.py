"""The `TrainTask` of the unCLIP diffusion prior (`config.task = "prior"`): caption -> CLIP
image embedding (DALL-E 2, Ramesh et al. 2022, §2.1), `models.DiffusionPrior`.

Data: `config.input`'s (image, caption) records, `cond_drop_prob` giving `drop_text`, as the
cascade stages. Outside the gradient (the jitted `preprocess`) two frozen models read them:
the text encoder (`config.text.encoder`: its tokens text_emb [B, L, D], text_mask) and the CLIP
of `config.prior.clip` (`clip.load_clip`: a noise-aware shapes CLIP run directory,
configs/shapes.py:stage=clip, read at its clean log-SNR; or a Hugging Face CLIP directory).
The target is the clean image's CLIP embedding at unit variance per dimension,

  z0 = sqrt(embed_dim) * l2_normalize(CLIP image embedding of the clean image),

so |z0|^2 = embed_dim, the scale of the Gaussian noise it is diffused into; divide a sampled
z0 by sqrt(embed_dim) (or L2-normalise it) for the CLIP's unit embedding.

Each step draws t ~ U[0, 1] per example, z_t = alpha_t z0 + sigma_t eps with the config's
schedule, nulls the text of the dropped rows (`pipeline.null_text`: classifier-free
guidance), and the prior predicts z0 itself (x0 prediction, as the paper's prior:
`config.diffusion.prediction = "x0"`); the loss is the unweighted MSE. Metrics: the loss and
the mean cosine similarity of the predicted and the true z0.

Checked before anything is compiled, each error naming both values: the prior's embed_dim
against the CLIP's projection_dim, its text_dim against the encoder's width, and (a
noise-aware CLIP, which does not resize) `config.input.resolution` against the CLIP's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from imagen_jax import clip as clip_lib
from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax import pipeline as pipeline_lib
from imagen_jax import text as text_lib
from imagen_jax.data import input_pipeline
from imagen_jax.models import prior as prior_lib
from imagen_jax.parallel import sharding as sharding_lib
from imagen_jax.train.task import TrainTask

CLIP_REQUIRED = (
    "config.prior.clip is required: the CLIP run directory (configs/shapes.py:stage=clip, "
    "e.g. --config.prior.clip=/tmp/shapes_clip) or a Hugging Face CLIPModel directory"
)


def build_prior(config: Any):
  """(DiffusionPrior, schedule) of a prior config; ValueError when the model is not a prior
  or the config's prediction is not x0."""
  model = models.get_model(
      config.model.name, config.model.variant, **dict(config.model.get("overrides") or {})
  )
  if not isinstance(model, prior_lib.DiffusionPrior):
    raise ValueError(
        f"config.task='prior' needs a DiffusionPrior model; config.model.name="
        f"{config.model.name!r} is a {type(model).__name__}"
    )
  d = config.diffusion
  if d.get("prediction", "x0") != "x0":
    raise ValueError(
        f"config.diffusion.prediction={d.prediction!r}: the prior predicts the clean "
        "embedding (config.diffusion.prediction='x0')"
    )
  schedule = diffusion.get_schedule(
      d.schedule, log_snr_min=d.get("log_snr_min", -20.0), log_snr_max=d.get("log_snr_max", 20.0)
  )
  return model, schedule


def clip_path(config: Any) -> str:
  """`config.prior.clip`; ValueError (CLIP_REQUIRED) when it is missing or empty."""
  path = (config.get("prior") or {}).get("clip")
  if not path:
    raise ValueError(CLIP_REQUIRED)
  return str(path)


def check_clip(model: Any, clip: Any, resolution: int | None = None, where: str = "") -> None:
  """ValueError unless the CLIP's projection_dim is the prior's embed_dim and (a noise-aware
  CLIP, fixed size) its resolution is the input's."""
  where = f" ({where})" if where else ""
  if int(clip.projection_dim) != int(model.embed_dim):
    raise ValueError(
        f"the prior's embed_dim={model.embed_dim} but the CLIP{where} has projection_dim="
        f"{clip.projection_dim}; set --config.model.overrides.embed_dim={clip.projection_dim}"
    )
  fixed = getattr(clip, "resolution", None)  # NoisyClipModel: no resizing
  if fixed is not None and resolution is not None and int(resolution) != int(fixed):
    raise ValueError(
        f"config.input.resolution={resolution} but the noise-aware CLIP{where} reads "
        f"{fixed}x{fixed} images (no resizing); set --config.input.resolution={fixed}"
    )


def image_embedding_fn(clip: Any):
  """(params, images float [-1, 1]) -> L2-normalised CLIP image embeddings [B, proj]; a
  noise-aware CLIP reads them as clean (its `clean_log_snr`)."""
  if hasattr(clip, "clean_log_snr"):
    return lambda params, images: clip.encode_images_fn(params, images, None)
  return clip.encode_images_fn


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def target_embedding(embedding: jax.Array) -> jax.Array:
  """sqrt(E) * l2_normalize(embedding): the prior's z0, unit variance per dimension."""
  return math.sqrt(embedding.shape[-1]) * _unit(embedding.astype(jnp.float32))


def prior_loss_fn(model: Any, schedule: Any):
  """(params, batch, rng) -> (loss, metrics): x0-prediction MSE on z_t (module docstring).
  batch: z0 [B, E], text_emb [B, L, D], text_mask [B, L], drop_text [B]."""

  def loss_fn(params, batch, rng):
    z0 = batch["z0"]
    t_rng, eps_rng = jax.random.split(rng)
    b = z0.shape[0]
    t = jax.random.uniform(t_rng, (b,))
    alpha, sigma = schedule.alpha_sigma(t)
    z_t = alpha[:, None] * z0 + sigma[:, None] * jax.random.normal(eps_rng, z0.shape)
    emb, mask = pipeline_lib.null_text(batch["text_emb"], batch["text_mask"], batch["drop_text"])
    pred = model.apply({"params": params}, z_t, schedule.log_snr(t), emb, mask, train=True)
    loss = jnp.mean(jnp.square(pred - z0))
    cosine = jnp.mean(jnp.sum(_unit(pred) * _unit(z0), axis=-1))
    return loss, {"loss": loss, "cosine": cosine}

  return loss_fn


def build_prior_task(config: Any, mesh: Mesh, local_batch_size: int) -> TrainTask:
  """The prior's task: `config.input`, the frozen text encoder and CLIP, the prior's loss."""
  del local_batch_size  # the input pipeline derives the batch from the global one
  path = clip_path(config)
  model, schedule = build_prior(config)
  resolution = int(config.input.resolution)
  clip = clip_lib.load_clip(path)
  check_clip(model, clip, resolution, path)
  encoder = text_lib.load_text_encoder(
      config.text.encoder, max_length=config.text.get("max_length"), mesh=mesh
  )
  if int(encoder.dim) != int(model.text_dim):
    raise ValueError(
        f"the text encoder {config.text.encoder!r} gives {encoder.dim}-dim embeddings but the "
        f"prior has text_dim={model.text_dim}; set --config.model.overrides.text_dim="
        f"{encoder.dim}"
    )
  embed_images = image_embedding_fn(clip)
  iterator = input_pipeline.create_input_iterator(
      config.input,
      global_batch_size=int(config.batch_size),
      resolution=resolution,
      seed=int(config.seed),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )

  def host_to_numeric(host: dict) -> dict:
    ids, ids_mask = encoder.tokenize([str(c) for c in host["caption"]])
    return {
        "image": host["image"],
        "drop_text": np.asarray(host["drop_text"], bool),
        "ids": ids,
        "ids_mask": ids_mask,
    }

  def preprocess(frozen: Any, batch: dict) -> dict:
    emb, mask = encoder.encode_fn(frozen["text"], batch["ids"], batch["ids_mask"])
    images = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    z0 = target_embedding(embed_images(frozen["clip"], images))
    return {
        "z0": jax.lax.stop_gradient(z0),
        "text_emb": jax.lax.stop_gradient(emb).astype(jnp.float32),
        "text_mask": mask,
        "drop_text": batch["drop_text"],
    }

  def init_variables(rng):
    length = int(encoder.max_length)
    return model.init(
        rng,
        jnp.zeros((1, model.embed_dim)),
        jnp.zeros((1,)),
        jnp.zeros((1, length, model.text_dim)),
        jnp.ones((1, length), bool),
    )

  frozen = {
      "text": encoder.params,
      "clip": jax.device_put(clip.params, sharding_lib.replicated(mesh)),
  }
  return TrainTask(
      init_variables=init_variables,
      loss_fn=prior_loss_fn(model, schedule),
      iterator=iterator,
      host_to_numeric=host_to_numeric,
      preprocess=preprocess,
      frozen_params=frozen,
  )
