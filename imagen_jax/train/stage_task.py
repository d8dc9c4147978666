"""The `TrainTask` of one cascade stage: stage pipeline + frozen text encoder + input pipeline.

Host side: captions are tokenized, or with `config.text.cache_dir` their embeddings are read
from the `EmbeddingCache` by the input pipeline; device side, in one jitted function outside
the gradient: the frozen encoder (no cache), nulling of the dropped captions (emb zeros, mask
all False) and uint8 -> float32 [-1, 1].

With a cache, the encoder is identified without reading its weights
(`text.describe_encoder`: config.json, tokenizer file, a few MiB of the weight files; or,
when the encoder directory is gone, the cache's own record of that path), the cache is
checked to hold every caption of the data before step 1 (a finite source's captions, each
host checking its 1/P of the records), and the T5 weights are never loaded for training.
Periodic samples (`config.sample_prompts`) and `config.evals` read their captions'
embeddings from the cache too; captions it lacks load the encoder then (once, logged), or,
with no encoder directory, disable the periodic samples (logged) and make `config.evals` an
error before training.

An unCLIP decoder stage (`model.image_embed_dim > 0`) also runs the frozen CLIP of
`config.decoder.clip` (`clip.load_clip`: a project-trained noise-aware CLIP run or a Hugging
Face CLIPModel directory) on each clean image in the preprocess: its conditioning is
sqrt(D) x the L2-normalised image embedding, the scale unCLIP's prior samples
(train/prior_task.py). A decoder has no periodic caption grids (it samples from an
embedding, not a caption).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from imagen_jax import pipeline as pipeline_lib
from imagen_jax import text as text_lib
from imagen_jax.data import input_pipeline
from imagen_jax.parallel import multihost
from imagen_jax.parallel import sharding as sharding_lib
from imagen_jax.text import encoder as encoder_lib
from imagen_jax.train import stage_samples
from imagen_jax.train.task import TrainTask

PRECOMPUTE_SCRIPT = "scripts/precompute_text_embeddings.py"


def dataset_captions(
    input_config: Any, resolution: int | None = None, *, shard_index: int = 0, num_shards: int = 1
) -> list[str] | None:
  """Every caption of the records i = shard_index (mod num_shards) of the stage's input
  (`config.input`), all captions of each record; None for an infinite source (shapes).
  The listing the embedding precompute encodes and the trainer checks."""
  source = input_pipeline.make_source(
      input_config, render_size=int(resolution or input_config.get("resolution") or 64)
  )
  if source.num_records is None:
    return None
  if not hasattr(source, "captions"):
    raise TypeError(f"{source.name}: the source cannot list its captions (no captions(index))")
  out = []
  for i in range(int(shard_index), source.num_records, int(num_shards)):
    out.extend(source.captions(i))
  return out


def precompute_captions(config: Any, shard: int = 0, num_shards: int = 1) -> list[str]:
  """What `scripts/precompute_text_embeddings.py --config` encodes: every caption of the
  records i = shard (mod num_shards), and on shard 0 the config's `sample_prompts`;
  ValueError for an infinite source (shapes), which has no caption list."""
  captions = dataset_captions(config.input, shard_index=shard, num_shards=num_shards)
  if captions is None:
    raise ValueError(
        f"config.input.dataset={config.input.get('dataset')!r} is an infinite procedural "
        "source with no caption list; train it without text.cache_dir (captions are "
        "encoded on the fly) or precompute chosen captions with --captions FILE"
    )
  if shard == 0:
    captions += [str(p) for p in (config.get("sample_prompts") or ())]
  return captions


def precompute_command(config: Any) -> str:
  """The precompute command for this config: the `--config` and overrides this process was
  started with (scripts/train.py's flags), plus the text fields spelled out."""
  config_arg, overrides = "<the stage config file:arg you train with>", {}
  try:
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    if flags.FLAGS.is_parsed() and "config" in flags.FLAGS:
      config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
      overrides = dict(config_flags.get_override_values(flags.FLAGS["config"]))
  except Exception:  # pylint: disable=broad-except  # not started from a config flag
    overrides = {}
  if not overrides:
    for key in ("dataset", "path", "manifest", "annotations", "split", "data_dir"):
      value = config.input.get(key)
      if value not in (None, ""):
        overrides[f"input.{key}"] = value
  for key in ("encoder", "cache_dir", "max_length"):
    if config.text.get(key) is not None:
      overrides[f"text.{key}"] = config.text.get(key)
  parts = ["python", PRECOMPUTE_SCRIPT, f"--config={config_arg}"]
  parts += [f"--config.{k}={v}" for k, v in overrides.items()]
  return " ".join(shlex.quote(p) if "<" not in p else p for p in parts)


class _CacheWithHint:
  """The cache for the input pipeline: a missing caption's KeyError names the fill command."""

  def __init__(self, cache, command: str):
    self.cache, self.command = cache, command

  def get_many(self, captions):
    try:
      return self.cache.get_many(captions)
    except KeyError as e:
      raise KeyError(f"{e.args[0]}; fill it with: {self.command}") from None


def open_cache(config: Any) -> tuple[Any, Any]:
  """(EmbeddingCache, EncoderSpec or None when the encoder directory is missing) for
  `config.text`, without loading the encoder's weights. ValueError (with the fill command)
  when the cache holds nothing for the encoder."""
  cache_dir, name = config.text.cache_dir, config.text.encoder
  max_length = config.text.get("max_length")
  try:
    spec = text_lib.describe_encoder(name, max_length=max_length)
  except FileNotFoundError:
    spec = None
  record = text_lib.EmbeddingCache.resolve(
      # The path alone only stands in for an encoder directory that is gone: a directory
      # whose fingerprint has no record holds other weights, and its path's old record would
      # give stale embeddings.
      cache_dir,
      fingerprint=None if spec is None else spec.fingerprint,
      encoder=name if spec is None else None,
      max_length=spec.max_length if spec else int(max_length or encoder_lib.DEFAULT_MAX_LENGTH),
  )
  if record is None:
    old = text_lib.EmbeddingCache.old_format_dirs(cache_dir)
    note = (
        f" ({len(old)} cache(s) there are in an older layout and are not read: {old[:3]})"
        if old
        else ""
    )
    what = (
        f"config.text.encoder={name!r} is not a directory, and the cache at {cache_dir} "
        f"holds no embeddings recorded for it"
        if spec is None
        else f"the cache at {cache_dir} holds no embeddings of encoder {name!r} "
        f"(fingerprint {spec.fingerprint}, max_length {spec.max_length})"
    )
    raise ValueError(f"{what}{note}; fill it with: {precompute_command(config)}")
  if spec is None:
    logging.warning(
        "text: %s is not a directory; training from the cache at %s with the "
        "embeddings it recorded for that path (identity %s)",
        name,
        cache_dir,
        record["identity"],
    )
  cache = text_lib.EmbeddingCache(
      cache_dir, record["identity"], max_length=int(record["max_length"])
  )
  return cache, spec


def check_cache_covers(config: Any, cache: Any, resolution: int) -> None:
  """ValueError before step 1 unless the cache holds every caption of a finite input."""
  captions = dataset_captions(
      config.input, resolution, shard_index=jax.process_index(), num_shards=jax.process_count()
  )
  if captions is None:
    logging.warning(
        "text: the input %r is infinite; the cache at %s is checked batch by batch",
        config.input.get("dataset"),
        config.text.cache_dir,
    )
    return
  unique = list(dict.fromkeys(captions))
  num_missing = int((~cache.contains(unique)).sum()) if unique else 0
  num_missing, total = multihost.sum_over_processes([num_missing, len(unique)])
  if num_missing:
    raise ValueError(
        f"{num_missing} of {total} captions are not in the cache at {config.text.cache_dir} "
        f"(encoder {config.text.encoder!r}, identity {cache.identity}); fill it with: "
        f"{precompute_command(config)}"
    )
  logging.info("text: all %d captions of the input are in the cache %s", total, cache.root)


class _Text:
  """Caption conditioning: the cache's embeddings, else the encoder (loaded on first need
  when a cache is used)."""

  def __init__(self, config: Any, mesh: Mesh, cache=None, encoder=None, can_load=True):
    self.config, self.mesh, self.cache = config, mesh, cache
    self._encoder, self.can_load = encoder, can_load

  def cached(self, captions) -> bool:
    return self.cache is not None and bool(np.all(self.cache.contains(list(captions))))

  def encoder(self, why: str):
    if self._encoder is None:
      if not self.can_load:
        raise ValueError(
            f"{why}, and config.text.encoder={self.config.text.encoder!r} is "
            "not a directory to encode them with"
        )
      logging.warning("text: %s; loading the encoder %s", why, self.config.text.encoder)
      self._encoder = text_lib.load_text_encoder(
          self.config.text.encoder, max_length=self.config.text.get("max_length"), mesh=self.mesh
      )
    return self._encoder


def _to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def decoder_clip(config: Any, pipe: Any):
  """The frozen CLIP of a decoder stage (`config.decoder.clip`), checked against the stage:
  ValueError naming the values when it is missing, of another width or resolution."""
  from imagen_jax import clip as clip_lib  # pylint: disable=import-outside-toplevel

  path = str((config.get("decoder") or {}).get("clip") or "")
  if not path:
    raise ValueError(
        f"config.model {config.model.name} is an unCLIP decoder (image_embed_dim="
        f"{pipe.image_embed_dim}): config.decoder.clip is required, the CLIP whose image "
        "embeddings condition it (a configs/shapes.py:stage=clip run, or a Hugging Face "
        "CLIPModel directory)"
    )
  clip = clip_lib.load_clip(path)
  if int(clip.projection_dim) != pipe.image_embed_dim:
    raise ValueError(
        f"config.decoder.clip={path!r} gives {clip.projection_dim}-dim image embeddings but "
        f"the decoder takes image_embed_dim={pipe.image_embed_dim}"
    )
  if hasattr(clip, "check_stage"):
    clip.check_stage(pipe.resolution, f"the decoder stage ({config.model.name})")
  return clip


def image_embedding(clip: Any, clip_params: Any, images: jax.Array) -> jax.Array:
  """A decoder's conditioning of images in [-1, 1]: sqrt(D) x CLIP's unit embedding."""
  z = clip.encode_images_fn(clip_params, images)
  return jax.lax.stop_gradient(z.astype(jnp.float32)) * math.sqrt(z.shape[-1])


def build_stage_task(config: Any, mesh: Mesh, local_batch_size: int) -> TrainTask:
  """Checks the text cache (before any compile) and wires the stage's pieces; the config
  itself was validated by `config_check` (resolutions included)."""
  del local_batch_size  # the input pipeline derives it from the global batch
  pipe = pipeline_lib.StagePipeline.from_config(config)
  clip = decoder_clip(config, pipe) if pipe.image_embed_dim else None
  if clip is not None and config.get("evals"):
    raise ValueError(
        f"config.evals={list(config.evals)}: an unCLIP decoder samples from image "
        "embeddings, not captions; evaluate it through the prior (sampling/unclip.py)"
    )

  cache = encoder = None
  if config.text.get("cache_dir"):
    cache, spec = open_cache(config)
    dim, max_length, source = cache.dim, cache.max_length, cache.root
    if dim is None:
      raise ValueError(
          f"the cache at {cache.root} has no meta.json; fill it with: "
          f"{precompute_command(config)}"
      )
    if dim != pipe.model.text_dim:
      raise ValueError(
          f"The text cache {source} holds {dim}-dim embeddings (encoder "
          f"{config.text.encoder!r}) but the model expects "
          f"text_dim={pipe.model.text_dim}."
      )
    check_cache_covers(config, cache, pipe.resolution)
    text = _Text(config, mesh, cache=cache, can_load=spec is not None)
    if config.get("evals") and spec is None and not pipe.is_super_resolution:
      raise ValueError(
          f"config.evals={list(config.evals)} samples captions that need not be "
          f"in the cache, but config.text.encoder={config.text.encoder!r} is not "
          "a directory to encode them with; restore it or drop config.evals"
      )
  else:
    encoder = text_lib.load_text_encoder(
        config.text.encoder, max_length=config.text.get("max_length"), mesh=mesh
    )
    if encoder.dim != pipe.model.text_dim:
      raise ValueError(
          f"The text encoder {config.text.encoder!r} gives {encoder.dim}-dim "
          f"embeddings but the model expects text_dim={pipe.model.text_dim}."
      )
    max_length = encoder.max_length
    text = _Text(config, mesh, encoder=encoder)

  iterator = input_pipeline.create_input_iterator(
      config.input,
      global_batch_size=int(config.batch_size),
      resolution=pipe.resolution,
      lowres_resolution=pipe.lowres_resolution,
      seed=int(config.seed),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      text_cache=None if cache is None else _CacheWithHint(cache, precompute_command(config)),
  )

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

  def preprocess(frozen: Any, batch: dict) -> dict:
    enc_params = frozen["text"] if clip is not None else frozen
    if "text_emb" in batch:
      emb, mask = batch["text_emb"], batch["text_mask"]
    else:
      emb, mask = encoder.encode_fn(enc_params, batch["ids"], batch["ids_mask"])
    out = {
        "image": _to_float(batch["image"]),
        "drop_text": batch["drop_text"],
        "text_emb": jax.lax.stop_gradient(emb).astype(jnp.float32),
        "text_mask": mask,
    }
    if "lowres" in batch:
      out["lowres"] = _to_float(batch["lowres"])
    if clip is not None:
      out["image_embed"] = image_embedding(clip, frozen["clip"], out["image"])
    return out

  frozen = None if encoder is None else encoder.params
  if clip is not None:
    frozen = {"text": frozen, "clip": jax.device_put(clip.params, sharding_lib.replicated(mesh))}
  captioned = not (pipe.is_super_resolution or clip is not None)
  sample_fn = stage_samples.CaptionSampler(config, pipe, text, mesh) if captioned else None
  grid_fn = None
  if pipe.is_super_resolution and clip is None and config.get("sample_every_steps"):
    grid_fn = stage_samples.LowresGrid(
        config, pipe, text, mesh, *stage_samples.fixed_lowres_inputs(config, pipe)
    )
  return TrainTask(
      init_variables=lambda rng: pipe.init(rng, batch_size=1, text_len=max_length),
      loss_fn=pipe.loss_fn,
      iterator=iterator,
      host_to_numeric=host_to_numeric,
      preprocess=preprocess,
      frozen_params=frozen,
      sample_fn=sample_fn,
      sample_prompts=stage_samples.grid_prompts(config, pipe, text) if captioned else [],
      grid_fn=grid_fn,
  )
