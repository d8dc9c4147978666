r"""Converts image-caption data into a TFDS ArrayRecord dataset the trainer reads.

  python scripts/prepare_data.py --source webdataset --path 'DIR/*.tar' \
      --name laion_subset --output_dir gs://BUCKET/tfds --num_shards 256
  python scripts/prepare_data.py --source coco_json \
      --annotations annotations/captions_train2014.json --images train2014 \
      --name coco_train --output_dir /data/tfds --num_shards 16
  python scripts/prepare_data.py --source folder --path /data/imgs \
      --name my_images --output_dir /data/tfds

then train with `--config.input.dataset=tfds:NAME --config.input.data_dir=
OUTPUT_DIR`. Parallel: run one process per `--shard_index` (0 .. num_shards-1,
same flags otherwise); a rerun skips finished shards; whoever finishes a
split's last shard writes the metadata (`--finalize` rewrites it from the
finished shards). See imagen_jax/data/prepare and docs/launching.md.
"""

from absl import app
from absl import flags

from imagen_jax.data import preprocess
from imagen_jax.data.prepare import convert
from imagen_jax.data.prepare import readers

_SOURCE = flags.DEFINE_enum("source", None, readers.SOURCES, "Input format.")
_PATH = flags.DEFINE_string(
    "path",
    "",
    "folder: the image folder; webdataset: the tars ('DIR/*.tar', "
    "a folder of .tar files or one file). Local or gs://.",
)
_ANNOTATIONS = flags.DEFINE_string("annotations", "", "coco_json: a COCO captions_*.json.")
_IMAGES = flags.DEFINE_string("images", "", "coco_json: its image folder.")
_MANIFEST = flags.DEFINE_string(
    "manifest", None, "folder: a JSONL/CSV manifest instead of .txt files."
)
_NAME = flags.DEFINE_string("name", None, "Dataset name (tfds:NAME).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "TFDS data_dir to write into (local or gs://)."
)
_SPLIT = flags.DEFINE_string("split", "train", "Split to write.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Output shards.")
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", None, "Convert only this shard (default: all of them)."
)
_MAX_SIDE = flags.DEFINE_integer("max_side", None, "Resize images whose longer side exceeds this.")
_MAX_DECODED_MB = flags.DEFINE_float(
    "max_decoded_mb",
    preprocess.DEFAULT_MAX_DECODED_MB,
    "Skip (count) images whose decoded size, read from their "
    "header, is above this many MB (a zlib bomb, a huge scan).",
)
_ALLOW_OUTSIDE_ROOT = flags.DEFINE_boolean(
    "allow_outside_root",
    False,
    "Read COCO file_names / manifest paths that are "
    "absolute or have '..' (refused and counted as 'outside root' otherwise).",
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 8, "Threads reading and validating images.")
_FINALIZE = flags.DEFINE_boolean(
    "finalize", False, "Only (re)write the metadata from finished shards."
)
flags.mark_flags_as_required(["name", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _FINALIZE.value:
    if not convert.finalize(_OUTPUT_DIR.value, _NAME.value):
      raise app.UsageError(f"no complete split of {_NAME.value} in {_OUTPUT_DIR.value} yet")
    return
  if _SOURCE.value is None:
    raise app.UsageError("--source is required (unless --finalize)")
  convert.prepare(
      source=_SOURCE.value,
      name=_NAME.value,
      output_dir=_OUTPUT_DIR.value,
      split=_SPLIT.value,
      num_shards=_NUM_SHARDS.value,
      shard_index=_SHARD_INDEX.value,
      max_side=_MAX_SIDE.value,
      num_workers=_NUM_WORKERS.value,
      max_decoded_mb=_MAX_DECODED_MB.value,
      path=_PATH.value,
      annotations=_ANNOTATIONS.value,
      images=_IMAGES.value,
      manifest=_MANIFEST.value,
      allow_outside_root=_ALLOW_OUTSIDE_ROOT.value,
  )


if __name__ == "__main__":
  app.run(main)
