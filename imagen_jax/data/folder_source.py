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
`data/prepare`): `Entry(image path, captions, skip)`. Bad dataset files:

* a manifest or annotation file that does not parse (JSON, CSV, UTF-8) or
  lacks a field is an error naming the file and its true 1-based line (or the
  entry, `images[12]`, for a JSON field);
* a path taken from a dataset file (a manifest entry, a COCO `file_name`)
  that is absolute or has a `..` component is refused: its entry is a bad
  record (`skip` = ("outside root", ...)), skipped and counted when read,
  unless `allow_outside_root` (config.input.allow_outside_root);
* a caption file that is not UTF-8 or not a readable regular file is a bad
  record under `bad_caption="skip"` (the default), an error naming the file
  under "error" (config.input.bad_caption).

Every path may be local or remote (`gs://...`, read through
`imagen_jax.storage.paths`); a remote folder is listed with one call, but
each caption file and image is its own request, so large remote datasets
train faster once converted with scripts/prepare_data.py. Local files are
opened only when they are regular files (a FIFO, device or socket named like
an image or caption would block the reader or never end).

Images are decoded when read (in the pipeline's worker threads), JPEGs at a
reduced scale when `min_side` (the stage resolution) allows, and refused from
their header above `max_decoded_mb`; a corrupt, truncated, missing, oversized
or non-regular file raises `BadExampleError` and is skipped and counted.
"""

import csv
import io
import json
import os
import posixpath
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.data import sources
from imagen_jax.storage import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class Entry(NamedTuple):
  """One listed record: the image, its captions, or why it cannot be used."""

  path: str
  captions: list
  skip: tuple[str, str] | None = None  # (reason, detail): a bad record


Items = list[Entry]
OUTSIDE_ROOT = "outside root"
BAD_CAPTION = "bad caption"


def read_bytes(path: str) -> bytes:
  """The bytes of a local regular file or a remote object (FileNotFoundError when
  missing, `preprocess.NotRegularFileError` for a FIFO, device or socket)."""
  if not paths.is_remote(path):
    with preprocess.open_regular_file(path) as f:
      return f.read()
  return paths.path(path).read_bytes()


def decode_utf8(data: bytes, path: str) -> str:
  """`data` as text; ValueError naming the file, line and byte when it is not UTF-8."""
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not valid UTF-8 at byte {e.start} ({e.reason})") from None


def _read_text(path: str) -> str:
  return decode_utf8(read_bytes(path), path)


def join_inside(root: str, rel: str, where: str) -> str:
  """`root/rel`; ValueError when `rel` (from `where`) is absolute or has `..`."""
  rel = str(rel)
  parts = rel.replace("\\", "/").split("/")
  if (
      not rel
      or rel.startswith(("/", "\\"))
      or "://" in rel
      or os.path.isabs(rel)
      or ".." in parts
      or (len(rel) > 2 and rel[1] == ":" and rel[2] in "/\\")
  ):
    raise ValueError(
        f"{where}: image path {rel!r} must be relative to the "
        f"dataset root {root!r} (no absolute path, no '..')"
    )
  if paths.is_remote(root):
    return posixpath.join(root.rstrip("/"), *[p for p in parts if p])
  return os.path.join(root, *[p for p in parts if p])


def _resolve(
    root: str, rel: str, where: str, allow_outside_root: bool
) -> tuple[str, tuple[str, str] | None]:
  """(path, None) inside the root; (rel, ("outside root", why)) for a refused one."""
  try:
    return join_inside(root, rel, where), None
  except ValueError as e:
    if allow_outside_root:
      if "://" in rel or os.path.isabs(rel):
        return rel, None
      join = posixpath.join if paths.is_remote(root) else os.path.join
      return join(root, rel), None
    return rel, (OUTSIDE_ROOT, f"{e}; refused (config.input.allow_outside_root=True reads it)")


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
  return sorted(names, key=lambda n: (tuple(n.split("/")[:-1]), n.split("/")[-1]))


def _caption_lines(text: str) -> list[str]:
  return [l.strip() for l in text.splitlines() if l.strip()]


def _sidecar_items(root: str, allow_missing: bool, bad_caption: str) -> Items:
  files = list_files(root)
  present = set(files)
  items = []
  for rel in files:
    if not rel.lower().endswith(IMAGE_EXTENSIONS):
      continue
    image = join_inside(root, rel, root)
    txt_rel = posixpath.splitext(rel)[0] + ".txt"
    txt = join_inside(root, txt_rel, root)
    captions = []
    if txt_rel in present:
      try:
        captions = _caption_lines(_read_text(txt))
      except (ValueError, OSError) as e:  # not UTF-8, a FIFO, unreadable
        if bad_caption == "error":
          raise ValueError(
              f"caption file of {image}: {e} (config.input.bad_caption='error')"
          ) from e
        items.append(Entry(image, [], (BAD_CAPTION, f"caption file of {image}: {e}")))
        continue
    if not captions and not allow_missing:
      what = "empty caption file" if txt_rel in present else "no caption file"
      raise ValueError(f"{what} {txt} for image {image}")
    items.append(Entry(image, captions))
  return items


def _jsonl_rows(text: str, manifest: str) -> Iterator[tuple[int, dict]]:
  for line, raw in enumerate(text.split("\n"), start=1):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw)
    except json.JSONDecodeError as e:
      raise ValueError(f"{manifest}:{line}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(row, dict):
      raise ValueError(f"{manifest}:{line}: expected a JSON object, got {type(row).__name__}")
    yield line, row


def _csv_rows(text: str, manifest: str) -> Iterator[tuple[int, dict]]:
  """Rows with the line each starts on (quoted captions may span lines)."""
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = next(reader, [])
    end = reader.line_num
    for values in reader:
      start, end = end + 1, reader.line_num
      if values:
        yield start, dict(zip(header, values))
  except csv.Error as e:
    raise ValueError(f"{manifest}:{reader.line_num}: not valid CSV ({e})") from None


def _manifest_captions(value, where: str, key: str) -> list[str]:
  if value is None:
    return []
  values = [value] if isinstance(value, str) else value
  if not isinstance(values, list) or not all(isinstance(c, str) for c in values):
    raise ValueError(f"{where}: {key!r} must be a string or a list of strings, got {value!r}")
  return [c.strip() for c in values if c.strip()]


def _manifest_items(
    path: str,
    manifest: str,
    image_key: str,
    caption_key: str,
    allow_missing: bool,
    allow_outside_root: bool,
) -> Items:
  root = path or _dirname(manifest)
  text = _read_text(manifest)
  rows = (_csv_rows if manifest.endswith(".csv") else _jsonl_rows)(text, manifest)
  items = []
  for line, row in rows:
    where = f"{manifest}:{line}"
    rel = row.get(image_key)
    if rel is None or rel == "":
      raise ValueError(
          f"{where}: no {image_key!r} " + ("field" if image_key not in row else "value")
      )
    if not isinstance(rel, str):
      raise ValueError(f"{where}: {image_key!r} must be a path string, got {rel!r}")
    image, skip = _resolve(root, rel, where, allow_outside_root)
    captions = _manifest_captions(row.get(caption_key), where, caption_key)
    if skip is None and not captions and not allow_missing:
      raise ValueError(f"{where}: no caption for image {image}")
    items.append(Entry(image, captions if skip is None else [], skip))
  return items


def folder_items(
    path: str,
    manifest: str | None = None,
    image_key: str = "image",
    caption_key: str = "caption",
    allow_missing_captions: bool = False,
    bad_caption: str = "skip",
    allow_outside_root: bool = False,
) -> Items:
  """The entries of a folder: sidecar `.txt` files or a manifest.

  A missing or empty caption raises ValueError unless `allow_missing_captions`
  (then its captions are empty, for the caller to skip and count); see the
  module docstring for `bad_caption` and `allow_outside_root`.
  """
  sources.check_bad_caption(bad_caption)
  if manifest:
    return _manifest_items(
        path, manifest, image_key, caption_key, allow_missing_captions, allow_outside_root
    )
  return _sidecar_items(path, allow_missing_captions, bad_caption)


def _load_json(path: str):
  text = _read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None


def _field(entry, i: int, group: str, key: str, kind, annotations: str):
  if not isinstance(entry, dict) or key not in entry:
    raise ValueError(f"{annotations}: {group}[{i}] has no {key!r}")
  value = entry[key]
  if not isinstance(value, kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    raise ValueError(
        f"{annotations}: {group}[{i}]: {key!r} must be a "
        f"{' or '.join(k.__name__ for k in kinds)}, got {value!r}"
    )
  return value


def coco_items(
    annotations: str,
    image_dir: str,
    allow_missing_captions: bool = False,
    allow_outside_root: bool = False,
) -> Items:
  """(image path, all its captions) of a COCO captions json, by image id."""
  data = _load_json(annotations)
  if not isinstance(data, dict):
    raise ValueError(
        f"{annotations}: expected a JSON object with 'images' and "
        f"'annotations', got {type(data).__name__}"
    )
  captions = {}
  for i, ann in enumerate(data.get("annotations", [])):
    image_id = _field(ann, i, "annotations", "image_id", (int, str), annotations)
    caption = _field(ann, i, "annotations", "caption", str, annotations)
    captions.setdefault(image_id, []).append(caption.strip())
  listed = []
  for i, img in enumerate(data.get("images", [])):
    image_id = _field(img, i, "images", "id", (int, str), annotations)
    listed.append((image_id, _field(img, i, "images", "file_name", str, annotations)))
  items = []
  for image_id, file_name in sorted(listed, key=lambda x: x[0]):
    path, skip = _resolve(
        image_dir, file_name, f"{annotations}: image {image_id}", allow_outside_root
    )
    caps = [c for c in captions.get(image_id, []) if c]
    if skip is None and not caps and not allow_missing_captions:
      raise ValueError(f"{annotations}: no caption for image {path}")
    items.append(Entry(path, caps if skip is None else [], skip))
  return items


class _FileSource:
  """Records are listed entries, decoded on read; a bad entry raises BadExampleError."""

  def __init__(
      self,
      name: str,
      items: Sequence[Sequence],
      min_side: int | None = None,
      max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
  ):
    self.name = name
    self.min_side = min_side
    self.max_decoded_mb = preprocess.check_max_decoded_mb(max_decoded_mb)
    self._items = [Entry(*it) for it in items]
    self.num_records = len(self._items)
    if not self._items:
      raise ValueError(f"{name}: no images found (empty dataset)")

  def read(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    path, captions, skip = self._items[index]
    if skip is not None:
      raise preprocess.BadExampleError(skip[1])
    if paths.is_remote(path):
      try:
        data = read_bytes(path)
      except OSError as e:
        raise preprocess.BadExampleError(f"{path}: cannot read ({e})") from e
      image = preprocess.decode_image(data, path, self.min_side, self.max_decoded_mb)
    else:
      image = preprocess.decode_image(path, path, self.min_side, self.max_decoded_mb)
    return image, sources.pick_caption(list(captions), rng, path)

  def captions(self, index: int) -> list[str]:
    """Every caption of record `index` (no image read), for the text-embedding cache."""
    return [str(c) for c in self._items[index].captions]


class FolderSource(_FileSource):
  """Images under a folder with sidecar `.txt` captions or a manifest."""

  def __init__(
      self,
      path: str,
      manifest: str | None = None,
      image_key: str = "image",
      caption_key: str = "caption",
      min_side: int | None = None,
      max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
      bad_caption: str = "skip",
      allow_outside_root: bool = False,
  ):
    items = folder_items(
        path,
        manifest,
        image_key,
        caption_key,
        bad_caption=bad_caption,
        allow_outside_root=allow_outside_root,
    )
    super().__init__(f"folder:{manifest or path}", items, min_side, max_decoded_mb)


class CocoJsonSource(_FileSource):
  """COCO `captions_*.json` + image folder; one record per image."""

  def __init__(
      self,
      annotations: str,
      image_dir: str,
      min_side: int | None = None,
      max_decoded_mb: float | None = preprocess.DEFAULT_MAX_DECODED_MB,
      allow_outside_root: bool = False,
  ):
    if not annotations or not image_dir:
      raise ValueError(
          "coco_json needs the captions file (annotations="
          f"{annotations!r}) and the image folder (path="
          f"{image_dir!r})"
      )
    super().__init__(
        f"coco_json:{annotations}",
        coco_items(annotations, image_dir, allow_outside_root=allow_outside_root),
        min_side,
        max_decoded_mb,
    )
