"""The TFDS dataset layout prepare_data writes, local or on `gs://`.

  OUTPUT_DIR/NAME/1.0.0/
    dataset_info.json, features.json           (TFDS's own writer)
    NAME-train.array_record-00000-of-00004     (TFDS's shard naming)
    captions/NAME-train.array_record-00000-of-00004.json   every record's captions
    ...
    _prepare/train/00000-of-00004.done.json    (per shard: counts, skips)

`tfds.data_source(NAME, split=..., data_dir=OUTPUT_DIR)` and
`tfds.builder_from_directory(OUTPUT_DIR/NAME/1.0.0)` read it with no
registered builder and without TensorFlow: features are serialized with
`FeaturesDict.serialize_example` (TFDS's numpy path), metadata written by
`DatasetInfo.write_to_directory`, records by array_record's
`ArrayRecordWriter` with `group_size:1` (one record per chunk: random
access reads only what it needs).

A shard is written to a local temporary file and then renamed into place
(local output) or uploaded whole (gs://: array_record writes only local
files; an object appears only once its upload completes). Its done file is
written after it; a shard with a done file is finished and is skipped by a
rerun. The metadata lists every split whose shards are all done, with their
example counts (`len(data_source)`); it is rewritten from the done files by
whoever finishes a split's last shard, then re-checked (see `finalize`), so
N processes converting shards of several splits concurrently end with
complete metadata; `finalize` can also be run on its own
(`prepare_data.py --finalize`).
"""

import json
import os
import re
import shutil
import tempfile

from imagen_jax.storage import paths

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
CAPTIONS_DIR = "captions"
WRITER_OPTIONS = "group_size:1"
_DONE = re.compile(r"^(\d{5})-of-(\d{5})\.done\.json$")
_SPLIT = re.compile(r"^[A-Za-z0-9_]+$")


def features():
  """The dataset's features: the image, all its captions, the source key."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  return tfds.features.FeaturesDict(
      {
          "image": tfds.features.Image(),
          "caption": tfds.features.Sequence(tfds.features.Text()),
          "key": tfds.features.Text(),
      }
  )


def check_name(name: str, split: str) -> None:
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
    raise ValueError(
        f"--name {name!r}: TFDS names are lower_snake_case "
        "(letters, digits, '_', starting with a letter)"
    )
  if not _SPLIT.fullmatch(split or ""):
    raise ValueError(f"--split {split!r}: letters, digits and '_' only")


def dataset_dir(output_dir: str, name: str) -> str:
  return f"{str(output_dir).rstrip('/')}/{name}/{VERSION}"


def _join(*parts: str) -> str:
  return "/".join(p.rstrip("/") for p in parts)


def shard_filename(name: str, split: str, index: int, num_shards: int) -> str:
  return f"{name}-{split}.{FILE_FORMAT}-{index:05d}-of-{num_shards:05d}"


def captions_path(ds_dir: str, name: str, split: str, index: int, num_shards: int) -> str:
  """The shard's captions sidecar: a JSON list (one list of captions per record, in record
  order), so the text cache's coverage check reads captions without the images."""
  return _join(ds_dir, CAPTIONS_DIR, shard_filename(name, split, index, num_shards) + ".json")


def done_path(ds_dir: str, split: str, index: int, num_shards: int) -> str:
  return _join(ds_dir, "_prepare", split, f"{index:05d}-of-{num_shards:05d}.done.json")


def read_done(ds_dir: str) -> dict[str, dict[int, dict]]:
  """{split: {shard index: done record}} of every finished shard."""
  root = paths.path(_join(ds_dir, "_prepare"))
  if not root.exists():
    return {}
  out = {}
  for split_dir in sorted(root.iterdir()):
    if not split_dir.is_dir():
      continue
    for f in split_dir.iterdir():
      if _DONE.match(f.name):
        out.setdefault(split_dir.name, {})[int(f.name[:5])] = json.loads(f.read_text())
  return out


class ShardWriter:
  """Writes one shard: `write(record)`, then `commit(done)` or `abort()`."""

  def __init__(self, ds_dir: str, name: str, split: str, index: int, num_shards: int):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    self.target = _join(ds_dir, shard_filename(name, split, index, num_shards))
    self.done = done_path(ds_dir, split, index, num_shards)
    self.captions_file = captions_path(ds_dir, name, split, index, num_shards)
    self._captions: list[list[str]] = []
    if paths.is_remote(ds_dir):
      self._tmp_dir = tempfile.mkdtemp(prefix="prepare_data_")
      local_dir = self._tmp_dir
    else:
      self._tmp_dir = None
      local_dir = _join(ds_dir, "_prepare", split)
      os.makedirs(local_dir, exist_ok=True)
    self._local = os.path.join(local_dir, f".{os.path.basename(self.target)}.{os.getpid()}.tmp")
    self._writer = array_record_module.ArrayRecordWriter(self._local, WRITER_OPTIONS)
    self.count = 0

  def write(self, record: bytes, captions: list[str]) -> None:
    self._writer.write(record)
    self._captions.append([str(c) for c in captions])
    self.count += 1

  def commit(self, done: dict) -> dict:
    """Puts the shard in place, then its done file; returns the done record."""
    self._writer.close()
    num_bytes = os.path.getsize(self._local)
    if self._tmp_dir is None:
      os.replace(self._local, self.target)
    else:
      with open(self._local, "rb") as src, paths.path(self.target).open("wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
      shutil.rmtree(self._tmp_dir, ignore_errors=True)
    paths.write_atomic(self.captions_file, json.dumps(self._captions))
    done = dict(
        done, num_examples=self.count, num_bytes=num_bytes, file=os.path.basename(self.target)
    )
    paths.write_atomic(self.done, json.dumps(done, indent=1, sort_keys=True))
    return done

  def abort(self) -> None:
    try:
      self._writer.close()
    finally:
      if self._tmp_dir is not None:
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
      elif os.path.exists(self._local):
        os.remove(self._local)


def complete_splits(done: dict[str, dict[int, dict]]) -> dict[str, list[dict]]:
  """The splits whose shards are all done: {split: done records in order}."""
  out = {}
  for split, shards in done.items():
    counts = {d["num_shards"] for d in shards.values()}
    if len(counts) != 1:
      raise ValueError(
          f"split {split!r} has done shards of different "
          f"--num_shards {sorted(counts)}; delete its _prepare/"
          f"{split} folder and shard files to start it over"
      )
    n = counts.pop()
    if sorted(shards) == list(range(n)):
      out[split] = [shards[i] for i in range(n)]
  return out


def write_metadata(ds_dir: str, name: str, splits: dict[str, list[dict]], description: str) -> None:
  """dataset_info.json + features.json for `splits` ({split: done records}).

  What `tfds.folder_dataset.write_metadata` does, minus its directory scan
  (which also finds the shards of a split still being written by another
  process and then refuses the split list).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  if paths.is_remote(ds_dir):
    paths.prefer_gcsfs()
  data_dir = paths.path(ds_dir)
  split_infos = []
  for split, shards in sorted(splits.items()):
    template = tfds.core.ShardedFileTemplate(
        data_dir=data_dir,
        template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE,
        dataset_name=name,
        split=split,
        filetype_suffix=FILE_FORMAT,
    )
    split_infos.append(
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[int(d["num_examples"]) for d in shards],
            num_bytes=sum(int(d["num_bytes"]) for d in shards),
            filename_template=template,
        )
    )
  identity = tfds.core.DatasetIdentity(
      name=name, version=tfds.core.Version(VERSION), data_dir=ds_dir, module_name=""
  )
  info = tfds.core.DatasetInfo(builder=identity, features=features(), description=description)
  info.set_file_format(FILE_FORMAT)
  info.set_splits(tfds.core.SplitDict(split_infos))
  info.write_to_directory(data_dir)


def finalize(
    ds_dir: str, name: str, description: str, max_rounds: int = 5
) -> dict[str, list[dict]]:
  """Writes metadata for every complete split, then re-reads the done files
  and rewrites until nothing new completed meanwhile (a concurrent finisher
  that saw fewer splits may have written after us). Returns the splits."""
  written: set | None = None
  splits = {}
  for _ in range(max_rounds):
    splits = complete_splits(read_done(ds_dir))
    if set(splits) == written or not splits:
      return splits
    write_metadata(ds_dir, name, splits, description)
    written = set(splits)
  return splits
