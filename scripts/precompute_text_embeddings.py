r"""Encodes a dataset's captions once and stores them in an EmbeddingCache.

  python scripts/precompute_text_embeddings.py --captions captions.jsonl \
      --encoder /ckpts/t5-v1_1-xxl --cache_dir /data/t5_cache --max_length 256

Captions come from a text file (one caption per line) or JSONL (one object per
line, caption under --field). Duplicates and captions already in the cache are
skipped, so re-running resumes. Batches are jitted and sharded over all local
devices (params FSDP-sharded with --shard_params); a progress bar shows
captions/s. Embeddings are stored at their true length in bfloat16 under
CACHE_DIR/<encoder identity>/, which the data pipeline reads with
`imagen_jax.text.EmbeddingCache(cache_dir, identity).get_many(captions)`.

To split the work over hosts (or runs), give each --num_shards N --shard_index i:
each process encodes every N-th missing caption with its own local devices.
"""

import json
import os
import pathlib

from absl import app
from absl import flags
from absl import logging

_CAPTIONS = flags.DEFINE_string("captions", None,
                                "Text file (one caption per line) or .jsonl.")
_FIELD = flags.DEFINE_string("field", "caption", "JSONL key of the caption.")
_ENCODER = flags.DEFINE_string("encoder", "byt5-tiny-random",
                               "Built-in name or checkpoint directory.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Embedding cache root.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None,
                                   "Tokens per caption (default: encoder's).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of the encoder's matmuls.")
_STORAGE = flags.DEFINE_enum("storage_dtype", "bfloat16",
                             ["bfloat16", "float32"], "Stored dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per jitted batch.")
_WRITE_EVERY = flags.DEFINE_integer("write_every", 8192,
                                    "Captions per cache shard file.")
_SHARD_PARAMS = flags.DEFINE_bool(
    "shard_params", True, "FSDP-shard params over the local devices.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Split work N ways.")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This process's share.")


def read_captions(path: str, field: str) -> list[str]:
  """Captions from a .txt (one per line) or .jsonl file, in file order."""
  p = pathlib.Path(path)
  lines = p.read_text(encoding="utf-8").splitlines()
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


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel

  from imagen_jax import text  # pylint: disable=import-outside-toplevel

  devices = jax.local_devices()
  mesh = None
  if len(devices) > 1:
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  encoder = text.load_text_encoder(
      _ENCODER.value, max_length=_MAX_LENGTH.value, dtype=_DTYPE.value,
      mesh=mesh, param_axis="data" if _SHARD_PARAMS.value else None,
      batch_axes=("data",))
  cache = text.EmbeddingCache.for_encoder(_CACHE_DIR.value, encoder,
                                          storage_dtype=_STORAGE.value)
  captions = read_captions(_CAPTIONS.value, _FIELD.value)
  todo = cache.missing(captions)[_SHARD_INDEX.value::_NUM_SHARDS.value]
  logging.info("%s: %d captions, %d unique to encode (shard %d/%d) into %s",
               encoder, len(captions), len(todo), _SHARD_INDEX.value,
               _NUM_SHARDS.value, cache.root)
  print(f"encoder {encoder.identity}: {len(captions)} captions, "
        f"{len(todo)} to encode", flush=True)
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
  print(f"done: {len(cache)} captions cached in {cache.root} "
        f"({encoder.num_truncated - truncated_before} truncated to "
        f"{encoder.max_length} tokens)", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["captions", "cache_dir"])
  app.run(main)
