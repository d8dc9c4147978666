"""Example sources: random-access readers of (image, caption) pairs.

A source has a `name` (used in errors and logs), `num_records` (None for an
infinite source) and `read(index, rng) -> (image uint8 [H, W, 3], caption)`.
`rng` is the example's own generator (derived from the seed and the
example's position in the stream), used e.g. to pick one of several captions,
so that choice changes from epoch to epoch but is reproducible. `read` raises
`preprocess.BadExampleError` for an unusable example, which is skipped.

Sources here: `ShapesSource` (the procedural shapes world) and `TfdsSource`
(any TFDS dataset in ArrayRecord format, random access through
`builder.as_data_source`, what `tfds.data_source` does; no TensorFlow needed,
local or gs:// data_dir; scripts/prepare_data.py writes such datasets).
Folder and COCO-json sources are in `folder_source.py`.
"""

import json
import os
import shlex
from typing import Any, Mapping

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import shapes
from imagen_jax.storage import paths


class ShapesSource:
  """The infinite shapes world; record i is a scene drawn with the given rng.

  Images are rendered directly at `render_size` (no resampling), so every
  stage sees exact anti-aliased geometry; `split` and `max_objects` are those
  of `shapes.sample_scene`. With `labels`, each record also has "labels"
  (`shapes.scene_labels`: int32 class indices of the first object's colour, shape, size, place),
  what the noise-aware classifier trains on.
  """

  num_records = None

  def __init__(
      self, render_size: int, split: str = "train", max_objects: int = 3, labels: bool = False
  ):
    if split not in shapes.SPLITS:
      raise ValueError(f"shapes split must be one of {shapes.SPLITS}, got {split!r}")
    self.render_size = int(render_size)
    self.split = split
    self.max_objects = int(max_objects)
    self.labels = bool(labels)
    self.name = f"shapes[{split}]"

  def read(self, index: int, rng: np.random.Generator) -> tuple:
    """(image, caption), and with `labels` a third element {"labels": int32 [len(LABEL_GROUPS)]}."""
    del index  # the rng is already specific to this example
    scene = shapes.sample_scene(rng, self.split, max_objects=self.max_objects)
    out = (shapes.render(scene, self.render_size), shapes.caption(scene))
    return out + ({"labels": shapes.scene_labels(scene)},) if self.labels else out


def get_field(record: Mapping[str, Any], path: str) -> Any:
  """`record["a"]["b"]` for path "a/b" (TFDS flattens nested keys with '/')."""
  if path in record:
    return record[path]
  node = record
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(f"field {path!r} not in record with keys {sorted(record)}")
    node = node[part]
  return node


# config.input.bad_caption: what a caption that cannot be decoded does.
BAD_CAPTION_POLICIES = ("skip", "error")


def check_bad_caption(policy: str) -> str:
  if policy not in BAD_CAPTION_POLICIES:
    raise ValueError(
        f"bad_caption={policy!r}; expected one of {', '.join(map(repr, BAD_CAPTION_POLICIES))}"
    )
  return policy


def _text(value: bytes, name: str) -> str:
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError as e:
    raise preprocess.BadExampleError(
        f"{name}: caption is not valid UTF-8 at byte {e.start} ({e.reason})"
    ) from None


def pick_caption(value: Any, rng: np.random.Generator, name: str) -> str:
  """A str from a str/bytes or a sequence of them (chosen with rng); BadExampleError
  for no caption or bytes that are not UTF-8."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (list, tuple, np.ndarray)):
    if len(value) == 0:
      raise preprocess.BadExampleError(f"{name}: no caption")
    value = value[int(rng.integers(len(value)))]
  if isinstance(value, bytes):
    value = _text(value, name)
  if not isinstance(value, str):
    raise TypeError(
        f"{name}: caption field is {type(value).__name__}, "
        "expected str, bytes or a sequence of them"
    )
  return value


def all_captions(value: Any, name: str) -> list[str]:
  """Every caption in a str/bytes or a sequence of them (what `pick_caption` picks from)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
  out = []
  for v in values:
    if isinstance(v, bytes):
      try:
        v = _text(v, name)
      except preprocess.BadExampleError:
        continue  # read() skips and counts it; the text cache needs no entry
    if not isinstance(v, str):
      raise TypeError(
          f"{name}: caption field is {type(v).__name__}, "
          "expected str, bytes or a sequence of them"
      )
    out.append(v)
  return out


# Field mappings that work out of the box, by TFDS dataset name.
TFDS_FIELDS = {"coco_captions": {"image": "image", "caption": "captions/text"}}
_BUG_TYPES = (IndexError, KeyError, TypeError, AttributeError, NameError)


def default_data_dir() -> str:
  """TFDS's default data_dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets"
  )


def prepared_dir(name: str, data_dir: str) -> str | None:
  """The folder of TFDS dataset `name` ("n", "n/config", with ":version") in `data_dir`
  that holds a dataset_info.json, None when there is none (not prepared there)."""
  base, _, version = name.partition(":")
  root = paths.path(f"{str(data_dir).rstrip('/')}/{base}")
  if not root.is_dir():
    return None
  level = [root / version] if version else [d for d in root.iterdir() if d.is_dir()]
  for _ in range(2):  # name/version, or name/config/version
    for d in level:
      if (d / "dataset_info.json").exists():
        return str(d)
    level = [v for d in level if d.is_dir() for v in d.iterdir() if v.is_dir()]
  return None


PREPARE_DOCS = 'docs/zero_to_fid.md step 2, docs/launching.md "Preparing data"'


def prepare_command(name: str, output_dir: str, source: str = "coco_json") -> str:
  """The scripts/prepare_data.py command that writes TFDS dataset `name` into `output_dir`."""
  flags = {
      "coco_json": "--annotations captions_train2014.json --images train2014",
      "webdataset": "--path 'TARS/*.tar'",
      "folder": "--path IMAGE_DIR",
  }[source]
  return (
      f"python scripts/prepare_data.py --source {source} {flags} --name {name} "
      f"--output_dir {shlex.quote(str(output_dir))}"
  )


def not_prepared_message(name: str, data_dir: str | None) -> str:
  """What to run when TFDS dataset `name` is not in `data_dir` (None: TFDS's default)."""
  where = str(data_dir or default_data_dir())
  base = name.partition(":")[0].split("/")[0]
  # TFDS's registered coco_captions builder owns that name (and needs TensorFlow to
  # build it), so the data prepared by prepare_data.py goes under a name of its own.
  target = "coco_train2014" if base == "coco_captions" else base
  msg = (
      f"TFDS dataset {name!r} is not prepared in {where} (no dataset_info.json "
      f"under {where.rstrip('/')}/{name.partition(':')[0]}). Prepare it first with "
      f"scripts/prepare_data.py ({PREPARE_DOCS}):\n  "
      + prepare_command(target, where)
      + "\n  (or --source webdataset --path 'TARS/*.tar', or --source folder --path "
      f"IMAGE_DIR)\nthen train with --config.input.dataset=tfds:{target} "
      f"--config.input.data_dir={shlex.quote(where)}."
  )
  if base == "coco_captions":
    msg += (
        " TFDS's own coco_captions builder needs TensorFlow (pip install "
        "tensorflow-cpu) and builder.download_and_prepare(file_format="
        "'array_record')."
    )
  return msg


class TfdsSource:
  """A TFDS image-text dataset read with `tfds.data_source` (random access).

  `fields` maps "image" and "caption" to feature paths ("captions/text");
  a caption field holding several captions yields one chosen per epoch.
  Works with datasets written by `scripts/prepare_data.py` (no registered
  builder, no TensorFlow) and with a `gs://` data_dir: metadata is read
  through `imagen_jax.storage.paths` (gcsfs) and ArrayRecord shards by
  array_record's own GCS reader. A top-level image feature is read as its
  encoded bytes and decoded here, at a reduced JPEG scale when `min_side`
  (the stage resolution) allows, like the folder sources.
  """

  def __init__(
      self,
      name: str,
      split: str = "train",
      data_dir: str | None = None,
      fields: Mapping[str, str] | None = None,
      download: bool = False,
      min_side: int | None = None,
      max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
      bad_caption: str = "skip",
  ):
    import tensorflow_datasets as tfds

    if data_dir and paths.is_remote(data_dir):
      paths.prefer_gcsfs()
    self.name = f"tfds:{name}[{split}]"
    self.min_side = min_side
    self.max_decoded_mb = preprocess.check_max_decoded_mb(max_decoded_mb)
    self.bad_caption = check_bad_caption(bad_caption)
    self.fields = dict(TFDS_FIELDS.get(name, {"image": "image", "caption": "caption"}))
    self.fields.update(fields or {})
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise FileNotFoundError(not_prepared_message(name, data_dir)) from e
    except ImportError as e:  # a registered builder (coco_captions) needs TensorFlow
      where = data_dir or default_data_dir()
      if prepared_dir(name, where) is None:
        raise FileNotFoundError(not_prepared_message(name, data_dir)) from e
      raise ImportError(
          f"TFDS's registered builder for {name!r} needs {e.name or 'a module'} that is "
          f"not installed ({e}), even to read its data prepared in {where}: pip install "
          "tensorflow-cpu, or convert the data into a dataset of your own with\n  "
          + prepare_command("my_" + name.partition(":")[0].split("/")[0], where)
      ) from e
    if download:
      builder.download_and_prepare(file_format="array_record")
    image_field = self.fields["image"]
    decoders = None
    features = builder.info.features
    # Datasets read from their files alone (prepare_data.py's) keep the image
    # encoded; registered builders (coco_captions) decode as TFDS does, which
    # is also what tfds.testing.mock_data can fake (its encoded fakes break
    # ragged sequences once decoders are given).
    from_files = isinstance(builder, tfds.core.read_only_builder.ReadOnlyBuilder)
    if (
        from_files
        and isinstance(features, tfds.features.FeaturesDict)
        and (image_field in features.keys())
        and isinstance(features[image_field], tfds.features.Image)
    ):
      decoders = {image_field: tfds.decode.SkipDecoding()}
    try:
      self._ds = builder.as_data_source(split=split, decoders=decoders)
    except Exception as e:  # pylint: disable=broad-except
      if builder.is_prepared():
        raise
      raise FileNotFoundError(not_prepared_message(name, data_dir)) from e
    self.num_records = len(self._ds)
    if self.num_records == 0:
      raise ValueError(f"{self.name}: the dataset is empty")
    # prepare_data.py writes each shard's captions beside it (captions/<shard>.json):
    # `captions(i)` then reads those, not the records with their images.
    self._sidecar = None
    if from_files and split in builder.info.splits:
      info = builder.info.splits[split]
      self._sidecar = (
          str(builder.data_dir),
          list(info.filenames),
          np.cumsum([0, *info.shard_lengths]),
      )
    self._sidecar_shard = (None, None)

  def read(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    label = f"{self.name}#{index}"
    try:
      record = self._ds[index]
    except _BUG_TYPES:
      raise
    except Exception as e:  # decoding errors of any backend: skip the record
      raise preprocess.BadExampleError(f"{label}: cannot read ({e})") from e
    image = get_field(record, self.fields["image"])
    if isinstance(image, bytes):
      image = preprocess.decode_image(image, label, self.min_side, self.max_decoded_mb)
    image = preprocess.to_rgb_array(image, label)
    try:
      text = pick_caption(get_field(record, self.fields["caption"]), rng, label)
    except preprocess.BadExampleError as e:
      if self.bad_caption == "error":
        raise ValueError(f"{e} (config.input.bad_caption='error')") from e
      raise
    return image, text

  def captions(self, index: int) -> list[str]:
    """Every caption of record `index` (for the text-embedding cache): from the shard's
    captions file where prepare_data.py wrote one (one read per shard), else the record."""
    if self._sidecar is not None:
      root, files, starts = self._sidecar
      shard = int(np.searchsorted(starts, index, side="right")) - 1
      if self._sidecar_shard[0] != shard:
        path = paths.path(f"{root}/captions/{files[shard]}.json")
        rows = json.loads(path.read_text()) if path.exists() else None
        if rows is not None and len(rows) != starts[shard + 1] - starts[shard]:
          raise ValueError(
              f"{path}: {len(rows)} rows for a shard of "
              f"{starts[shard + 1] - starts[shard]} records"
          )
        self._sidecar_shard = (shard, rows)
      rows = self._sidecar_shard[1]
      if rows is not None:
        return [str(c) for c in rows[index - starts[shard]]]
    return all_captions(get_field(self._ds[index], self.fields["caption"]), f"{self.name}#{index}")
