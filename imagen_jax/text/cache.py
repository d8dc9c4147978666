"""An on-disk cache of caption embeddings, so training need not run T5.

Layout (one subdirectory per encoder identity, so a changed encoder, tokenizer,
max_length or compute dtype never reads stale embeddings)::

  DIR/<encoder_identity>/meta.json              {"dim", "max_length", "storage_dtype", ...}
  DIR/<encoder_identity>/shard-<id>.npy         [T, D] rows of all entries, concatenated
  DIR/<encoder_identity>/shard-<id>.index.npz   keys [N] (hex), offsets [N], lengths [N]

Each caption is stored at its true length (its ``mask.sum()`` tokens, ``</s>``
included), by default in bfloat16 (kept as uint16 bits in the .npy, so it can
be memory-mapped), keyed by sha256(encoder identity, caption). A shard's
index is written last, by atomic rename, so a shard without an index (an
interrupted write) is ignored. Several processes may write to the same cache:
shard names are unique per writer. Re-putting a cached caption is a no-op.
"""

import hashlib
import json
import os
import pathlib
import uuid
from typing import Sequence

import ml_dtypes
import numpy as np

_FORMAT = "imagen_jax.text.EmbeddingCache/v1"
_STORAGE = {"bfloat16": np.uint16, "float32": np.float32}


class EmbeddingCache:
  """Caption -> (embedding [len, D], mask) store for one encoder identity.

  Args:
    directory: cache root (shared by all encoders).
    encoder_identity: `TextEncoder.identity`.
    max_length: L that `get_many` pads to (default: the one recorded by the
      first `put`; pass it to read a cache written by another tool).
    storage_dtype: "bfloat16" (default, half the size) or "float32" (exact).
  """

  def __init__(self, directory, encoder_identity: str, *,
               max_length: int | None = None,
               storage_dtype: str = "bfloat16"):
    if storage_dtype not in _STORAGE:
      raise ValueError(f"storage_dtype must be one of {sorted(_STORAGE)}, "
                       f"got {storage_dtype!r}")
    if not encoder_identity or "/" in encoder_identity:
      raise ValueError(f"bad encoder identity {encoder_identity!r}")
    self.identity = encoder_identity
    self.root = pathlib.Path(directory) / encoder_identity
    self._max_length = max_length
    self._storage_dtype = storage_dtype
    self._dim = None
    self._index: dict[str, tuple[str, int, int]] = {}
    self._seen_shards: set[str] = set()
    self._mmaps: dict[str, np.ndarray] = {}
    self._read_meta()
    self.refresh()

  @classmethod
  def for_encoder(cls, directory, encoder, **kwargs) -> "EmbeddingCache":
    """The cache of a `TextEncoder` (its identity and max_length)."""
    kwargs.setdefault("max_length", encoder.max_length)
    return cls(directory, encoder.identity, **kwargs)

  # -- metadata ------------------------------------------------------------

  def _read_meta(self):
    meta_path = self.root / "meta.json"
    if not meta_path.is_file():
      return
    meta = json.loads(meta_path.read_text())
    if meta.get("identity") != self.identity:
      raise ValueError(f"{meta_path}: written for encoder "
                       f"{meta.get('identity')!r}, not {self.identity!r}")
    self._dim = int(meta["dim"])
    self._storage_dtype = meta["storage_dtype"]
    if self._max_length is None:
      self._max_length = int(meta["max_length"])

  def _write_meta(self, dim: int, max_length: int):
    self.root.mkdir(parents=True, exist_ok=True)
    meta_path = self.root / "meta.json"
    if meta_path.is_file():
      return
    tmp = meta_path.with_name(f".meta-{uuid.uuid4().hex}.json")
    tmp.write_text(json.dumps({
        "format": _FORMAT, "identity": self.identity, "dim": dim,
        "max_length": max_length, "storage_dtype": self._storage_dtype,
    }, indent=1))
    os.replace(tmp, meta_path)

  @property
  def dim(self) -> int | None:
    return self._dim

  @property
  def max_length(self) -> int | None:
    return self._max_length

  # -- index ---------------------------------------------------------------

  def refresh(self):
    """Picks up shards written since (e.g. by other processes)."""
    if not self.root.is_dir():
      return
    for idx_path in sorted(self.root.glob("shard-*.index.npz")):
      shard = idx_path.name[:-len(".index.npz")]
      if shard in self._seen_shards:
        continue
      with np.load(idx_path) as idx:
        for key, off, n in zip(idx["keys"], idx["offsets"], idx["lengths"]):
          self._index.setdefault(str(key), (shard, int(off), int(n)))
      self._seen_shards.add(shard)
    if self._dim is None:
      self._read_meta()

  def key(self, caption: str) -> str:
    h = hashlib.sha256()
    h.update(self.identity.encode())
    h.update(b"\0")
    h.update(str(caption).encode("utf-8"))
    return h.hexdigest()[:40]

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, caption: str) -> bool:
    return self.key(caption) in self._index

  def missing(self, captions: Sequence[str]) -> list[str]:
    """Captions not in the cache, deduplicated, in first-seen order."""
    out, seen = [], set()
    for c in captions:
      k = self.key(c)
      if k not in self._index and k not in seen:
        seen.add(k)
        out.append(c)
    return out

  # -- writing -------------------------------------------------------------

  def put(self, captions: Sequence[str], emb, mask) -> int:
    """Stores captions' embeddings (``emb [B, L, D]``, ``mask [B, L]``).

    Each row is stored at its true length ``mask[i].sum()`` (the mask must be
    a prefix of True values, as T5 tokenization gives). Captions already
    cached, or repeated in the batch, are skipped. Returns the number stored.
    """
    emb = np.asarray(emb)
    mask = np.asarray(mask, bool)
    if emb.ndim != 3 or mask.shape != emb.shape[:2] or len(captions) != len(emb):
      raise ValueError(
          f"put: expected {len(captions)} captions, emb [B, L, D] and mask "
          f"[B, L], got emb {emb.shape} and mask {mask.shape}")
    b, length, dim = emb.shape
    if self._dim is not None and dim != self._dim:
      raise ValueError(f"{self.root}: cache holds dim {self._dim}, got {dim}")
    lengths = mask.sum(axis=1)
    if not np.all(mask == (np.arange(length)[None] < lengths[:, None])):
      raise ValueError("put: each mask row must be True then False (a prefix)")
    if self._max_length is None:
      self._max_length = length
    self._write_meta(dim, self._max_length)
    self._dim = dim
    keys, rows, offsets, lens, seen = [], [], [], [], set()
    total = 0
    for i, caption in enumerate(captions):
      k = self.key(caption)
      if k in self._index or k in seen:
        continue
      seen.add(k)
      n = int(lengths[i])
      keys.append(k)
      rows.append(emb[i, :n])
      offsets.append(total)
      lens.append(n)
      total += n
    if not keys:
      return 0
    data = np.concatenate(rows).astype(np.float32)
    if self._storage_dtype == "bfloat16":
      data = data.astype(ml_dtypes.bfloat16).view(np.uint16)
    shard = f"shard-{uuid.uuid4().hex}"
    tmp = self.root / f".{shard}.npy.tmp"
    with open(tmp, "wb") as f:
      np.save(f, data)
    os.replace(tmp, self.root / f"{shard}.npy")
    tmp = self.root / f".{shard}.index.tmp.npz"
    np.savez(tmp, keys=np.array(keys), offsets=np.array(offsets, np.int64),
             lengths=np.array(lens, np.int32))
    os.replace(tmp, self.root / f"{shard}.index.npz")
    for k, off, n in zip(keys, offsets, lens):
      self._index[k] = (shard, off, n)
    self._seen_shards.add(shard)
    return len(keys)

  # -- reading -------------------------------------------------------------

  def _shard(self, shard: str) -> np.ndarray:
    if shard not in self._mmaps:
      self._mmaps[shard] = np.load(self.root / f"{shard}.npy", mmap_mode="r")
    return self._mmaps[shard]

  def get_many(self, captions: Sequence[str], dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(emb [B, max_length, D] dtype, mask bool [B, max_length])``, zero-padded.

    Raises KeyError (with the number and an example) if any caption is missing.
    """
    entries = [self._index.get(self.key(c)) for c in captions]
    missing = [c for c, e in zip(captions, entries) if e is None]
    if missing:
      raise KeyError(
          f"{self.root}: {len(missing)} of {len(captions)} captions not cached "
          f"(e.g. {missing[0]!r}); run scripts/precompute_text_embeddings.py")
    if self._max_length is None or self._dim is None:
      raise ValueError(f"{self.root}: max_length/dim unknown; pass max_length")
    length = self._max_length
    emb = np.zeros((len(captions), length, self._dim), dtype)
    mask = np.zeros((len(captions), length), bool)
    for i, (shard, off, n) in enumerate(entries):
      rows = self._shard(shard)[off:off + min(n, length)]
      if self._storage_dtype == "bfloat16":
        rows = rows.view(ml_dtypes.bfloat16)
      emb[i, :len(rows)] = rows.astype(dtype)
      mask[i, :len(rows)] = True
    return emb, mask
