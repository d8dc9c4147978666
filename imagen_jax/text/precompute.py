"""Encodes captions once into an `EmbeddingCache` (scripts/precompute_text_embeddings.py).

`fill_cache(captions, encoder, cache_dir, ...)` encodes every caption the cache does not
hold yet (duplicates and cached captions are skipped, so a rerun resumes), in jitted
batches sharded over all local devices (params FSDP-sharded with `shard_params`), and
writes them at their true length under `cache_dir/<encoder identity>/` (local or gs://),
which the trainer reads with `imagen_jax.text.EmbeddingCache`.

Splitting the work over hosts: each process passes its `shard` of `num_shards`. Either the
caption list is already this process's share (a stage config's records r = shard mod N),
or `shard_missing=True` takes every N-th missing caption. Processes write concurrently;
one process compacts the index at the end (`compact`, default: when `num_shards` is 1).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
import tqdm
from absl import logging

from imagen_jax.storage import paths
from imagen_jax.text import cache as cache_lib
from imagen_jax.text import encoder as encoder_lib

DEFAULT_ENCODER = "byt5-tiny-random"


def read_captions(path: str, field: str) -> list[str]:
  """Captions from a .txt (one per line) or .jsonl file, in file order."""
  p = pathlib.PurePosixPath(str(path))
  lines = paths.path(path).read_text(encoding="utf-8").splitlines()
  if p.suffix in (".jsonl", ".json"):
    out = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      record = json.loads(line)
      if field not in record:
        raise KeyError(f"{path}:{i + 1}: no field {field!r} in {record}")
      out.append(str(record[field]))
    return out
  return lines


def resolve_settings(
    text_config: Any = None,
    *,
    encoder: str | None = None,
    max_length: int | None = None,
    cache_dir: str | None = None,
) -> tuple[str, int | None, str]:
  """(encoder, max_length, cache_dir): the given values, else the stage config's `text`
  group; ValueError when neither names a cache directory."""
  encoder = encoder or (text_config.encoder if text_config else DEFAULT_ENCODER)
  max_length = max_length or (text_config.get("max_length") if text_config else None)
  cache_dir = cache_dir or (text_config.get("cache_dir") if text_config else None)
  if not cache_dir:
    raise ValueError("no cache directory: give --cache_dir or --config.text.cache_dir")
  return encoder, max_length, cache_dir


def fill_cache(
    captions: Sequence[str],
    encoder_name: str,
    cache_dir: str,
    *,
    max_length: int | None = None,
    dtype: str = "float32",
    storage_dtype: str = "bfloat16",
    batch_size: int = 256,
    write_every: int = 8192,
    shard_params: bool = True,
    shard: int = 0,
    num_shards: int = 1,
    shard_missing: bool = False,
    compact: bool | None = None,
) -> cache_lib.EmbeddingCache:
  """Encodes the missing captions into the cache (printing progress); returns the cache."""
  devices = jax.local_devices()
  mesh = None
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  encoder = encoder_lib.load_text_encoder(
      encoder_name,
      max_length=max_length,
      dtype=dtype,
      mesh=mesh,
      param_axis="data" if shard_params else None,
      batch_axes=("data",),
  )
  cache = cache_lib.EmbeddingCache.for_encoder(cache_dir, encoder, storage_dtype=storage_dtype)
  todo = cache.missing(captions)
  if shard_missing:
    todo = todo[shard::num_shards]
  logging.info(
      "%s: %d captions, %d unique to encode (shard %d/%d) into %s",
      encoder,
      len(captions),
      len(todo),
      shard,
      num_shards,
      cache.root,
  )
  print(
      f"encoder {encoder.identity}: {len(captions)} captions, "
      f"{len(todo)} to encode (max_length {encoder.max_length}, shard {shard}/"
      f"{num_shards})",
      flush=True,
  )
  batch = max(1, batch_size)
  pending_caps, pending_emb, pending_mask = [], [], []
  truncated_before = encoder.num_truncated

  def flush():
    if pending_caps:
      cache.put(pending_caps, np.concatenate(pending_emb), np.concatenate(pending_mask))
      pending_caps.clear()
      pending_emb.clear()
      pending_mask.clear()

  with tqdm.tqdm(
      total=len(todo), unit="caption", disable=os.environ.get("TQDM_DISABLE") == "1"
  ) as bar:
    for start in range(0, len(todo), batch):
      chunk = todo[start : start + batch]
      emb, mask = encoder.encode(chunk)
      pending_caps.extend(chunk)
      pending_emb.append(np.asarray(jax.device_get(emb)))
      pending_mask.append(np.asarray(jax.device_get(mask)))
      if len(pending_caps) >= write_every:
        flush()
      bar.update(len(chunk))
  flush()
  compact = compact if compact is not None else num_shards == 1
  if compact:
    cache.compact()
  truncated = encoder.num_truncated - truncated_before
  print(
      f"done: {len(cache)} captions cached in {cache.root} ({truncated} of "
      f"{len(todo)} truncated to {encoder.max_length} tokens)"
      + ("" if compact else "; index not compacted: rerun with --compact once all shards are done"),
      flush=True,
  )
  return cache
