"""Paths that may be local or remote (`gs://`, any fsspec scheme), through etils.epath.

* `path(p)`: an `epath.Path`, with `gs://` served by gcsfs (a declared dependency) even where
  TensorFlow is installed: etils would otherwise pick `tf.io.gfile`, whose GCS client needs
  TensorFlow at run time and ignores `STORAGE_EMULATOR_HOST`. A user's own `EPATH_USE_TF`
  wins. Orbax and TFDS use epath too, so they follow the same choice.
* `local_copy(p)`: a local directory or file with the contents of `p` (itself when `p` is
  local), for readers that need a local file (safetensors' mmap, SentencePiece, torch):
  copied once into a cache keyed by the remote path and reused while the remote listing
  (names, sizes, object versions) is unchanged. The copy is written to a temporary folder and renamed, so
  an interrupted download is never mistaken for a complete one.
"""

from __future__ import annotations

import fcntl
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
  return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "imagen_jax")


def find_files(p: str | os.PathLike) -> dict[str, dict]:
  """{relative name ("/"-separated): info} of every file under folder `p`, local or remote
  (one listing call on an object store); info has "size" and, where the store gives one, a
  version ("generation", "crc32c", "md5Hash" on GCS; "mtime" locally).
  FileNotFoundError naming `p` when it is not a folder."""
  s = os.fspath(p)
  if not is_remote(s):
    if not os.path.isdir(s):
      raise FileNotFoundError(f"{s} is not a directory")
    out = {}
    for dirpath, _, files in os.walk(s):
      for f in files:
        full = os.path.join(dirpath, f)
        st = os.stat(full)
        out[os.path.relpath(full, s).replace(os.sep, "/")] = {
            "size": st.st_size,
            "mtime": st.st_mtime_ns,
        }
    return out
  prefer_gcsfs()
  import fsspec  # pylint: disable=import-outside-toplevel

  fs, bare = fsspec.core.url_to_fs(s)
  bare = bare.rstrip("/")
  found = {
      name[len(bare) + 1 :]: info
      for name, info in fs.find(bare, detail=True).items()
      if info.get("type") != "directory" and name.startswith(bare + "/")
  }
  if not found and not fs.isdir(bare):
    raise FileNotFoundError(f"{s} is not a directory")
  return found


def _version(info: dict) -> list:
  return [
      int(info.get("size") or 0),
      str(
          info.get("generation")
          or info.get("crc32c")
          or info.get("md5Hash")
          or info.get("mtime")
          or ""
      ),
  ]


def _remote_listing(p: str) -> tuple[bool, list]:
  """(is a folder, sorted [relative name, size, version] of every file) of remote `p`."""
  import fsspec  # pylint: disable=import-outside-toplevel

  prefer_gcsfs()
  fs, bare = fsspec.core.url_to_fs(p)
  if fs.isfile(bare):
    return False, [["", *_version(fs.info(bare))]]
  try:
    return True, sorted([name, *_version(info)] for name, info in find_files(p).items())
  except FileNotFoundError:
    raise FileNotFoundError(f"{p} does not exist") from None


def _stream(src: epath.Path, dst: pathlib.Path) -> None:
  """Copies in 16 MiB pieces: a T5-XXL shard is several GB, more than a host should hold."""
  with src.open("rb") as r, open(dst, "wb") as w:
    shutil.copyfileobj(r, w, 16 << 20)


def local_copy(p: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """A local path holding what `p` holds (a file or a folder); `p` itself when local.

  Reused while the remote listing (names, sizes and object versions) is unchanged; several
  processes of one host may ask at once (a file lock: one copies, the others wait and reuse
  it). Raises FileNotFoundError naming `p` when it does not exist.
  """
  if not is_remote(p):
    return pathlib.Path(p)
  src = path(p)
  is_dir, listing = _remote_listing(os.fspath(p))
  key = hashlib.sha256(os.fspath(p).rstrip("/").encode()).hexdigest()[:16]
  base = pathlib.Path(cache_dir) if cache_dir else cache_root() / "remote"
  dest = base / f"{key}-{src.name or 'root'}"
  manifest = base / f"{dest.name}.listing.json"
  base.mkdir(parents=True, exist_ok=True)
  with open(base / f"{dest.name}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if dest.exists() and manifest.is_file() and json.loads(manifest.read_text()) == listing:
        return dest
      tmp = base / f".{dest.name}.{uuid.uuid4().hex}.tmp"
      try:
        if not is_dir:
          _stream(src, tmp)
        else:
          tmp.mkdir(parents=True)
          for rel, *_ in listing:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            _stream(src / rel, out)
        manifest.unlink(missing_ok=True)
        if dest.exists():
          shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(tmp, dest)
      finally:
        if tmp.exists():
          shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
      write_atomic(manifest, json.dumps(listing))
      return dest
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


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
