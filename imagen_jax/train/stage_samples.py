"""A stage's periodic sample grids (and the samples `config.evals` score).

* Base stages: `CaptionSampler` draws `config.sample_prompts` with `config.sampling`.
* Super-resolution stages: `LowresGrid` upsamples a fixed set of low-res inputs with their
  captions, the same inputs at every grid. They are `GRID_SIZE` records of the stage's own
  data read once at the start, downsampled as the input pipeline does (`StagePreprocess`): on
  the shapes world its held-out split (colour/shape pairs training never shows), else the
  first records of `config.input`. The grid shows each low-res input (nearest-upscaled)
  beside its sample.

Both run one jitted program, built on first use, that compiles once per batch size.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from imagen_jax.data import input_pipeline
from imagen_jax.data import preprocess as preprocess_lib
from imagen_jax.parallel import multihost
from imagen_jax.parallel import sharding as sharding_lib

GRID_SIZE = 8  # low-res inputs of an SR stage's grid


def sample_images(config: Any, pipe: Any, emb, mask, params, rng, lowres=None):
  """uint8 samples of `pipe` with `config.sampling` (SR stages: from `lowres` in [-1, 1])."""
  s = config.sampling
  images = pipe.sample(
      params,
      emb,
      mask,
      rng,
      sampler=s.sampler,
      num_steps=int(s.num_steps),
      guidance_scale=float(s.guidance_scale),
      threshold=s.threshold,
      percentile=float(s.percentile),
      lowres=lowres,
      aug_level=float(s.get("aug_level", 0.0)),
  )
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class CaptionSampler:
  """(params, captions, rng) -> uint8 images with `config.sampling`: the stage's one sampler,
  for the periodic grids and the evaluators (base stages: an SR stage needs a low-res input).

  Cached embeddings when the cache has every caption, else the encoder (`text.encoder`,
  loaded on first need). Each of the two jitted programs is built once and compiles once
  per batch size.
  """

  def __init__(self, config, pipe, text, mesh):
    self.config, self.pipe, self.text = config, pipe, text
    self._rep = sharding_lib.replicated(mesh)
    self._from_emb = self._from_ids = None

  def __call__(self, params, captions, rng, lowres=None):
    captions = [str(c) for c in captions]
    # One decision for all processes: hosts whose cache views differ (opened while a
    # precompute still writes) must not take different programs (a collective deadlock).
    if not multihost.any_process(not self.text.cached(captions)):
      emb, mask = self.text.cache.get_many(captions)
      if self._from_emb is None:
        self._from_emb = jax.jit(
            lambda params, emb, mask, rng, lowres: sample_images(
                self.config, self.pipe, emb, mask, params, rng, lowres
            ),
            out_shardings=self._rep,
        )
      emb, mask, lowres = jax.device_put((emb, mask, lowres), self._rep)
      return self._from_emb(params, emb, mask, rng, lowres)
    enc = self.text.encoder(f"{len(captions)} captions to sample are not all in the text cache")
    if self._from_ids is None:

      def from_ids(params, enc_params, ids, ids_mask, rng, lowres):
        emb, mask = enc.encode_fn(enc_params, ids, ids_mask)
        return sample_images(self.config, self.pipe, emb, mask, params, rng, lowres)

      self._from_ids = jax.jit(from_ids, out_shardings=self._rep)
    ids, ids_mask = enc.tokenize(captions)
    ids, ids_mask, lowres = jax.device_put(
        (np.asarray(ids), np.asarray(ids_mask), lowres), self._rep
    )
    return self._from_ids(params, enc.params, ids, ids_mask, rng, lowres)


def grid_prompts(config: Any, pipe: Any, text: Any) -> list[str]:
  """`config.sample_prompts` for the periodic grids (base stages; none when a cache lacks
  them and there is no encoder to encode them with)."""
  prompts = [str(p) for p in (config.get("sample_prompts") or ())]
  if not prompts or pipe.is_super_resolution:
    return []
  if text.cache is not None and not text.can_load and not text.cached(prompts):
    logging.warning(
        "text: config.sample_prompts are not all in the cache %s and the "
        "encoder %s is not a directory: no periodic samples (precompute from "
        "the config caches them)",
        text.cache.root,
        text.config.text.encoder,
    )
    return []
  return prompts


def fixed_lowres_inputs(config: Any, pipe: Any, num: int = GRID_SIZE):
  """(captions, uint8 low-res images [num, l, l, 3]): an SR stage's grid inputs (module
  docstring), the same on every call and every host."""
  input_config = config.input
  resolution = int(pipe.resolution)
  if input_config.get("dataset", "shapes") == "shapes":
    from imagen_jax.data import sources  # pylint: disable=import-outside-toplevel

    source = sources.ShapesSource(
        resolution, "heldout", int(input_config.get("max_objects", 1) or 1)
    )
  else:
    source = input_pipeline.make_source(input_config, render_size=resolution)
  if source.num_records is not None:
    num = min(num, int(source.num_records))
  stage = preprocess_lib.StagePreprocess(
      resolution=resolution,
      lowres_resolution=int(pipe.lowres_resolution),
      resize_method=input_config.get("resize_method", "area"),
  )
  captions, lowres = [], []
  for i in range(num):
    rng = np.random.default_rng([int(config.seed), 7919, i])
    image, caption, *_ = source.read(i, rng)
    lowres.append(stage(np.asarray(image), rng)["lowres"])
    captions.append(str(caption))
  return captions, np.stack(lowres)


class LowresGrid:
  """(params, rng) -> uint8 [2N, H, W, 3]: each fixed low-res input (nearest-upscaled to
  the stage's resolution) followed by its sample."""

  def __init__(self, config, pipe, text, mesh, captions, lowres):
    self.captions, self.lowres = list(captions), np.asarray(lowres, np.uint8)
    self._sampler = CaptionSampler(config, pipe, text, mesh)
    self._factor = int(pipe.resolution) // self.lowres.shape[1]

  def __call__(self, params, rng):
    lowres = self.lowres.astype(np.float32) / 127.5 - 1.0
    samples = np.asarray(jax.device_get(self._sampler(params, self.captions, rng, lowres)))
    up = np.repeat(np.repeat(self.lowres, self._factor, 1), self._factor, 2)
    if up.shape[1:3] != samples.shape[1:3]:  # resolution not a multiple of the low-res side
      size = (samples.shape[2], samples.shape[1])
      up = np.stack([np.asarray(Image.fromarray(u).resize(size, Image.NEAREST)) for u in up])
    return np.stack([x for pair in zip(up, samples) for x in pair])
