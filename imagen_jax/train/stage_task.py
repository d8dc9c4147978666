"""The `TrainTask` of one cascade stage: stage pipeline + frozen text encoder + input pipeline.

Host side: captions are tokenized (or embeddings read from the cache by the input pipeline);
device side, in one jitted function outside the gradient: the frozen encoder, nulling of the
dropped captions (emb zeros, mask all False) and uint8 -> float32 [-1, 1].
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from imagen_jax import pipeline as pipeline_lib
from imagen_jax import text as text_lib
from imagen_jax.data import input_pipeline
from imagen_jax.parallel import sharding as sharding_lib
from imagen_jax.train import loop


def _to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def build_stage_task(config: Any, mesh: Mesh, local_batch_size: int) -> loop.TrainTask:
  """Validates shapes (before any compile) and wires the stage's pieces together."""
  del local_batch_size  # the input pipeline derives it from the global batch
  pipe = pipeline_lib.StagePipeline.from_config(config)
  loop.check_resolutions(pipe.resolution, config.input.get("resolution"),
                         pipe.lowres_resolution, config.input.get("lowres_resolution"))
  if pipe.lowres_resolution is None and config.input.get("lowres_resolution"):
    raise ValueError(f"config.input.lowres_resolution={config.input.lowres_resolution} but "
                     f"the model {config.model.name!r} is not a super-resolution stage.")

  encoder = text_lib.load_text_encoder(config.text.encoder,
                                       max_length=config.text.get("max_length"), mesh=mesh)
  if encoder.dim != pipe.model.text_dim:
    raise ValueError(f"The text encoder {config.text.encoder!r} gives {encoder.dim}-dim "
                     f"embeddings but the model expects text_dim={pipe.model.text_dim}.")
  cache = None
  if config.text.get("cache_dir"):
    cache = text_lib.EmbeddingCache(config.text.cache_dir, encoder.identity)

  iterator = input_pipeline.create_input_iterator(
      config.input, global_batch_size=int(config.batch_size), resolution=pipe.resolution,
      lowres_resolution=pipe.lowres_resolution, seed=int(config.seed),
      process_index=jax.process_index(), process_count=jax.process_count(),
      text_cache=cache)

  def host_to_numeric(host: dict) -> dict:
    out = {"image": host["image"], "drop_text": np.asarray(host["drop_text"], bool)}
    if pipe.is_super_resolution:
      out["lowres"] = host["lowres"]
    if "text_emb" in host:
      out["text_emb"] = np.asarray(host["text_emb"], np.float32)
      out["text_mask"] = np.asarray(host["text_mask"], bool)
    else:
      out["ids"], out["ids_mask"] = encoder.tokenize([str(c) for c in host["caption"]])
    return out

  def preprocess(enc_params: Any, batch: dict) -> dict:
    if "text_emb" in batch:
      emb, mask = batch["text_emb"], batch["text_mask"]
    else:
      emb, mask = encoder.encode_fn(enc_params, batch["ids"], batch["ids_mask"])
    emb, mask = pipeline_lib.null_text(jax.lax.stop_gradient(emb), mask, batch["drop_text"])
    out = {"image": _to_float(batch["image"]), "text_emb": emb.astype(jnp.float32),
           "text_mask": mask}
    if "lowres" in batch:
      out["lowres"] = _to_float(batch["lowres"])
    return out

  return loop.TrainTask(
      init_variables=lambda rng: pipe.init(rng, batch_size=1, text_len=encoder.max_length),
      loss_fn=pipe.loss_fn, iterator=iterator, host_to_numeric=host_to_numeric,
      preprocess=preprocess, frozen_params=encoder.params,
      sample_fn=_make_sample_fn(config, pipe, encoder, mesh),
      caption_sample_fn=_make_caption_sample_fn(config, pipe, encoder, mesh))


def _text_to_image(config: Any, pipe: Any, encoder: Any, mesh: Mesh):
  """Jitted (params, enc_params, ids, ids_mask, rng) -> uint8 images with `config.sampling`."""
  s = config.sampling

  def sample(params, enc_params, ids, ids_mask, rng):
    emb, mask = encoder.encode_fn(enc_params, ids, ids_mask)
    images = pipe.sample(params, emb, mask, rng, sampler=s.sampler, num_steps=int(s.num_steps),
                         guidance_scale=float(s.guidance_scale), threshold=s.threshold,
                         percentile=float(s.percentile))
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

  return jax.jit(sample, out_shardings=sharding_lib.replicated(mesh))


def _make_sample_fn(config: Any, pipe: Any, encoder: Any, mesh: Mesh):
  """EMA samples for `config.sample_prompts` (base stages; SR stages need a low-res input,
  which periodic sampling does not have, so they get none)."""
  prompts = [str(p) for p in (config.get("sample_prompts") or ())]
  if not prompts or pipe.is_super_resolution:
    return None
  ids, ids_mask = encoder.tokenize(prompts)
  jitted = _text_to_image(config, pipe, encoder, mesh)
  return lambda params, rng: jitted(params, encoder.params, ids, ids_mask, rng)


def _make_caption_sample_fn(config: Any, pipe: Any, encoder: Any, mesh: Mesh):
  """(ema_params, captions, seed) -> uint8 samples with `config.sampling`, for `config.evals`
  (base stages only: an SR stage needs a low-res input)."""
  if pipe.is_super_resolution:
    return None
  jitted = _text_to_image(config, pipe, encoder, mesh)
  rep = sharding_lib.replicated(mesh)

  def caption_sample(params, captions, seed):
    ids, ids_mask = encoder.tokenize([str(c) for c in captions])
    ids, ids_mask = jax.device_put((np.asarray(ids), np.asarray(ids_mask)), rep)
    out = jitted(params, encoder.params, ids, ids_mask, jax.random.PRNGKey(seed))
    return np.asarray(jax.device_get(out))

  return caption_sample
