"""The three input formats, read lazily as `Item`s (key, captions, image bytes).

* `CocoJsonReader(annotations, images)`: what cocodataset.org ships, a
  `captions_*.json` and its image folder; one item per image with all its
  captions (`folder_source.coco_items`).
* `FolderReader(path, manifest=None)`: images with sidecar `.txt` captions or
  a JSONL/CSV manifest, as the training-time folder source reads them
  (`folder_source.folder_items`).
* `WebDatasetReader(pattern)`: img2dataset's tar shards (`DIR/*.tar`, a
  folder of them, or one file). Members are grouped by key (the member path
  up to the first dot of its basename; adjacent members share a key, as
  webdataset writes them); the image is the member ending in jpg/jpeg/png/webp,
  the caption the `.txt` member, else the `.json` member's "caption". Tars are
  streamed with the standard library's `tarfile` (`r|*`), from local disk or
  gs://, never extracted; a member whose name is absolute or has a `..`
  component is skipped ("unsafe member name"), links and devices are ignored.

Every path may be local or `gs://`. A reader has `name`, `units` (a sorted
list: images for COCO/folder, tar files for webdataset; the unit that is
partitioned into output shards) and `items(units)`. An item that cannot be
used as listed (no caption, no image, the rest of a corrupt tar, a path
outside the dataset root, a caption file that is not UTF-8) carries a `skip`
reason instead of a loader, so it is counted, not lost silently. Local files
are opened only when they are regular files (a FIFO is counted as an
"unreadable file", never opened).
"""

import dataclasses
import functools
import glob
import json
import os
import posixpath
import tarfile
from typing import Callable, Iterator, Sequence

from imagen_jax.data import folder_source
from imagen_jax.data import preprocess
from imagen_jax.storage import paths

WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SOURCES = ("coco_json", "folder", "webdataset")


@dataclasses.dataclass(frozen=True)
class Item:
  key: str  # unique within the dataset
  captions: tuple[str, ...]
  load: Callable[[], bytes] | None = None  # the encoded image; may raise
  skip: tuple[str, str] | None = None  # (reason, detail) when unusable


def _relative(root: str, path: str) -> str:
  root = root.rstrip("/").rstrip(os.sep)
  return path[len(root) + 1 :] if path.startswith(root) else path


class _ListedReader:
  """Items listed up front: (image path, captions) pairs."""

  def __init__(self, name: str, root: str, listed: Sequence[tuple[str, list]]):
    self.name = name
    self.root = root
    self.units = list(listed)

  def items(self, units) -> Iterator[Item]:
    for path, captions, skip in units:
      key = _relative(self.root, path)
      if skip is not None:
        yield Item(key, (), skip=skip)
      elif not captions:
        yield Item(key, (), skip=("no caption", path))
      else:
        yield Item(key, tuple(captions), load=functools.partial(folder_source.read_bytes, path))


class CocoJsonReader(_ListedReader):

  def __init__(self, annotations: str, images: str, allow_outside_root: bool = False):
    if not annotations or not images:
      raise ValueError(
          "--source coco_json needs --annotations (a "
          "captions_*.json) and --images (its image folder)"
      )
    super().__init__(
        f"coco_json:{annotations}",
        images,
        folder_source.coco_items(
            annotations, images, allow_missing_captions=True, allow_outside_root=allow_outside_root
        ),
    )


class FolderReader(_ListedReader):

  def __init__(self, path: str, manifest: str | None = None, allow_outside_root: bool = False):
    if not path and not manifest:
      raise ValueError("--source folder needs --path (the image folder)")
    root = path or posixpath.dirname(manifest)
    super().__init__(
        f"folder:{manifest or path}",
        root,
        folder_source.folder_items(
            path, manifest, allow_missing_captions=True, allow_outside_root=allow_outside_root
        ),
    )


def list_tars(pattern: str) -> list[str]:
  """The sorted tar files of a glob pattern, a folder (its *.tar) or a file."""
  has_glob = any(c in pattern for c in "*?[")
  if paths.is_remote(pattern):
    import fsspec  # pylint: disable=import-outside-toplevel

    paths.prefer_gcsfs()
    fs, bare = fsspec.core.url_to_fs(pattern)
    protocol = pattern.split("://", 1)[0]
    if not has_glob and fs.isdir(bare):
      bare = bare.rstrip("/") + "/*.tar"
      has_glob = True
    found = fs.glob(bare) if has_glob else ([bare] if fs.isfile(bare) else [])
    found = [f"{protocol}://{f}" for f in found]
  else:
    if not has_glob and os.path.isdir(pattern):
      pattern = os.path.join(pattern, "*.tar")
    found = (
        glob.glob(pattern)
        if any(c in pattern for c in "*?[")
        else ([pattern] if os.path.isfile(pattern) else [])
    )
  if not found:
    raise ValueError(f"--source webdataset: no tar files match {pattern!r}")
  return sorted(found)


def _caption_of(members: dict[str, bytes]) -> list[str]:
  if "txt" in members:
    text = members["txt"].decode("utf-8").strip()
    return [text] if text else []
  if "json" in members:
    value = json.loads(members["json"]).get("caption")
    values = value if isinstance(value, list) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]
  return []


def _group_item(tar_name: str, key: str, members: dict[str, bytes]) -> Item:
  full_key = f"{tar_name}/{key}"
  image = next(
      (ext for ext in members if ext.rsplit(".", 1)[-1] in WEBDATASET_IMAGE_EXTENSIONS), None
  )
  if image is None:
    return Item(full_key, (), skip=("no image", f"{full_key}: members {sorted(members)}"))
  try:
    captions = _caption_of(members)
  except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
    return Item(full_key, (), skip=("bad caption", f"{full_key}: {e}"))
  if not captions:
    return Item(full_key, (), skip=("no caption", full_key))
  data = members[image]
  return Item(full_key, tuple(captions), load=lambda: data)


def _open_binary(path: str):
  if paths.is_remote(path):
    return paths.path(path).open("rb")
  return preprocess.open_regular_file(path)


def unsafe_member_name(name: str) -> bool:
  """A tar member name that is absolute or climbs out with `..` (never extracted, but
  not a key to store either)."""
  parts = name.replace("\\", "/").split("/")
  return (
      name.startswith(("/", "\\"))
      or ".." in parts
      or (len(name) > 2 and name[1] == ":" and name[2] in "/\\")
  )


def _flush(tar_path: str, tar_name: str, key: str, members: dict) -> Item:
  if unsafe_member_name(key):
    return Item(
        f"{tar_name}/{key}",
        (),
        skip=(
            "unsafe member name",
            f"{tar_path}: members {key!r}.* have an absolute name or '..'; not read",
        ),
    )
  return _group_item(tar_name, key, members)


def tar_items(tar_path: str) -> Iterator[Item]:
  """The samples of one webdataset tar, streamed; a read error ends the tar with a
  "corrupt tar" item for the sample it cut short (if any) and one for the rest of the tar
  (the samples before it are kept). Members with unsafe names are skipped unread."""
  tar_name = posixpath.basename(tar_path.rstrip("/"))
  tar_name = tar_name[: -len(".tar")] if tar_name.endswith(".tar") else tar_name
  key, members = None, {}
  try:
    with _open_binary(tar_path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        dirname, base = posixpath.split(member.name)
        stem, dot, ext = base.partition(".")
        if not stem or not dot:
          continue  # hidden files, members without an extension
        member_key = posixpath.join(dirname, stem)
        if key is not None and member_key != key:
          yield _flush(tar_path, tar_name, key, members)
          members = {}
        key = member_key
        if not unsafe_member_name(member.name):
          members[ext.lower()] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    if key is not None:  # the sample being read when the tar broke: counted, not dropped
      yield Item(
          f"{tar_name}/{key}",
          (),
          skip=("corrupt tar", f"{tar_path}: {key} cut short by {type(e).__name__}"),
      )
    yield Item(
        f"{tar_name}/<tar>", (), skip=("corrupt tar", f"{tar_path}: {type(e).__name__}: {e}")
    )
    return
  if key is not None:
    yield _flush(tar_path, tar_name, key, members)


class WebDatasetReader:

  def __init__(self, pattern: str):
    if not pattern:
      raise ValueError("--source webdataset needs --path ('DIR/*.tar')")
    self.name = f"webdataset:{pattern}"
    self.units = list_tars(pattern)

  def items(self, units) -> Iterator[Item]:
    for tar_path in units:
      yield from tar_items(tar_path)


def open_reader(
    source: str,
    *,
    path: str = "",
    annotations: str = "",
    images: str = "",
    manifest: str | None = None,
    allow_outside_root: bool = False,
):
  """The reader for `--source` (one of SOURCES) and its flags."""
  if source == "coco_json":
    return CocoJsonReader(annotations, images or path, allow_outside_root)
  if source == "folder":
    return FolderReader(path, manifest, allow_outside_root)
  if source == "webdataset":
    return WebDatasetReader(path)
  raise ValueError(f"unknown --source {source!r}; expected one of {', '.join(SOURCES)}")
