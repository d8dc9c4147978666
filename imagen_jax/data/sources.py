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
from typing import Any, Mapping, Optional

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import shapes
from imagen_jax.storage import paths


class ShapesSource:
  """The infinite shapes world; record i is a scene drawn with the given rng.

  Images are rendered directly at `render_size` (no resampling), so every
  stage sees exact anti-aliased geometry; `split` and `max_objects` are those
  of `shapes.sample_scene`.
  """

  num_records = None

  def __init__(self, render_size: int, split: str = "train",
               max_objects: int = 3):
    if split not in shapes.SPLITS:
      raise ValueError(f"shapes split must be one of {shapes.SPLITS}, "
                       f"got {split!r}")
    self.render_size = int(render_size)
    self.split = split
    self.max_objects = int(max_objects)
    self.name = f"shapes[{split}]"

  def read(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                str]:
    del index  # the rng is already specific to this example
    scene = shapes.sample_scene(rng, self.split, max_objects=self.max_objects)
    return shapes.render(scene, self.render_size), shapes.caption(scene)


def get_field(record: Mapping[str, Any], path: str) -> Any:
  """`record["a"]["b"]` for path "a/b" (TFDS flattens nested keys with '/')."""
  if path in record:
    return record[path]
  node = record
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(f"field {path!r} not in record with keys "
                     f"{sorted(record)}")
    node = node[part]
  return node


def pick_caption(value: Any, rng: np.random.Generator, name: str) -> str:
  """A str from a str/bytes or a sequence of them (chosen with rng)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (list, tuple, np.ndarray)):
    if len(value) == 0:
      raise preprocess.BadExampleError(f"{name}: no caption")
    value = value[int(rng.integers(len(value)))]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if not isinstance(value, str):
    raise TypeError(f"{name}: caption field is {type(value).__name__}, "
                    "expected str, bytes or a sequence of them")
  return value


def all_captions(value: Any, name: str) -> list[str]:
  """Every caption in a str/bytes or a sequence of them (what `pick_caption` picks from)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
  out = []
  for v in values:
    if isinstance(v, bytes):
      v = v.decode("utf-8")
    if not isinstance(v, str):
      raise TypeError(f"{name}: caption field is {type(v).__name__}, "
                      "expected str, bytes or a sequence of them")
    out.append(v)
  return out


# Field mappings that work out of the box, by TFDS dataset name.
TFDS_FIELDS = {
    "coco_captions": {"image": "image", "caption": "captions/text"},
}
_BUG_TYPES = (IndexError, KeyError, TypeError, AttributeError, NameError)


PREPARE_COMMAND = ("python scripts/prepare_data.py --source webdataset "
                   "--path 'DIR/*.tar' --name {name} --output_dir DATA_DIR")


def not_prepared_message(name: str, data_dir: Optional[str]) -> str:
  """What to run when TFDS dataset `name` is not in `data_dir`."""
  where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
  msg = (f"TFDS dataset {name!r} is not prepared in {where}. Convert your "
         "image-caption data into it with\n  "
         + PREPARE_COMMAND.format(name=name)
         + "\n(or --source coco_json / folder, see docs/launching.md) and "
         "train with --config.input.dataset=tfds:" + name
         + " --config.input.data_dir=DATA_DIR.")
  if name == "coco_captions":
    msg += (" TFDS's own coco_captions builder needs TensorFlow and "
            "builder.download_and_prepare(file_format='array_record').")
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

  def __init__(self, name: str, split: str = "train",
               data_dir: Optional[str] = None,
               fields: Optional[Mapping[str, str]] = None,
               download: bool = False, min_side: Optional[int] = None):
    import tensorflow_datasets as tfds
    if data_dir and paths.is_remote(data_dir):
      paths.prefer_gcsfs()
    self.name = f"tfds:{name}[{split}]"
    self.min_side = min_side
    self.fields = dict(TFDS_FIELDS.get(name, {"image": "image",
                                              "caption": "caption"}))
    self.fields.update(fields or {})
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise FileNotFoundError(not_prepared_message(name, data_dir)) from e
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
    if from_files and isinstance(features, tfds.features.FeaturesDict) and (
        image_field in features.keys()) and isinstance(
            features[image_field], tfds.features.Image):
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
      self._sidecar = (str(builder.data_dir), list(info.filenames),
                       np.cumsum([0, *info.shard_lengths]))
    self._sidecar_shard = (None, None)

  def read(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                str]:
    label = f"{self.name}#{index}"
    try:
      record = self._ds[index]
    except _BUG_TYPES:
      raise
    except Exception as e:  # decoding errors of any backend: skip the record
      raise preprocess.BadExampleError(f"{label}: cannot read ({e})") from e
    image = get_field(record, self.fields["image"])
    if isinstance(image, bytes):
      image = preprocess.decode_image(image, label, self.min_side)
    image = preprocess.to_rgb_array(image, label)
    text = pick_caption(get_field(record, self.fields["caption"]), rng, label)
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
          raise ValueError(f"{path}: {len(rows)} rows for a shard of "
                           f"{starts[shard + 1] - starts[shard]} records")
        self._sidecar_shard = (shard, rows)
      rows = self._sidecar_shard[1]
      if rows is not None:
        return [str(c) for c in rows[index - starts[shard]]]
    return all_captions(get_field(self._ds[index], self.fields["caption"]),
                        f"{self.name}#{index}")
