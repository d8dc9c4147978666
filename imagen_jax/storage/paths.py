"""Paths that may be local or remote (`gs://`, any fsspec scheme), through etils.epath.

* `path(p)`: an `epath.Path`, with `gs://` served by gcsfs (a declared dependency) even where
  TensorFlow is installed: etils would otherwise pick `tf.io.gfile`, whose GCS client needs
  TensorFlow at run time and ignores `STORAGE_EMULATOR_HOST`. A user's own `EPATH_USE_TF`
  wins. Orbax and TFDS use epath too, so they follow the same choice.
* `local_copy(p)`: a local directory or file with the contents of `p` (itself when `p` is
  local), for readers that need a local file (safetensors' mmap, SentencePiece, torch):
  copied once into a cache keyed by the remote path and reused while the remote listing
  (names and sizes) is unchanged. The copy is written to a temporary folder and renamed, so
  an interrupted download is never mistaken for a complete one.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid

from etils import epath

CACHE_ENV = "IMAGEN_JAX_CACHE"


def prefer_gcsfs() -> None:
  os.environ.setdefault("EPATH_USE_TF", "false")
  # etils caches its TensorFlow choice the first time any path (a local one too) is made:
  # one made before the line above would still send gs:// to tf.io.gfile.
  if os.environ["EPATH_USE_TF"].lower() in ("false", "no", "f", "0"):
    from etils.epath import gpath  # pylint: disable=import-outside-toplevel
    cached = getattr(gpath, "_is_tf_installed", None)
    if hasattr(cached, "cache_clear") and cached():
      cached.cache_clear()


def is_remote(p: str | os.PathLike) -> bool:
  s = os.fspath(p)
  return "://" in s and not s.startswith("file://")


def path(p: str | os.PathLike) -> epath.Path:
  """`epath.Path(p)` with gs:// through gcsfs (see the module docstring)."""
  if is_remote(p):
    prefer_gcsfs()
  return epath.Path(p)


def cache_root() -> pathlib.Path:
  """`$IMAGEN_JAX_CACHE`, else `~/.cache/imagen_jax` (local copies of remote files)."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or
                      pathlib.Path.home() / ".cache" / "imagen_jax")


def _listing(p: str) -> tuple[bool, list[tuple[str, int]]]:
  """(is a folder, [(relative name, size)] of every file under remote `p`), one listing call."""
  import fsspec  # pylint: disable=import-outside-toplevel
  fs, bare = fsspec.core.url_to_fs(p)
  bare = bare.rstrip("/")
  if fs.isfile(bare):
    return False, [("", int(fs.size(bare)))]
  found = fs.find(bare, detail=True)
  out = sorted((name[len(bare) + 1:], int(info.get("size") or 0))
               for name, info in found.items() if info.get("type") != "directory")
  if not out and not fs.isdir(bare):
    raise FileNotFoundError(f"{p} does not exist")
  return True, out


def local_copy(p: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> pathlib.Path:
  """A local path holding what `p` holds (a file or a folder); `p` itself when local.

  Raises FileNotFoundError naming `p` when it does not exist.
  """
  if not is_remote(p):
    return pathlib.Path(p)
  src = path(p)
  is_dir, listing = _listing(os.fspath(p))
  key = hashlib.sha256(os.fspath(p).rstrip("/").encode()).hexdigest()[:16]
  base = pathlib.Path(cache_dir) if cache_dir else cache_root() / "remote"
  dest = base / f"{key}-{src.name or 'root'}"
  manifest = base / f"{dest.name}.listing.json"
  if dest.exists() and manifest.is_file() and json.loads(manifest.read_text()) == [
      list(x) for x in listing]:
    return dest
  base.mkdir(parents=True, exist_ok=True)
  tmp = base / f".{dest.name}.{uuid.uuid4().hex}.tmp"
  try:
    if not is_dir:
      tmp.write_bytes(src.read_bytes())
    else:
      tmp.mkdir(parents=True)
      for rel, _ in listing:
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((src / rel).read_bytes())
    if dest.exists():
      shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(tmp, dest)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
  manifest.write_text(json.dumps(listing))
  return dest


def write_atomic(p: str | os.PathLike, data: bytes | str) -> None:
  """Writes a file whole: locally through a temporary file and a rename; on object stores a
  single upload is already all-or-nothing."""
  data = data.encode("utf-8") if isinstance(data, str) else data
  target = path(p)
  if is_remote(p):
    target.write_bytes(data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, target)
