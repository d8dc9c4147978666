r"""Encodes a dataset's captions once and stores them in an EmbeddingCache.

From the stage config the trainer uses (its `input` source, `text.encoder`,
`text.max_length` and `text.cache_dir`; flags override the last three):

  python scripts/precompute_text_embeddings.py --config configs/base64.py:variant=small \
      --config.text.encoder=/ckpts/t5-v1_1-xxl --config.text.cache_dir=gs://BUCKET/t5_cache

Every caption of every record is encoded (COCO: all 5 per image), and the config's
`sample_prompts` too, so periodic samples need no encoder either. The shapes world is
infinite and has no caption list: train it without a cache (the built-in encoder is
cheap) or give --captions.

From a caption file instead: a text file (one caption per line) or JSONL (one object per
line, caption under --field):

  python scripts/precompute_text_embeddings.py --captions captions.jsonl \
      --encoder /ckpts/t5-v1_1-xxl --cache_dir /data/t5_cache --max_length 128

Duplicates and captions already in the cache are skipped, so re-running resumes.
Batches are jitted and sharded over all local devices (params FSDP-sharded with
--shard_params); a progress bar shows captions/s. Embeddings are stored at their true
length in bfloat16 under CACHE_DIR/<encoder identity>/ (local or gs://), which the
trainer reads with `imagen_jax.text.EmbeddingCache` (see its docstring for the layout).

To split the work over hosts (or runs), every process gets --num_shards N --shard_index i
(default: jax.process_count() / jax.process_index()); with a config, process i encodes
the records r = i (mod N); with --captions, every N-th missing caption. Processes write
concurrently. A single process compacts the index at the end (--compact); after a
multi-process run, run the same command once more on one host with --compact (nothing is
left to encode; it only merges the index).
"""

import json
import os
import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config (path[:arg]): captions from its input source.",
    lock_config=True)
_CAPTIONS = flags.DEFINE_string("captions", None,
                                "Text file (one caption per line) or .jsonl.")
_FIELD = flags.DEFINE_string("field", "caption", "JSONL key of the caption.")
_ENCODER = flags.DEFINE_string(
    "encoder", None, "Built-in name or checkpoint directory (default: the config's "
    "text.encoder, else byt5-tiny-random).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "Embedding cache root (default: the config's text.cache_dir).")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Tokens per caption (default: the config's text.max_length, else "
    "the encoder's).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of the encoder's matmuls.")
_STORAGE = flags.DEFINE_enum("storage_dtype", "bfloat16",
                             ["bfloat16", "float32"], "Stored dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per jitted batch.")
_WRITE_EVERY = flags.DEFINE_integer("write_every", 8192,
                                    "Captions per cache data file.")
_SHARD_PARAMS = flags.DEFINE_bool(
    "shard_params", True, "FSDP-shard params over the local devices.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None,
                                   "Split work N ways (default: jax.process_count()).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", None,
                                    "This process's share (default: jax.process_index()).")
_COMPACT = flags.DEFINE_bool(
    "compact", None, "Merge the index at the end (default: when --num_shards is 1).")


def read_captions(path: str, field: str) -> list[str]:
  """Captions from a .txt (one per line) or .jsonl file, in file order."""
  from imagen_jax.storage import paths  # pylint: disable=import-outside-toplevel
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


def _settings(config):
  """(encoder, max_length, cache_dir) from the flags, else the config."""
  text_cfg = config.text if config is not None else None
  encoder = _ENCODER.value or (text_cfg.encoder if text_cfg else "byt5-tiny-random")
  max_length = _MAX_LENGTH.value or (text_cfg.get("max_length") if text_cfg else None)
  cache_dir = _CACHE_DIR.value or (text_cfg.get("cache_dir") if text_cfg else None)
  if not cache_dir:
    raise app.UsageError("no cache directory: give --cache_dir or --config.text.cache_dir")
  return encoder, max_length, cache_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if (config is None) == (_CAPTIONS.value is None):
    raise app.UsageError("give exactly one of --config (captions from the stage's input) "
                         "and --captions FILE")
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel

  from imagen_jax import text  # pylint: disable=import-outside-toplevel
  from imagen_jax.parallel import multihost  # pylint: disable=import-outside-toplevel
  # Where JAX finds the cluster itself (a TPU pod through the launcher, GKE, srun, mpirun),
  # the process count and index that --num_shards/--shard_index default to are the job's.
  multihost.initialize()

  num_shards = _NUM_SHARDS.value or jax.process_count()
  shard = jax.process_index() if _SHARD_INDEX.value is None else _SHARD_INDEX.value
  if not 0 <= shard < num_shards:
    raise app.UsageError(f"--shard_index={shard} not in [0, {num_shards})")
  encoder_name, max_length, cache_dir = _settings(config)

  if config is not None:
    from imagen_jax.train import stage_task  # pylint: disable=import-outside-toplevel
    captions = stage_task.dataset_captions(config.input, shard_index=shard,
                                           num_shards=num_shards)
    if captions is None:
      raise app.UsageError(
          f"config.input.dataset={config.input.get('dataset')!r} is an infinite procedural "
          "source with no caption list; train it without text.cache_dir (captions are "
          "encoded on the fly) or precompute chosen captions with --captions FILE")
    if shard == 0:
      captions += [str(p) for p in (config.get("sample_prompts") or ())]
  else:
    captions = read_captions(_CAPTIONS.value, _FIELD.value)

  devices = jax.local_devices()
  mesh = None
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  encoder = text.load_text_encoder(
      encoder_name, max_length=max_length, dtype=_DTYPE.value,
      mesh=mesh, param_axis="data" if _SHARD_PARAMS.value else None,
      batch_axes=("data",))
  cache = text.EmbeddingCache.for_encoder(cache_dir, encoder, storage_dtype=_STORAGE.value)
  todo = cache.missing(captions)
  if config is None:
    todo = todo[shard::num_shards]
  logging.info("%s: %d captions, %d unique to encode (shard %d/%d) into %s",
               encoder, len(captions), len(todo), shard, num_shards, cache.root)
  print(f"encoder {encoder.identity}: {len(captions)} captions, "
        f"{len(todo)} to encode (max_length {encoder.max_length}, shard {shard}/"
        f"{num_shards})", flush=True)
  batch = max(1, _BATCH.value)
  pending_caps, pending_emb, pending_mask = [], [], []
  truncated_before = encoder.num_truncated

  def flush():
    if pending_caps:
      cache.put(pending_caps, np.concatenate(pending_emb),
                np.concatenate(pending_mask))
      pending_caps.clear()
      pending_emb.clear()
      pending_mask.clear()

  with tqdm.tqdm(total=len(todo), unit="caption",
                 disable=os.environ.get("TQDM_DISABLE") == "1") as bar:
    for start in range(0, len(todo), batch):
      chunk = todo[start:start + batch]
      emb, mask = encoder.encode(chunk)
      pending_caps.extend(chunk)
      pending_emb.append(np.asarray(jax.device_get(emb)))
      pending_mask.append(np.asarray(jax.device_get(mask)))
      if len(pending_caps) >= _WRITE_EVERY.value:
        flush()
      bar.update(len(chunk))
  flush()
  compact = _COMPACT.value if _COMPACT.value is not None else num_shards == 1
  if compact:
    cache.compact()
  truncated = encoder.num_truncated - truncated_before
  print(f"done: {len(cache)} captions cached in {cache.root} ({truncated} of "
        f"{len(todo)} truncated to {encoder.max_length} tokens)"
        + ("" if compact else "; index not compacted: rerun with --compact once all "
           "shards are done"), flush=True)


if __name__ == "__main__":
  app.run(main)
