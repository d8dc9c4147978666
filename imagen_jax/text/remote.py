"""Local or remote (`gs://`) paths for the text package, through `imagen_jax.storage.paths`.

`path(p)` is a `pathlib.Path` for a local path and `paths.path(p)` (etils epath, gcsfs for
gs://) for a remote one. It also undoes a stale choice of etils': `epath` caches whether
to use TensorFlow's gfile the first time any path (a local one too) is used, so a process
that touched a local epath before `paths.prefer_gcsfs()` set ``EPATH_USE_TF=false`` would
still send gs:// to tf.io.gfile, which ignores the emulator/gcsfs settings.
"""
from __future__ import annotations

import os
import pathlib

from imagen_jax.storage import paths


def ensure_gcsfs() -> None:
  paths.prefer_gcsfs()
  if os.environ.get("EPATH_USE_TF", "").lower() in ("false", "0", "no"):
    try:
      from etils.epath import gpath  # pylint: disable=import-outside-toplevel
      cached = getattr(gpath, "_is_tf_installed", None)
      if cached is not None and hasattr(cached, "cache_clear") and cached():
        cached.cache_clear()
    except ImportError:
      pass


def path(p):
  s = os.fspath(p)
  if paths.is_remote(s):
    ensure_gcsfs()
    return paths.path(s)
  return pathlib.Path(s).expanduser()


def local_copy(p, cache_dir=None) -> pathlib.Path:
  if paths.is_remote(os.fspath(p)):
    ensure_gcsfs()
  return paths.local_copy(os.fspath(p), cache_dir)


def write_atomic(p, data) -> None:
  if paths.is_remote(os.fspath(p)):
    ensure_gcsfs()
  paths.write_atomic(p, data)
