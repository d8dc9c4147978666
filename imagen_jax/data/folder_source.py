"""Sources for images in a folder (local or `gs://`): captioned files, COCO json.

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

`folder_items` / `coco_items` are the listings behind both (also used by
`data/prepare`): (image path, captions) pairs. A path taken from a dataset
file (a manifest entry, a COCO `file_name`) must stay inside its root: an
absolute path or a `..` component is an error naming the entry.

Every path may be local or remote (`gs://...`, read through
`imagen_jax.storage.paths`); a remote folder is listed with one call, but
each caption file and image is its own request, so large remote datasets
train faster once converted with scripts/prepare_data.py.

Images are decoded when read (in the pipeline's worker threads), JPEGs at a
reduced scale when `min_side` (the stage resolution) allows; a corrupt,
truncated or missing file raises `BadExampleError` and is skipped and counted.
"""

import csv
import io
import json
import os
import posixpath
from typing import Optional, Sequence

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import sources
from imagen_jax.storage import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif",
                    ".tiff")
Items = list[tuple[str, list[str]]]


def read_bytes(path: str) -> bytes:
  """The bytes of a local or remote file (FileNotFoundError when missing)."""
  if not paths.is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  return paths.path(path).read_bytes()


def _read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def join_inside(root: str, rel: str, where: str) -> str:
  """`root/rel`; ValueError when `rel` (from `where`) is absolute or has `..`."""
  rel = str(rel)
  parts = rel.replace("\\", "/").split("/")
  if (not rel or rel.startswith(("/", "\\")) or "://" in rel
      or os.path.isabs(rel) or ".." in parts
      or (len(rel) > 2 and rel[1] == ":" and rel[2] in "/\\")):
    raise ValueError(f"{where}: image path {rel!r} must be relative to the "
                     f"dataset root {root!r} (no absolute path, no '..')")
  if paths.is_remote(root):
    return posixpath.join(root.rstrip("/"), *[p for p in parts if p])
  return os.path.join(root, *[p for p in parts if p])


def _dirname(path: str) -> str:
  if paths.is_remote(path):
    return posixpath.dirname(path.rstrip("/"))
  return os.path.dirname(os.path.abspath(path))


def list_files(root: str) -> list[str]:
  """Every file under `root`, relative, in `os.walk` order with sorted names
  (a folder's files before its subfolders'); a remote folder in one listing."""
  try:
    names = list(paths.find_files(root))
  except FileNotFoundError:
    raise ValueError(f"folder:{root}: not a directory") from None
  return sorted(names, key=lambda n: (tuple(n.split("/")[:-1]),
                                      n.split("/")[-1]))


def _caption_lines(text: str) -> list[str]:
  return [l.strip() for l in text.splitlines() if l.strip()]


def _sidecar_items(root: str, allow_missing: bool) -> Items:
  files = list_files(root)
  present = set(files)
  items = []
  for rel in files:
    if not rel.lower().endswith(IMAGE_EXTENSIONS):
      continue
    image = join_inside(root, rel, root)
    txt_rel = posixpath.splitext(rel)[0] + ".txt"
    txt = join_inside(root, txt_rel, root)
    captions = _caption_lines(_read_text(txt)) if txt_rel in present else []
    if not captions and not allow_missing:
      what = "empty caption file" if txt_rel in present else "no caption file"
      raise ValueError(f"{what} {txt} for image {image}")
    items.append((image, captions))
  return items


def _manifest_items(path: str, manifest: str, image_key: str,
                    caption_key: str, allow_missing: bool) -> Items:
  root = path or _dirname(manifest)
  text = _read_text(manifest)
  if manifest.endswith(".csv"):
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
  else:
    rows = [json.loads(l) for l in text.splitlines() if l.strip()]
  items = []
  for line, row in enumerate(rows, start=1):
    if image_key not in row:
      raise ValueError(f"{manifest}:{line}: no {image_key!r} field")
    image = join_inside(root, row[image_key], f"{manifest}:{line}")
    captions = row.get(caption_key)
    if isinstance(captions, str):
      captions = [captions]
    captions = [c.strip() for c in (captions or []) if c and c.strip()]
    if not captions and not allow_missing:
      raise ValueError(f"{manifest}:{line}: no caption for image {image}")
    items.append((image, captions))
  return items


def folder_items(path: str, manifest: Optional[str] = None,
                 image_key: str = "image", caption_key: str = "caption",
                 allow_missing_captions: bool = False) -> Items:
  """(image path, captions) of a folder: sidecar `.txt` files or a manifest.

  A missing or empty caption raises ValueError unless `allow_missing_captions`
  (then its captions are empty, for the caller to skip and count).
  """
  if manifest:
    return _manifest_items(path, manifest, image_key, caption_key,
                           allow_missing_captions)
  return _sidecar_items(path, allow_missing_captions)


def coco_items(annotations: str, image_dir: str,
               allow_missing_captions: bool = False) -> Items:
  """(image path, all its captions) of a COCO captions json, by image id."""
  data = json.loads(_read_text(annotations))
  captions = {}
  for ann in data.get("annotations", []):
    captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
  items = []
  for img in sorted(data.get("images", []), key=lambda i: i["id"]):
    path = join_inside(image_dir, img["file_name"],
                       f"{annotations}: image {img['id']}")
    caps = [c for c in captions.get(img["id"], []) if c]
    if not caps and not allow_missing_captions:
      raise ValueError(f"{annotations}: no caption for image {path}")
    items.append((path, caps))
  return items


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
    if paths.is_remote(path):
      try:
        data = read_bytes(path)
      except OSError as e:
        raise preprocess.BadExampleError(f"{path}: cannot read ({e})") from e
      image = preprocess.decode_image(data, path, self.min_side)
    else:
      image = preprocess.decode_image(path, path, self.min_side)
    return image, sources.pick_caption(list(captions), rng, path)

  def captions(self, index: int) -> list[str]:
    """Every caption of record `index` (no image read), for the text-embedding cache."""
    return [str(c) for c in self._items[index][1]]


class FolderSource(_FileSource):
  """Images under a folder with sidecar `.txt` captions or a manifest."""

  def __init__(self, path: str, manifest: Optional[str] = None,
               image_key: str = "image", caption_key: str = "caption",
               min_side: Optional[int] = None):
    items = folder_items(path, manifest, image_key, caption_key)
    super().__init__(f"folder:{manifest or path}", items, min_side)


class CocoJsonSource(_FileSource):
  """COCO `captions_*.json` + image folder; one record per image."""

  def __init__(self, annotations: str, image_dir: str,
               min_side: Optional[int] = None):
    if not annotations or not image_dir:
      raise ValueError("coco_json needs the captions file (annotations="
                       f"{annotations!r}) and the image folder (path="
                       f"{image_dir!r})")
    super().__init__(f"coco_json:{annotations}",
                     coco_items(annotations, image_dir), min_side)
