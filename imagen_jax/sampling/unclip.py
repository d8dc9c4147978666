"""Sampling the unCLIP diffusion prior (`config.task = "prior"`, train/prior_task.py):
captions -> CLIP image embeddings.

  prior = load_prior(workdir)                      # the run's EMA params, model, schedule
  sampler = PriorSampler(prior)                    # + the run's frozen text encoder
  z = sampler.sample(captions, guidance_scale=2.0, num_steps=64, sampler="ddpm", seed=0)

`sample` returns z0 [B, embed_dim] float32 in the scale the prior was trained in: the CLIP
embedding times sqrt(embed_dim) (unit variance per dimension, |z0| ~ sqrt(embed_dim)); so
z0 / sqrt(embed_dim) is (close to) the CLIP's unit image embedding, and `normalize=True`
returns l2_normalize(z0), comparable by dot product with the CLIP's `encode_texts` /
`encode_images` of `prior.config.prior.clip`.

The decoder (configs/shapes.py:stage=decoder) turns an embedding into an image:
`CascadeSampler([decoder, sr...]).sample(captions, image_embed=z)`; `embed_images(clip,
images)` gives the embeddings of given images for variations.

`diffusion.sample` runs over the [B, E] embeddings with `prediction="x0"` and no
thresholding: static / dynamic thresholding clip x0 to [-1, 1], which suits pixels, not
unit-variance embedding coordinates (a typical |z0_i| is ~1, the largest ~3). Classifier-
free guidance batches the conditional and the null-text rows in one forward pass
(`pipeline.null_text`) and combines them with `diffusion.cfg`, as `StagePipeline.denoise_fn`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import diffusion
from imagen_jax import pipeline as pipeline_lib
from imagen_jax import text as text_lib
from imagen_jax.sampling import cascade
from imagen_jax.train import prior_task


@dataclasses.dataclass(eq=False)
class Prior:
  """A trained prior: `model` (DiffusionPrior), `params`, the run's `config`, checkpoint
  `step`, training `schedule` and `directory`."""

  model: Any
  params: Any
  config: Any
  step: int
  schedule: Any
  directory: str = ""

  @property
  def embed_dim(self) -> int:
    return int(self.model.embed_dim)

  @property
  def clip_path(self) -> str:
    """The CLIP directory the prior was trained on (`config.prior.clip`)."""
    return str(self.config.prior.clip)


def load_prior(workdir, *, step: int | None = None, use_ema: bool = True) -> Prior:
  """The prior trained in `workdir` (EMA params by default); ValueError for a run of another
  task."""
  (model, schedule), config, params, step = cascade.restore_task_run(
      workdir,
      "prior",
      prior_task.build_prior,
      lambda m: (
          jnp.zeros((1, int(m.embed_dim))),
          jnp.zeros((1,)),
          jnp.zeros((1, 1, int(m.text_dim))),
          jnp.ones((1, 1), bool),
      ),
      not_what="a diffusion prior (config.task='prior', configs/shapes.py:stage=prior)",
      step=step,
      use_ema=use_ema,
      train_hint="train the prior first (--config configs/shapes.py:stage=prior)",
  )
  return Prior(model, params, config, step, schedule, str(workdir))


def prior_denoise_fn(model, params, schedule, text_emb, text_mask, guidance_scale=1.0):
  """`denoise_fn(z_t, t) -> z0_hat` for `diffusion.sample(prediction="x0")`, with
  classifier-free guidance unless `guidance_scale` is a Python 1."""
  apply = lambda z, t, emb, mask: model.apply({"params": params}, z, schedule.log_snr(t), emb, mask)
  if not pipeline_lib.is_guided(guidance_scale):
    return lambda z_t, t: apply(z_t, t, text_emb, text_mask)
  null_emb, null_mask = pipeline_lib.null_text(text_emb, text_mask, True)
  emb2 = jnp.concatenate([text_emb, null_emb])
  mask2 = jnp.concatenate([text_mask, null_mask])

  def guided(z_t, t):
    pred = apply(jnp.concatenate([z_t, z_t]), jnp.concatenate([t, t]), emb2, mask2)
    cond, uncond = jnp.split(pred, 2)
    return diffusion.cfg(cond, uncond, guidance_scale)

  return guided


class PriorSampler:
  """Captions -> sampled CLIP image embeddings of a trained prior (module docstring).

  `encoder`: the run's text encoder (None: loaded from `prior.config.text`); its width must
  be the prior's text_dim. One jitted program per (sampler, num_steps, guided), compiled
  once per batch size; a traced guidance scale serves every scale > 0 but 1.
  """

  def __init__(self, prior: Prior, encoder: Any = None):
    self.prior = prior
    if encoder is None:
      t = prior.config.text
      encoder = text_lib.load_text_encoder(t.encoder, max_length=t.get("max_length"))
    if int(encoder.dim) != int(prior.model.text_dim):
      raise ValueError(
          f"the text encoder {getattr(encoder, 'source', '')!r} gives {encoder.dim}-dim "
          f"embeddings but the prior has text_dim={prior.model.text_dim}"
      )
    self.encoder = encoder
    self._programs = {}

  def _program(self, sampler: str, num_steps: int, guided: bool):
    key = (sampler, num_steps, guided)
    if key in self._programs:
      return self._programs[key]
    prior = self.prior

    def run(params, emb, mask, rng, scale):
      fn = prior_denoise_fn(
          prior.model, params, prior.schedule, emb, mask, scale if guided else 1.0
      )
      return diffusion.sample(
          fn,
          (emb.shape[0], prior.embed_dim),
          rng,
          schedule=prior.schedule,
          sampler=sampler,
          num_steps=num_steps,
          prediction="x0",
          threshold="none",
      )

    self._programs[key] = jax.jit(run)
    return self._programs[key]

  def sample(
      self,
      captions: Sequence[str],
      *,
      guidance_scale: float | None = None,
      num_steps: int | None = None,
      sampler: str | None = None,
      seed: int = 0,
      normalize: bool = False,
  ) -> np.ndarray:
    """z0 [len(captions), embed_dim] float32: sqrt(embed_dim) x the CLIP embedding scale
    (`normalize=True`: L2-normalised). None: the run's `config.sampling` value."""
    s = self.prior.config.get("sampling") or {}
    guidance_scale = float(
        s.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale
    )
    num_steps = int(s.get("num_steps", 64) if num_steps is None else num_steps)
    sampler = str(s.get("sampler", "ddpm") if sampler is None else sampler)
    guided = pipeline_lib.is_guided(guidance_scale)  # raises for a negative scale
    captions = [str(c) for c in captions]
    if not captions:
      return np.zeros((0, self.prior.embed_dim), np.float32)
    emb, mask = self.encoder.encode(captions)
    rng = jax.random.PRNGKey(int(seed))
    scale = jax.device_put(np.float32(guidance_scale))
    z = self._program(sampler, num_steps, guided)(self.prior.params, emb, mask, rng, scale)
    z = np.asarray(jax.device_get(z), np.float32)
    if normalize:
      z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z

  @property
  def scale(self) -> float:
    """sqrt(embed_dim): the factor between a sampled z0 and the CLIP's unit embedding."""
    return math.sqrt(self.prior.embed_dim)


def embed_images(clip: Any, images) -> np.ndarray:
  """Image variations' input: the decoder's conditioning of given images, [N, D] float32 =
  sqrt(D) x the CLIP's unit image embedding (`clip.encode_images`: uint8 or [-1, 1] images
  at the CLIP's size), the scale a decoder trains on (train/stage_task.py) and a prior
  samples in. Decode it with `CascadeSampler.sample(prompts, image_embed=...)` (an empty
  prompt: the embedding alone)."""
  z = np.asarray(jax.device_get(clip.encode_images(images)), np.float32)
  return z * math.sqrt(z.shape[-1])


def decoder_embeddings(
    decoder_stage: Any,
    prompts: Sequence[str],
    *,
    prior_workdir: str | None = None,
    variation_image: str | None = None,
    clip: Any = None,
    guidance_scale: float | None = None,
    num_steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
) -> np.ndarray:
  """What an unCLIP decoder stage 0 decodes for `prompts`, [len(prompts), D]: the prior's
  samples (`prior_workdir`, with its sampling settings), or the embedding of the image file
  `variation_image` for every prompt (image variations) by `clip`, the decoder's own CLIP
  (`clip.load_clip(decoder_stage.config.decoder.clip)`, loaded by the caller: sampling does
  not import the clip package, which imports it). Exactly one of the two; ValueError naming
  what is wrong."""
  from imagen_jax.sampling import edit as edit_lib  # pylint: disable=import-outside-toplevel

  dim = int(decoder_stage.pipeline.image_embed_dim)
  where = getattr(decoder_stage, "workdir", "stage 0")
  if not dim:
    raise ValueError(f"{where} is not an unCLIP decoder (image_embed_dim=0): no embedding")
  if (prior_workdir is None) == (variation_image is None):
    raise ValueError(
        f"{where} is an unCLIP decoder: give a prior (captions -> embeddings) or an image "
        "to make variations of, exactly one"
    )
  if prior_workdir is not None:
    prior = PriorSampler(load_prior(prior_workdir))
    if prior.prior.embed_dim != dim:
      raise ValueError(
          f"the prior {prior_workdir} samples {prior.prior.embed_dim}-dim embeddings but the "
          f"decoder {where} takes image_embed_dim={dim}"
      )
    return prior.sample(
        list(prompts),
        guidance_scale=guidance_scale,
        num_steps=num_steps,
        sampler=sampler,
        seed=seed,
    )
  if clip is None:
    raise ValueError(
        f"variations of {variation_image!r}: pass clip=load_clip({decoder_stage.config.decoder.clip!r}),"
        " the decoder's CLIP"
    )
  size = int(getattr(clip, "resolution", None) or clip.image_size)
  image = edit_lib.load_image(variation_image, size, resize=True)
  z = embed_images(clip, image[None])
  return np.repeat(z, len(prompts), axis=0)
