"""Sources for images on disk: a captioned folder and COCO-format captions.

`FolderSource(path)` takes every image under `path` (recursively, sorted) with
its caption in a sidecar file of the same name ending in `.txt`; with
`manifest=` it reads the pairs from a JSONL file (one
`{"image": "rel/path.jpg", "caption": "..."}` per line; "caption" may be a list)
or a CSV file with `image` and `caption` columns instead (paths are relative
to `path`, or to the manifest's folder when `path` is empty). A missing
caption is an error naming the image; an empty dataset is an error naming the
folder.

`CocoJsonSource(annotations, image_dir)` reads a COCO `captions_*.json`
(`images[{id, file_name}]`, `annotations[{image_id, caption}]`); each record
is one image with all its captions, one chosen per epoch.

Images are decoded when read (in the pipeline's worker threads), JPEGs at a
reduced scale when `min_side` (the stage resolution) allows; a corrupt or
truncated file raises `BadExampleError` and is skipped and counted.
"""

import csv
import json
import os
from typing import Optional, Sequence

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif",
                    ".tiff")


class _FileSource:
  """Records are (image path, captions) pairs decoded on read."""

  def __init__(self, name: str, items: Sequence[tuple[str, Sequence[str]]],
               min_side: Optional[int] = None):
    self.name = name
    self.min_side = min_side
    self._items = list(items)
    self.num_records = len(self._items)
    if not self._items:
      raise ValueError(f"{name}: no images found (empty dataset)")

  def read(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                str]:
    path, captions = self._items[index]
    image = preprocess.decode_image(path, path, self.min_side)
    return image, sources.pick_caption(list(captions), rng, path)

  def captions(self, index: int) -> list[str]:
    """Every caption of record `index` (no image read), for the text-embedding cache."""
    return [str(c) for c in self._items[index][1]]


def _scan_images(root: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in sorted(filenames):
      if f.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.join(dirpath, f))
  return found


def _read_caption_file(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    lines = [l.strip() for l in f.read().splitlines()]
  return [l for l in lines if l]


def _manifest_items(path: str, manifest: str, image_key: str,
                    caption_key: str) -> list[tuple[str, list[str]]]:
  root = path or os.path.dirname(os.path.abspath(manifest))
  if manifest.endswith(".csv"):
    with open(manifest, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
  else:
    with open(manifest, encoding="utf-8") as f:
      rows = [json.loads(l) for l in f if l.strip()]
  items = []
  for line, row in enumerate(rows, start=1):
    if image_key not in row:
      raise ValueError(f"{manifest}:{line}: no {image_key!r} field")
    image = os.path.join(root, row[image_key])
    captions = row.get(caption_key)
    if isinstance(captions, str):
      captions = [captions]
    captions = [c for c in (captions or []) if c and c.strip()]
    if not captions:
      raise ValueError(f"{manifest}:{line}: no caption for image {image}")
    items.append((image, captions))
  return items


class FolderSource(_FileSource):
  """Images under a folder with sidecar `.txt` captions or a manifest."""

  def __init__(self, path: str, manifest: Optional[str] = None,
               image_key: str = "image", caption_key: str = "caption",
               min_side: Optional[int] = None):
    if manifest:
      items = _manifest_items(path, manifest, image_key, caption_key)
      name = f"folder:{manifest}"
    else:
      if not os.path.isdir(path):
        raise ValueError(f"folder:{path}: not a directory")
      items = []
      for image in _scan_images(path):
        txt = os.path.splitext(image)[0] + ".txt"
        if not os.path.exists(txt):
          raise ValueError(f"no caption file {txt} for image {image}")
        captions = _read_caption_file(txt)
        if not captions:
          raise ValueError(f"empty caption file {txt} for image {image}")
        items.append((image, captions))
      name = f"folder:{path}"
    super().__init__(name, items, min_side)


class CocoJsonSource(_FileSource):
  """COCO `captions_*.json` + image folder; one record per image."""

  def __init__(self, annotations: str, image_dir: str,
               min_side: Optional[int] = None):
    with open(annotations, encoding="utf-8") as f:
      data = json.load(f)
    captions = {}
    for ann in data.get("annotations", []):
      captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    items = []
    for img in sorted(data.get("images", []), key=lambda i: i["id"]):
      path = os.path.join(image_dir, img["file_name"])
      if not captions.get(img["id"]):
        raise ValueError(f"{annotations}: no caption for image {path}")
      items.append((path, captions[img["id"]]))
    super().__init__(f"coco_json:{annotations}", items, min_side)
