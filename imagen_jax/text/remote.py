"""Local or remote (`gs://`) paths for the text package, through `imagen_jax.storage.paths`.

`path(p)` is a `pathlib.Path` for a local path (with `~` expanded) and `paths.path(p)`
(etils epath, gcsfs for gs://) for a remote one; `local_copy` and `write_atomic` are
storage's own.
"""

from __future__ import annotations

import os
import pathlib

from imagen_jax.storage import paths

local_copy = paths.local_copy
write_atomic = paths.write_atomic


def path(p):
  s = os.fspath(p)
  if paths.is_remote(s):
    return paths.path(s)
  return pathlib.Path(s).expanduser()
