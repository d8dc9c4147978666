"""A cache of caption embeddings on local disk or `gs://`, so training need not run T5.

Layout (v2; one subdirectory per encoder identity, so a changed encoder, tokenizer,
max_length or compute dtype never reads stale embeddings)::

  DIR/encoders/<fingerprint>.json        encoder fingerprint -> identity (see below)
  DIR/<identity>/meta.json               {"format": ".../v2", "dim", "max_length",
                                          "storage_dtype", "num_buckets", "encoder", ...}
  DIR/<identity>/data/<run>.npy          [T, D] rows of one put's entries, concatenated
  DIR/<identity>/runs/<run>.npz          that put's index: keys [n] S16 sorted,
                                          offsets [n], lengths [n]
  DIR/<identity>/index/<gen>/manifest.json   a compacted index: the runs it holds
  DIR/<identity>/index/<gen>/<bucket>/{keys,entries}.npy   one bucket of it

A caption's key is the first 16 bytes of sha256(identity, caption); its bucket is the
key's leading 32 bits scaled to `num_buckets` (256), so keys sorted bytewise are sorted
by bucket. Each caption is stored at its true length (``mask.sum()`` tokens, ``</s>``
included), by default in bfloat16 (kept as uint16 bits in the .npy, so it can be
memory-mapped).

Writing: `put` writes one data file, then its run index, each whole (a local temporary
file and a rename; on an object store one upload is all-or-nothing), so a data file
without a run index (an interrupted write) is ignored. Run names are unique per writer:
any number of processes may write to one cache at once. `compact()` merges the runs into
per-bucket sorted index files of a new generation (its manifest written last); concurrent
or repeated compactions are safe, as readers pick the generation listing the most runs
and read the runs it does not list as an overflow.

Reading (`get_many`, `missing`): keys are hashed in numpy, grouped by bucket, and looked
up with `np.searchsorted` in the bucket's key file, memory-mapped (a `gs://` cache's
bucket files are first copied to local disk with `paths.local_copy`, once per bucket
touched); nothing holds a per-caption Python dict. Figures per host: index memory is
the page cache of the touched bucket files (28 bytes per cached caption on local disk
once every bucket is touched: 11 GB for 400M captions, 17 MB for COCO's 616k) plus the
overflow runs (28 bytes per entry, in RAM; compact to keep it small). RPCs per batch on
`gs://`, once its buckets are copied: none for the index, one byte-range GET per
caption for the embeddings (issued concurrently), plus one small header GET per data
file the first time it is read. A local cache reads the data files through `np.memmap`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import time
import uuid
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from imagen_jax.storage import paths
from imagen_jax.text import remote

FORMAT = "imagen_jax.text.EmbeddingCache/v2"
_OLD_FORMATS = ("imagen_jax.text.EmbeddingCache/v1",)
_ALIAS_FORMAT = "imagen_jax.text.EncoderAlias/v1"
_STORAGE = {"bfloat16": np.uint16, "float32": np.float32}
KEY_BYTES = 16
DEFAULT_NUM_BUCKETS = 256
_KEY_DTYPE = f"S{KEY_BYTES}"
_READ_THREADS = 16


class CacheError(ValueError):
  """A cache directory that cannot be used as asked."""


def caption_keys(identity: str, captions: Sequence[str]) -> np.ndarray:
  """The cache keys (S16) of captions under an encoder identity."""
  prefix = identity.encode() + b"\0"
  return np.array(
      [hashlib.sha256(prefix + str(c).encode("utf-8")).digest()[:KEY_BYTES] for c in captions],
      dtype=_KEY_DTYPE,
  )


def _buckets(keys: np.ndarray, num_buckets: int) -> np.ndarray:
  raw = np.frombuffer(keys.tobytes(), np.uint8).reshape(len(keys), KEY_BYTES)
  top = raw[:, :4].astype(np.uint64)
  prefix = (top[:, 0] << 24) | (top[:, 1] << 16) | (top[:, 2] << 8) | top[:, 3]
  return ((prefix * np.uint64(num_buckets)) >> np.uint64(32)).astype(np.int64)


def _npz_bytes(**arrays) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def _read_json(p) -> dict:
  return json.loads(remote.path(p).read_text())


class _SortedIndex:
  """Sorted keys with (run, offset, length) entries: arrays, looked up by searchsorted."""

  def __init__(self, keys: np.ndarray, entries: np.ndarray):
    self.keys = keys  # S16 [n], sorted (may be a memmap)
    self.entries = entries  # uint32 [n, 3]: run id, row offset, length (may be a memmap)

  def __len__(self):
    return len(self.keys)

  def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found bool [m], entries uint32 [m, 3]) for query keys."""
    m = len(keys)
    found = np.zeros(m, bool)
    out = np.zeros((m, 3), np.uint32)
    if not len(self.keys) or not m:
      return found, out
    pos = np.searchsorted(self.keys, keys)
    ok = pos < len(self.keys)
    pos_ok = pos[ok]
    hit = np.asarray(self.keys[pos_ok]) == keys[ok]
    idx = np.flatnonzero(ok)[hit]
    found[idx] = True
    out[idx] = np.asarray(self.entries[pos_ok[hit]])
    return found, out


class EmbeddingCache:
  """Caption -> (embedding [len, D], mask) store for one encoder identity.

  Args:
    directory: cache root (shared by all encoders), a local path or `gs://...`.
    encoder_identity: `TextEncoder.identity`.
    max_length: L that `get_many` pads to (default: the one recorded by the first
      `put`; pass it to read a cache written by another tool).
    storage_dtype: "bfloat16" (default, half the size) or "float32" (exact).
    num_buckets: index buckets of a new cache (an existing one keeps its own).
    local_dir: where a remote cache's bucket files are copied (default:
      `paths.cache_root()`).
  """

  def __init__(
      self,
      directory,
      encoder_identity: str,
      *,
      max_length: int | None = None,
      storage_dtype: str = "bfloat16",
      num_buckets: int = DEFAULT_NUM_BUCKETS,
      local_dir=None,
  ):
    if storage_dtype not in _STORAGE:
      raise ValueError(f"storage_dtype must be one of {sorted(_STORAGE)}, got {storage_dtype!r}")
    if not encoder_identity or "/" in encoder_identity:
      raise ValueError(f"bad encoder identity {encoder_identity!r}")
    self.identity = encoder_identity
    self.directory = str(directory)
    self.root = remote.path(directory) / encoder_identity
    self.remote = paths.is_remote(self.directory)
    self._local_dir = local_dir
    self._max_length = max_length
    self._storage_dtype = storage_dtype
    self._num_buckets = int(num_buckets)
    self._dim = None
    self._meta_written = False
    self._alias: dict | None = None
    # The compacted generation: its run names (ids), lazily opened buckets.
    self._gen: str | None = None
    self._gen_runs: list[str] = []
    self._bucket_index: dict[int, _SortedIndex] = {}
    self.buckets_loaded = 0
    # Runs not in the generation: merged into one sorted overflow index.
    self._runs: list[str] = []  # run id -> name (generation's first)
    self._run_ids: dict[str, int] = {}
    self._overflow = _SortedIndex(np.zeros(0, _KEY_DTYPE), np.zeros((0, 3), np.uint32))
    self._overflow_runs: set[str] = set()
    self._headers: dict[int, tuple[str, int, int, np.dtype]] = {}
    self._mmaps: dict[int, np.ndarray] = {}
    self._pool = None
    self._read_meta()
    self.refresh()

  @classmethod
  def for_encoder(cls, directory, encoder, **kwargs) -> "EmbeddingCache":
    """The cache of a `TextEncoder` (its identity and max_length); `put` records the
    encoder's fingerprint so a reader can find this cache without loading weights."""
    kwargs.setdefault("max_length", encoder.max_length)
    cache = cls(directory, encoder.identity, **kwargs)
    fp = getattr(encoder, "fingerprint", None)
    if fp is not None:
      cache._alias = {
          "format": _ALIAS_FORMAT,
          "fingerprint": fp,
          "identity": encoder.identity,
          "encoder": str(encoder.source),
          "max_length": encoder.max_length,
          "dtype": encoder.dtype.name,
          "dim": encoder.dim,
      }
    return cache

  # -- finding a cache without the encoder's weights -------------------------------

  @staticmethod
  def aliases(directory) -> list[dict]:
    """The encoder records (`DIR/encoders/*.json`) of a cache root."""
    d = remote.path(directory) / "encoders"
    if not d.is_dir():
      return []
    out = []
    for f in sorted(d.glob("*.json")):
      try:
        out.append(_read_json(f))
      except (OSError, json.JSONDecodeError):
        continue
    return out

  @classmethod
  def resolve(
      cls,
      directory,
      *,
      fingerprint: str | None = None,
      encoder: str | None = None,
      max_length: int | None = None,
      dtype: str = "float32",
  ) -> dict | None:
    """The alias record of the encoder with `fingerprint` (cheap, see
    `text.describe_encoder`), else of the one written from the path `encoder` with
    `max_length`/`dtype` (for an encoder directory that is gone); None if there is none.
    CacheError if the path matches several different encoders."""
    records = cls.aliases(directory)
    if fingerprint is not None:
      hits = [r for r in records if r.get("fingerprint") == fingerprint]
      if hits:
        return hits[0]
      if encoder is None:
        return None
    hits = [
        r
        for r in records
        if r.get("encoder") == str(encoder)
        and (max_length is None or r.get("max_length") == max_length)
        and r.get("dtype", "float32") == dtype
    ]
    identities = sorted({r["identity"] for r in hits})
    if len(identities) > 1:
      raise CacheError(
          f"{directory}: {len(identities)} different encoders were cached from "
          f"{encoder!r} (max_length={max_length}): {identities}; restore the encoder "
          "directory so its fingerprint picks one, or use a fresh cache_dir"
      )
    return hits[0] if hits else None

  @staticmethod
  def old_format_dirs(directory) -> list[str]:
    """Identity directories under a cache root written in an older layout."""
    root = remote.path(directory)
    if not root.is_dir():
      return []
    out = []
    for d in sorted(root.iterdir()):
      meta = d / "meta.json"
      if d.name != "encoders" and meta.is_file():
        try:
          if _read_json(meta).get("format") in _OLD_FORMATS:
            out.append(str(d))
        except (OSError, json.JSONDecodeError):
          pass
    return out

  # -- metadata ------------------------------------------------------------

  def _read_meta(self):
    meta_path = self.root / "meta.json"
    if not meta_path.is_file():
      return
    meta = _read_json(meta_path)
    fmt = meta.get("format")
    if fmt != FORMAT:
      raise CacheError(
          f"{meta_path}: a cache in layout {fmt!r}, this version reads {FORMAT!r}; "
          "re-run scripts/precompute_text_embeddings.py into a new cache_dir (the old "
          "layout indexed every caption in one in-memory dict)"
      )
    if meta.get("identity") != self.identity:
      raise CacheError(
          f"{meta_path}: written for encoder {meta.get('identity')!r}, not {self.identity!r}"
      )
    self._dim = int(meta["dim"])
    self._storage_dtype = meta["storage_dtype"]
    self._num_buckets = int(meta["num_buckets"])
    if self._max_length is None:
      self._max_length = int(meta["max_length"])

  def _write_meta(self, dim: int, max_length: int):
    if self._meta_written:
      return
    meta_path = self.root / "meta.json"
    if not meta_path.is_file():
      meta = {
          "format": FORMAT,
          "identity": self.identity,
          "dim": dim,
          "max_length": max_length,
          "storage_dtype": self._storage_dtype,
          "num_buckets": self._num_buckets,
          "key_bytes": KEY_BYTES,
      }
      if self._alias:
        meta.update({k: self._alias[k] for k in ("encoder", "dtype", "fingerprint")})
      remote.write_atomic(meta_path, json.dumps(meta, indent=1))
    else:
      self._read_meta()
    if self._alias:
      alias_path = remote.path(self.directory) / "encoders" / f"{self._alias['fingerprint']}.json"
      if not alias_path.is_file():
        remote.write_atomic(
            alias_path, json.dumps({**self._alias, "written": time.time()}, indent=1)
        )
    self._meta_written = True

  @property
  def dim(self) -> int | None:
    return self._dim

  @property
  def max_length(self) -> int | None:
    return self._max_length

  @property
  def num_buckets(self) -> int:
    return self._num_buckets

  # -- index ---------------------------------------------------------------

  def _run_id(self, name: str) -> int:
    if name not in self._run_ids:
      self._run_ids[name] = len(self._runs)
      self._runs.append(name)
    return self._run_ids[name]

  def _generations(self) -> list[tuple[int, str, dict]]:
    d = self.root / "index"
    if not d.is_dir():
      return []
    out = []
    for g in d.iterdir():
      m = g / "manifest.json"
      if m.is_file():
        manifest = _read_json(m)
        out.append((len(manifest["runs"]), g.name, manifest))
    return sorted(out)

  def refresh(self):
    """Picks up runs (and compacted generations) written since, e.g. by other processes."""
    if not self.root.is_dir():
      return
    if self._dim is None:
      self._read_meta()
    gens = self._generations()
    if gens and (self._gen is None or gens[-1][0] > len(self._gen_runs)):
      _, name, manifest = gens[-1]
      self._gen, self._gen_runs = name, list(manifest["runs"])
      self._runs, self._run_ids = [], {}
      for r in self._gen_runs:
        self._run_id(r)
      self._bucket_index = {}
      self.buckets_loaded = 0
      self._headers, self._mmaps = {}, {}
      self._overflow_runs = set()
      self._overflow = _SortedIndex(np.zeros(0, _KEY_DTYPE), np.zeros((0, 3), np.uint32))
    in_gen = set(self._gen_runs)
    runs_dir = self.root / "runs"
    new = []
    if runs_dir.is_dir():
      for f in sorted(runs_dir.glob("*.npz")):
        run = f.name[: -len(".npz")]
        if run not in in_gen and run not in self._overflow_runs:
          new.append((run, f))
    if new:
      keys, entries = [self._overflow.keys], [self._overflow.entries]
      for run, f in new:
        with np.load(io.BytesIO(f.read_bytes())) as idx:
          k = idx["keys"].astype(_KEY_DTYPE)
          e = np.stack(
              [
                  np.full(len(k), self._run_id(run), np.uint32),
                  idx["offsets"].astype(np.uint32),
                  idx["lengths"].astype(np.uint32),
              ],
              axis=1,
          )
        keys.append(k)
        entries.append(e)
        self._overflow_runs.add(run)
      self._overflow = self._merge(np.concatenate(keys), np.concatenate(entries))

  @staticmethod
  def _merge(keys: np.ndarray, entries: np.ndarray) -> _SortedIndex:
    """Sorted, one entry per key (the first given)."""
    order = np.argsort(keys, kind="stable")
    keys, entries = keys[order], entries[order]
    keep = np.ones(len(keys), bool)
    keep[1:] = keys[1:] != keys[:-1]
    return _SortedIndex(np.ascontiguousarray(keys[keep]), np.ascontiguousarray(entries[keep]))

  def _bucket(self, b: int) -> _SortedIndex:
    if b not in self._bucket_index:
      d = self.root / "index" / self._gen / f"{b:05d}"
      local = remote.local_copy(d, self._local_dir) if self.remote else d
      local = remote.path(local)
      self._bucket_index[b] = _SortedIndex(
          np.load(os.fspath(local / "keys.npy"), mmap_mode="r"),
          np.load(os.fspath(local / "entries.npy"), mmap_mode="r"),
      )
      self.buckets_loaded += 1
    return self._bucket_index[b]

  def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, entries = self._overflow.lookup(keys)
    if self._gen is not None and len(keys):
      todo = np.flatnonzero(~found)
      buckets = _buckets(keys[todo], self._num_buckets)
      for b in np.unique(buckets):
        sel = todo[buckets == b]
        f, e = self._bucket(int(b)).lookup(keys[sel])
        found[sel[f]] = True
        entries[sel[f]] = e[f]
    return found, entries

  def key(self, caption: str) -> bytes:
    return bytes(caption_keys(self.identity, [caption])[0])

  def __len__(self) -> int:
    """Cached captions (reads the generation's manifest count, no bucket files)."""
    n = 0
    if self._gen is not None:
      n = int(_read_json(self.root / "index" / self._gen / "manifest.json")["num_keys"])
    if len(self._overflow):
      if self._gen is None:
        n += len(self._overflow)
      else:  # overflow entries the generation lacks
        keys = np.asarray(self._overflow.keys)
        buckets = _buckets(keys, self._num_buckets)
        for b in np.unique(buckets):
          f, _ = self._bucket(int(b)).lookup(keys[buckets == b])
          n += int((~f).sum())
    return n

  def __contains__(self, caption: str) -> bool:
    return not self.missing([caption])

  def contains(self, captions: Sequence[str]) -> np.ndarray:
    """bool [len(captions)]: which captions are cached."""
    return self._lookup(caption_keys(self.identity, captions))[0]

  def missing(self, captions: Sequence[str]) -> list[str]:
    """Captions not in the cache, deduplicated, in first-seen order."""
    captions = [str(c) for c in captions]
    found = self.contains(captions)
    out, seen = [], set()
    for c, f in zip(captions, found):
      if not f and c not in seen:
        seen.add(c)
        out.append(c)
    return out

  # -- writing -------------------------------------------------------------

  def put(self, captions: Sequence[str], emb, mask) -> int:
    """Stores captions' embeddings (``emb [B, L, D]``, ``mask [B, L]``) as one run.

    Each row is stored at its true length ``mask[i].sum()`` (the mask must be
    a prefix of True values, as T5 tokenization gives). Captions already
    cached, or repeated in the batch, are skipped. Returns the number stored.
    """
    emb = np.asarray(emb)
    mask = np.asarray(mask, bool)
    if emb.ndim != 3 or mask.shape != emb.shape[:2] or len(captions) != len(emb):
      raise ValueError(
          f"put: expected {len(captions)} captions, emb [B, L, D] and mask "
          f"[B, L], got emb {emb.shape} and mask {mask.shape}"
      )
    _, length, dim = emb.shape
    if self._dim is not None and dim != self._dim:
      raise ValueError(f"{self.root}: cache holds dim {self._dim}, got {dim}")
    lengths = mask.sum(axis=1)
    if not np.all(mask == (np.arange(length)[None] < lengths[:, None])):
      raise ValueError("put: each mask row must be True then False (a prefix)")
    if self._max_length is None:
      self._max_length = length
    self._write_meta(dim, self._max_length)
    self._dim = dim
    keys = caption_keys(self.identity, captions)
    found, _ = self._lookup(keys)
    _, first = np.unique(keys, return_index=True)
    new = np.zeros(len(keys), bool)
    new[first] = True
    rows_i = np.flatnonzero(new & ~found)
    if not len(rows_i):
      return 0
    lens = lengths[rows_i].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    data = np.concatenate([emb[i, :n] for i, n in zip(rows_i, lens)]).astype(np.float32)
    if self._storage_dtype == "bfloat16":
      data = data.astype(ml_dtypes.bfloat16).view(np.uint16)
    run = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:16]}"
    remote.write_atomic(self.root / "data" / f"{run}.npy", _npy_bytes(data))
    order = np.argsort(keys[rows_i], kind="stable")
    remote.write_atomic(
        self.root / "runs" / f"{run}.npz",
        _npz_bytes(
            keys=keys[rows_i][order], offsets=offsets[order], lengths=lens[order].astype(np.int32)
        ),
    )
    run_id = self._run_id(run)
    entries = np.stack(
        [
            np.full(len(rows_i), run_id, np.uint32),
            offsets.astype(np.uint32),
            lens.astype(np.uint32),
        ],
        axis=1,
    )
    self._overflow = self._merge(
        np.concatenate([self._overflow.keys, keys[rows_i]]),
        np.concatenate([self._overflow.entries, entries]),
    )
    self._overflow_runs.add(run)
    return len(rows_i)

  def compact(self) -> int:
    """Merges every run into a new generation of per-bucket index files; returns its
    number of keys. Memory: the new runs' entries (28 bytes each) plus one old bucket."""
    self.refresh()
    if not self._overflow_runs:
      return len(self)
    runs = list(self._runs)  # ids: the generation's runs first, then the overflow's
    over_keys, over_entries = np.asarray(self._overflow.keys), np.asarray(self._overflow.entries)
    over_b = _buckets(over_keys, self._num_buckets) if len(over_keys) else np.zeros(0, np.int64)
    gen = f"{len(runs):09d}-{uuid.uuid4().hex[:12]}"
    gen_dir = self.root / "index" / gen
    total = 0
    for b in range(self._num_buckets):
      lo, hi = np.searchsorted(over_b, [b, b + 1])
      keys, entries = over_keys[lo:hi], over_entries[lo:hi]
      if self._gen is not None:
        old = self._bucket(b)
        keys = np.concatenate([np.asarray(old.keys), keys])
        entries = np.concatenate([np.asarray(old.entries), entries])
      merged = self._merge(keys, entries)
      total += len(merged)
      remote.write_atomic(gen_dir / f"{b:05d}" / "keys.npy", _npy_bytes(merged.keys))
      remote.write_atomic(gen_dir / f"{b:05d}" / "entries.npy", _npy_bytes(merged.entries))
      if self._gen is not None:
        self._bucket_index.pop(b, None)
    remote.write_atomic(
        gen_dir / "manifest.json",
        json.dumps({"runs": runs, "num_keys": total, "num_buckets": self._num_buckets}),
    )
    self._gen = None
    self._gen_runs = []
    self.refresh()
    return total

  # -- reading -------------------------------------------------------------

  def _data_path(self, run_id: int):
    return self.root / "data" / f"{self._runs[run_id]}.npy"

  def _fs(self):
    if not hasattr(self, "_fs_cached"):
      import fsspec  # pylint: disable=import-outside-toplevel

      self._fs_cached = fsspec.core.url_to_fs(self.directory)[0]
    return self._fs_cached

  def _remote_name(self, run_id: int) -> str:
    import fsspec  # pylint: disable=import-outside-toplevel

    return fsspec.core.url_to_fs(os.fspath(self._data_path(run_id)))[1]

  def _header(self, run_id: int) -> tuple[str, int, int, np.dtype]:
    """(object name, byte offset of the data, row width, dtype) of a run's .npy, read once
    (one small ranged GET)."""
    if run_id not in self._headers:
      name = self._remote_name(run_id)
      head = io.BytesIO(self._fs().cat_file(name, start=0, end=4096))
      version = np.lib.format.read_magic(head)
      read = (
          np.lib.format.read_array_header_1_0
          if version == (1, 0)
          else np.lib.format.read_array_header_2_0
      )
      shape, fortran, dtype = read(head)
      if fortran or len(shape) != 2:
        raise CacheError(
            f"{self._data_path(run_id)}: expected C-ordered [T, D] data, got shape {shape}"
        )
      self._headers[run_id] = (name, head.tell(), int(shape[1]), dtype)
    return self._headers[run_id]

  def _read_rows_local(self, run_id, off, n):
    if run_id not in self._mmaps:
      self._mmaps[run_id] = np.load(os.fspath(self._data_path(run_id)), mmap_mode="r")
    return np.asarray(self._mmaps[run_id][off : off + n])

  def _read_rows_remote(self, run_id, off, n):
    """One ranged GET of exactly the caption's rows."""
    name, start, width, dtype = self._header(run_id)
    row = width * dtype.itemsize
    raw = self._fs().cat_file(name, start=start + off * row, end=start + (off + n) * row)
    if len(raw) != n * row:
      raise CacheError(
          f"{self._data_path(run_id)}: short read ({len(raw)} of {n * row} "
          f"bytes at row {off}): the data file is truncated"
      )
    return np.frombuffer(raw, dtype).reshape(n, width)

  def get_many(self, captions: Sequence[str], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(emb [B, max_length, D] dtype, mask bool [B, max_length])``, zero-padded.

    Raises KeyError (with the number and an example) if any caption is missing.
    """
    captions = [str(c) for c in captions]
    found, entries = self._lookup(caption_keys(self.identity, captions))
    if not found.all():
      missing = [c for c, f in zip(captions, found) if not f]
      raise KeyError(
          f"{self.root}: {len(missing)} of {len(captions)} captions not cached "
          f"(e.g. {missing[0]!r}); run scripts/precompute_text_embeddings.py"
      )
    if self._max_length is None or self._dim is None:
      raise ValueError(f"{self.root}: max_length/dim unknown; pass max_length")
    length = self._max_length
    emb = np.zeros((len(captions), length, self._dim), dtype)
    mask = np.zeros((len(captions), length), bool)
    jobs = [(int(r), int(o), min(int(n), length)) for r, o, n in entries]
    if self.remote:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(_READ_THREADS)
      rows = list(self._pool.map(lambda j: self._read_rows_remote(*j), jobs))
    else:
      rows = [self._read_rows_local(*j) for j in jobs]
    for i, r in enumerate(rows):
      if self._storage_dtype == "bfloat16":
        r = r.view(ml_dtypes.bfloat16)
      emb[i, : len(r)] = r.astype(dtype)
      mask[i, : len(r)] = True
    return emb, mask

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None

  def stats(self) -> dict[str, Any]:
    """Index structure sizes, for logs and tests."""
    return {
        "generation": self._gen,
        "generation_runs": len(self._gen_runs),
        "overflow_runs": len(self._overflow_runs),
        "overflow_keys": len(self._overflow),
        "buckets_loaded": self.buckets_loaded,
        "num_buckets": self._num_buckets,
    }
