"""Example sources: random-access readers of (image, caption) pairs.

A source has a `name` (used in errors and logs), `num_records` (None for an
infinite source) and `read(index, rng) -> (image uint8 [H, W, 3], caption)`.
`rng` is the example's own generator (derived from the seed and the
example's position in the stream), used e.g. to pick one of several captions,
so that choice changes from epoch to epoch but is reproducible. `read` raises
`preprocess.BadExampleError` for an unusable example, which is skipped.

Sources here: `ShapesSource` (the procedural shapes world) and `TfdsSource`
(any TFDS dataset through `tfds.data_source`, no TensorFlow needed to read
ArrayRecord data). Folder and COCO-json sources are in `folder_source.py`.
"""

from typing import Any, Mapping, Optional

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import shapes


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


class TfdsSource:
  """A TFDS image-text dataset read with `tfds.data_source` (random access).

  `fields` maps "image" and "caption" to feature paths ("captions/text");
  a caption field holding several captions yields one chosen per epoch.
  """

  def __init__(self, name: str, split: str = "train",
               data_dir: Optional[str] = None,
               fields: Optional[Mapping[str, str]] = None,
               download: bool = False):
    import tensorflow_datasets as tfds
    self.name = f"tfds:{name}[{split}]"
    self.fields = dict(TFDS_FIELDS.get(name, {"image": "image",
                                              "caption": "caption"}))
    self.fields.update(fields or {})
    self._ds = tfds.data_source(name, split=split, data_dir=data_dir,
                                download=download)
    self.num_records = len(self._ds)
    if self.num_records == 0:
      raise ValueError(f"{self.name}: the dataset is empty")

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
      image = preprocess.decode_image(image, label)
    image = preprocess.to_rgb_array(image, label)
    text = pick_caption(get_field(record, self.fields["caption"]), rng, label)
    return image, text

  def captions(self, index: int) -> list[str]:
    """Every caption of record `index` (for the text-embedding cache; reads the record)."""
    return all_captions(get_field(self._ds[index], self.fields["caption"]),
                        f"{self.name}#{index}")
