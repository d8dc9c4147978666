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
      --text_encoder /ckpts/t5-v1_1-xxl --cache_dir /data/t5_cache --max_length 128

Duplicates and captions already in the cache are skipped, so re-running resumes. Split the
work over hosts with --num_shards N --shard_index i (default: the process count and index);
after a multi-process run, run the same command once on one host with --compact to merge the
index. Details: imagen_jax/text/precompute.py; `--encoder` is a deprecated alias.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from imagen_jax import config_lib
from imagen_jax.parallel import multihost
from imagen_jax.text import precompute

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config (path[:arg]): captions from its input source.", lock_config=True
)
_CAPTIONS = flags.DEFINE_string("captions", None, "Text file (one caption per line) or .jsonl.")
_FIELD = flags.DEFINE_string("field", "caption", "JSONL key of the caption.")
_ENCODER = flags.DEFINE_string(
    "text_encoder",
    None,
    "Built-in name or checkpoint directory (default: the config's "
    "text.encoder, else byt5-tiny-random). Deprecated alias: --encoder.",
)
flags.DEFINE_alias("encoder", "text_encoder")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache root (default: text.cache_dir).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens (default: text.max_length).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Encoder compute.")
_STORAGE = flags.DEFINE_enum("storage_dtype", "bfloat16", ["bfloat16", "float32"], "Stored dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per jitted batch.")
_WRITE_EVERY = flags.DEFINE_integer("write_every", 8192, "Captions per cache data file.")
_SHARD_PARAMS = flags.DEFINE_bool("shard_params", True, "FSDP-shard params over the local devices.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Split N ways (default: processes).")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", None, "This share (default: process).")
_COMPACT = flags.DEFINE_bool("compact", None, "Merge the index (default: one shard).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if (config is None) == (_CAPTIONS.value is None):
    raise app.UsageError(
        "give exactly one of --config (captions from the stage's input) and --captions FILE"
    )
  if flags.FLAGS["encoder"].present:
    logging.warning("--encoder is deprecated; use --text_encoder (same meaning).")
  # Where JAX finds the cluster itself (a TPU pod through the launcher, GKE, srun, mpirun),
  # the process count and index that --num_shards/--shard_index default to are the job's.
  multihost.initialize()
  num_shards = _NUM_SHARDS.value or jax.process_count()
  shard = jax.process_index() if _SHARD_INDEX.value is None else _SHARD_INDEX.value
  if not 0 <= shard < num_shards:
    raise app.UsageError(f"--shard_index={shard} not in [0, {num_shards})")
  try:
    encoder, max_length, cache_dir = precompute.resolve_settings(
        config.text if config is not None else None,
        encoder=_ENCODER.value,
        max_length=_MAX_LENGTH.value,
        cache_dir=_CACHE_DIR.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if config is not None:
    # The trainer's stack, only for captions listed from a stage config.
    from imagen_jax.train import stage_task  # pylint: disable=import-outside-toplevel

    try:
      captions = stage_task.precompute_captions(config, shard, num_shards)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  else:
    captions = precompute.read_captions(_CAPTIONS.value, _FIELD.value)
  precompute.fill_cache(
      captions,
      encoder,
      cache_dir,
      max_length=max_length,
      dtype=_DTYPE.value,
      storage_dtype=_STORAGE.value,
      batch_size=_BATCH.value,
      write_every=_WRITE_EVERY.value,
      shard_params=_SHARD_PARAMS.value,
      shard=shard,
      num_shards=num_shards,
      shard_missing=config is None,
      compact=_COMPACT.value,
  )


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
