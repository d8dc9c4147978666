"""Reading T5 encoder weights from Hugging Face and t5x checkpoint directories.

Nothing here touches the network. Supported layouts:

Hugging Face (a ``save_pretrained`` directory, or a diffusers pipeline's
``text_encoder/`` folder):
  * ``config.json`` with ``model_type`` ``t5`` or ``mt5`` (architectures
    ``T5*``/``MT5*``: original T5, T5 v1.1, Flan-T5, mT5);
  * weights, first match wins: ``model.safetensors``; sharded
    ``model-0000x-of-0000y.safetensors`` (with ``model.safetensors.index.json``
    or found by glob); ``pytorch_model.bin`` or sharded
    ``pytorch_model-*.bin`` + index, only if torch is installed, read with
    ``torch.load(..., weights_only=True, mmap=True)`` (never arbitrary
    unpickling). Full encoder-decoder checkpoints are fine: the decoder and LM
    head are never read.

t5x (checkpoints of t5x's T5 / T5 v1.1 / Flan-T5 models, `examples/t5/network.py`
parameter names ``target/token_embedder/embedding``,
``target/encoder/layers_{i}/attention/{query,key,value,out}/kernel``,
``target/encoder/relpos_bias/rel_embedding``, ``.../mlp/{wi,wi_0,wi_1,wo}/kernel``,
``.../pre_attention_layer_norm/scale``, ``.../pre_mlp_layer_norm/scale``,
``target/encoder/encoder_norm/scale``):
  * legacy t5x (``checkpoints.Checkpointer``, VERSION 3): a ``checkpoint``
    msgpack file whose leaves are arrays or TensorStore specs pointing at zarr
    arrays relative to the checkpoint directory (the public T5/Flan-T5 t5x
    checkpoints are in this layout);
  * Orbax ``PyTreeCheckpointer``/``CheckpointManager`` output (what t5x writes
    with Orbax): ``_METADATA`` + OCDBT (``manifest.ocdbt``) or per-array zarr /
    zarr3 directories; a single item subdirectory (e.g. ``state/``) is found;
  * a parent directory of ``checkpoint_<step>`` folders: the latest step;
  * attention kernels stored 2-D ``[d, heads*d_kv]`` (t5x) or 3-D
    ``[d, heads, d_kv]`` / ``[heads, d_kv, d]`` (flaxformer).
  Not supported: scanned layers (``encoder/layers`` with a stacked layer axis)
  and per-layer relative biases (UMT5); both raise an error naming the key.
  A t5x checkpoint has no config: a ``config.json`` in the checkpoint directory
  or one of its two parents is used if present, else the architecture is
  inferred from the shapes (``gated-gelu`` if ``wi_0`` exists, else ``relu``;
  ``relative_attention_max_distance`` = 128, layer-norm epsilon 1e-6).

Weights are read one tensor at a time, converted to float32, hashed and placed
on device before the next is read, so host memory stays near one copy of the
params plus the largest tensor (well under 2x for T5-XXL's 4.6B encoder).
"""

import difflib
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Callable, Iterable

import numpy as np

from imagen_jax.storage import paths
from imagen_jax.text import remote
from imagen_jax.text import t5

CONFIG_FILE = "config.json"
_SUPPORTED_MODEL_TYPES = ("t5", "mt5")
_SUPPORTED_ARCH = re.compile(r"^(T5|MT5)[A-Za-z]*$")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as a T5 encoder."""


# --------------------------------------------------------------------------
# Tensor sources: named tensors read one at a time.


class TensorSource:
  """Base: ``keys()``, ``shape(key)``, ``read(key)``, ``where(key)``."""

  description = ""

  def keys(self) -> list[str]:
    raise NotImplementedError

  def shape(self, key: str) -> tuple[int, ...]:
    raise NotImplementedError

  def read(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def where(self, key: str) -> str:
    """The file a key lives in (for error messages)."""
    del key
    return self.description


class SafetensorsSource(TensorSource):
  """One or more .safetensors files, read with the safetensors package (numpy)."""

  def __init__(self, files: list[pathlib.Path]):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    self._safe_open = safe_open
    self.description = ", ".join(str(f) for f in files)
    self._file, self._shape = {}, {}
    for f in files:
      with safe_open(str(f), framework="numpy") as h:
        for k in h.keys():
          self._file[k] = f
          self._shape[k] = tuple(h.get_slice(k).get_shape())

  def keys(self):
    return list(self._file)

  def shape(self, key):
    return self._shape[key]

  def read(self, key):
    with self._safe_open(str(self._file[key]), framework="numpy") as h:
      return h.get_tensor(key)

  def where(self, key):
    return str(self._file.get(key, self.description))


class TorchBinSource(TensorSource):
  """pytorch_model.bin files: ``torch.load(weights_only=True, mmap=True)``."""

  def __init__(self, files: list[pathlib.Path]):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise CheckpointError(
          f"{files[0]}: reading PyTorch .bin weights needs torch, which is not "
          "installed; install torch or convert the checkpoint to "
          "model.safetensors"
      ) from e
    self._torch = torch
    self.description = ", ".join(str(f) for f in files)
    self._tensors, self._file = {}, {}
    for f in files:
      try:
        sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
      except RuntimeError:  # Legacy (non-zip) serialization cannot be mmapped.
        sd = torch.load(str(f), map_location="cpu", weights_only=True)
      for k, v in sd.items():
        self._tensors[k] = v
        self._file[k] = f

  def keys(self):
    return list(self._tensors)

  def shape(self, key):
    return tuple(self._tensors[key].shape)

  def read(self, key):
    t = self._tensors[key].detach()
    if t.dtype in (self._torch.bfloat16, self._torch.float16):
      t = t.to(self._torch.float32)
    return t.numpy().copy()

  def where(self, key):
    return str(self._file.get(key, self.description))


def _is_ts_spec(x) -> bool:
  return isinstance(x, dict) and "driver" in x and ("kvstore" in x or "path" in x)


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) and not _is_ts_spec(v):
      out.update(_flatten(v, name + "/"))
    else:
      out[name] = v
  return out


class _TensorStoreSource(TensorSource):
  """Leaves are numpy arrays or TensorStore specs (opened lazily)."""

  def __init__(self, description: str, leaves: dict):
    self.description = description
    self._leaves = leaves
    self._opened = {}

  def _open(self, key):
    if key not in self._opened:
      import tensorstore as ts  # pylint: disable=import-outside-toplevel

      try:
        self._opened[key] = ts.open(self._leaves[key], open=True, read=True).result()
      except Exception as e:  # tensorstore raises ValueError subclasses.
        raise CheckpointError(
            f"{self.description}: cannot open array {key!r} (spec {self._leaves[key]}): {e}"
        ) from e
    return self._opened[key]

  def keys(self):
    return list(self._leaves)

  def shape(self, key):
    leaf = self._leaves[key]
    if isinstance(leaf, dict):
      return tuple(self._open(key).shape)
    return tuple(np.shape(leaf))

  def read(self, key):
    leaf = self._leaves[key]
    if isinstance(leaf, dict):
      arr = self._open(key).read().result()
      self._opened.pop(key, None)
      return np.asarray(arr)
    return np.asarray(leaf)


def kvstore(p) -> dict:
  """A TensorStore kvstore spec for a local path or a `gs://bucket/path` (read in place;
  the gcs driver honours `TENSORSTORE_GCS_HTTP_URL`)."""
  s = os.fspath(p)
  if s.startswith("gs://"):
    bucket, _, key = s[len("gs://") :].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": key}
  if paths.is_remote(s):
    raise CheckpointError(f"{s}: t5x checkpoints are read from local disk or gs:// only")
  return {"driver": "file", "path": s}


def _legacy_t5x_source(ckpt_dir: pathlib.Path) -> TensorSource:
  from flax import serialization  # pylint: disable=import-outside-toplevel

  path = ckpt_dir / "checkpoint"
  raw = path.read_bytes()
  if raw.startswith(b"model_checkpoint_path"):
    raise CheckpointError(f"{path}: a TensorFlow checkpoint, not a t5x one")
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:
    raise CheckpointError(f"{path}: not a t5x msgpack checkpoint: {e}") from e
  if isinstance(contents, dict) and "optimizer" in contents:
    contents = contents["optimizer"]
  leaves = _flatten(contents)
  for k, leaf in leaves.items():
    if not _is_ts_spec(leaf):
      continue
    spec = json.loads(json.dumps(leaf))
    kv = spec.get("kvstore", spec)
    # Relative paths are relative to the checkpoint directory; gcs/gfile
    # drivers of a copied checkpoint are mapped onto the local file.
    rel = kv.get("path", "")
    if paths.is_remote(ckpt_dir):  # read in place by tensorstore's gcs driver
      name = pathlib.PurePosixPath(rel).name if kv.get("driver") == "gcs" else rel
      new_kv = kvstore(ckpt_dir / name)
    else:
      local = pathlib.Path(rel)
      if not local.is_absolute() or not local.exists():
        local = ckpt_dir / local.name if kv.get("driver") == "gcs" else (ckpt_dir / rel)
      new_kv = {"driver": "file", "path": str(local)}
    if "kvstore" in spec:
      spec["kvstore"] = new_kv
    else:
      spec.pop("path", None)
      spec["kvstore"] = new_kv
    spec.pop("bucket", None)
    leaves[k] = spec
  return _TensorStoreSource(str(path), leaves)


def _orbax_source(ckpt_dir: pathlib.Path) -> TensorSource:
  meta_path = ckpt_dir / "_METADATA"
  meta = json.loads(meta_path.read_text())
  tree = meta.get("tree_metadata", {})
  use_ocdbt = bool(meta.get("use_ocdbt", (ckpt_dir / "manifest.ocdbt").exists()))
  driver = "zarr3" if meta.get("use_zarr3", False) else "zarr"
  leaves = {}
  for entry in tree.values():
    names = [str(k["key"]) for k in entry["key_metadata"]]
    value_type = entry.get("value_metadata", {}).get("value_type", "")
    if value_type in ("scalar", "string", "None") or entry.get("value_metadata", {}).get(
        "skip_deserialize", False
    ):
      continue
    ts_name = ".".join(names)
    base = ckpt_dir if paths.is_remote(ckpt_dir) else pathlib.Path(ckpt_dir).resolve()
    if use_ocdbt:
      base_kv = kvstore(base)
      base_kv["path"] = base_kv["path"].rstrip("/") + "/"
      kv = {"driver": "ocdbt", "base": base_kv, "path": ts_name}
    else:
      kv = kvstore(base / ts_name)
    leaves["/".join(names)] = {"driver": driver, "kvstore": kv}
  return _TensorStoreSource(str(ckpt_dir), leaves)


def _latest_step_dir(path: pathlib.Path) -> pathlib.Path | None:
  steps = []
  for d in path.glob("checkpoint_*"):
    m = re.fullmatch(r"checkpoint_(\d+)", d.name)
    if m and d.is_dir():
      steps.append((int(m.group(1)), d))
  return max(steps)[1] if steps else None


def find_t5x_checkpoint(path: pathlib.Path) -> pathlib.Path | None:
  """The directory holding a t5x/Orbax checkpoint at or under ``path``."""
  if (path / "checkpoint").is_file() or (path / "_METADATA").is_file():
    return path
  step = _latest_step_dir(path)
  if step is not None:
    return find_t5x_checkpoint(step)
  items = (
      [d for d in path.iterdir() if d.is_dir() and (d / "_METADATA").is_file()]
      if path.is_dir()
      else []
  )
  if len(items) == 1:
    return items[0]
  return None


def t5x_source(ckpt_dir: pathlib.Path) -> TensorSource:
  if (ckpt_dir / "checkpoint").is_file():
    return _legacy_t5x_source(ckpt_dir)
  return _orbax_source(ckpt_dir)


# --------------------------------------------------------------------------
# Configs.


def config_from_hf(path: pathlib.Path) -> t5.T5Config:
  """A `T5Config` from a transformers ``config.json``; rejects other models."""
  try:
    cfg = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read config: {e}") from e
  model_type = cfg.get("model_type")
  archs = cfg.get("architectures") or []
  bad_arch = [a for a in archs if not _SUPPORTED_ARCH.match(str(a))]
  if model_type not in _SUPPORTED_MODEL_TYPES or bad_arch:
    raise CheckpointError(
        f"{path}: unsupported architecture: expected model_type in "
        f"{list(_SUPPORTED_MODEL_TYPES)} with architectures T5*/MT5* "
        f"(original T5, T5 v1.1, Flan-T5, mT5), found model_type="
        f"{model_type!r}, architectures={archs}"
    )
  required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
  missing = [k for k in required if k not in cfg]
  if missing:
    raise CheckpointError(f"{path}: missing config fields {missing}")
  try:
    return t5.T5Config(
        vocab_size=int(cfg["vocab_size"]),
        d_model=int(cfg["d_model"]),
        d_kv=int(cfg["d_kv"]),
        d_ff=int(cfg["d_ff"]),
        num_layers=int(cfg["num_layers"]),
        num_heads=int(cfg["num_heads"]),
        relative_attention_num_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(cfg.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-6)),
        feed_forward_proj=str(cfg.get("feed_forward_proj", "relu")),
    )
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e


def _t5x_name(source: TensorSource) -> Callable[[str], str | None]:
  """Maps a canonical name to the source key (handles the target/ prefix)."""
  keys = set(source.keys())
  for prefix in ("target/", "params/", ""):
    if f"{prefix}token_embedder/embedding" in keys:
      return lambda c, p=prefix: f"{p}{c}"
  scanned = [k for k in keys if "/encoder/layers/" in f"/{k}"]
  if scanned:
    raise CheckpointError(
        f"{source.description}: scanned-layer t5x checkpoints are not "
        f"supported (found {sorted(scanned)[0]!r}); expected per-layer keys "
        "like 'target/encoder/layers_0/attention/query/kernel'"
    )
  raise CheckpointError(
      f"{source.description}: not a t5x T5 checkpoint: expected key "
      f"'target/token_embedder/embedding', found {sorted(keys)[:8]}"
  )


def config_from_t5x(source: TensorSource) -> t5.T5Config:
  """Infers the encoder architecture from a t5x checkpoint's shapes."""
  name = _t5x_name(source)
  keys = set(source.keys())
  vocab, d_model = source.shape(name("token_embedder/embedding"))
  rel = name("encoder/relpos_bias/rel_embedding")
  if rel not in keys:
    per_layer = [k for k in keys if "layers_0/relpos_bias" in k]
    what = (
        f"per-layer relative biases ({per_layer[0]!r}, UMT5) are not supported"
        if per_layer
        else f"missing key {rel!r}"
    )
    raise CheckpointError(f"{source.description}: {what}")
  num_heads, num_buckets = source.shape(rel)
  num_layers = 0
  while name(f"encoder/layers_{num_layers}/pre_attention_layer_norm/scale") in keys:
    num_layers += 1
  q_shape = source.shape(name("encoder/layers_0/attention/query/kernel"))
  inner = int(np.prod(q_shape[1:]))
  gated = name("encoder/layers_0/mlp/wi_0/kernel") in keys
  wi = name("encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel")
  d_ff = source.shape(wi)[-1]
  return t5.T5Config(
      vocab_size=int(vocab),
      d_model=int(d_model),
      d_kv=inner // int(num_heads),
      d_ff=int(d_ff),
      num_layers=num_layers,
      num_heads=int(num_heads),
      relative_attention_num_buckets=int(num_buckets),
      feed_forward_proj="gated-gelu" if gated else "relu",
  )


# --------------------------------------------------------------------------
# Name/shape mappings: canonical name -> (source key, source shape, to_canonical).

Mapping = dict[str, tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]]


def _identity(x):
  return x


def _transpose(x):
  return np.ascontiguousarray(x.T)


def hf_mapping(config: t5.T5Config, source: TensorSource) -> Mapping:
  """Canonical names -> transformers' ``T5EncoderModel`` state-dict keys."""
  keys = set(source.keys())
  anchor = "encoder.final_layer_norm.weight"
  prefixes = [k[: -len(anchor)] for k in keys if k.endswith(anchor)]
  prefix = prefixes[0] if prefixes else ""
  shapes = config.param_shapes()
  mapping: Mapping = {}
  emb = f"{prefix}shared.weight"
  if emb not in keys and f"{prefix}encoder.embed_tokens.weight" in keys:
    emb = f"{prefix}encoder.embed_tokens.weight"
  mapping["token_embedder/embedding"] = (emb, shapes["token_embedder/embedding"], _identity)
  h, nb = shapes["encoder/relpos_bias/rel_embedding"]
  mapping["encoder/relpos_bias/rel_embedding"] = (
      f"{prefix}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      (nb, h),
      _transpose,
  )
  hf_attn = {"query": "q", "key": "k", "value": "v", "out": "o"}
  for i in range(config.num_layers):
    blk = f"{prefix}encoder.block.{i}.layer"
    p = f"encoder/layers_{i}"
    mapping[f"{p}/pre_attention_layer_norm/scale"] = (
        f"{blk}.0.layer_norm.weight",
        (config.d_model,),
        _identity,
    )
    mapping[f"{p}/pre_mlp_layer_norm/scale"] = (
        f"{blk}.1.layer_norm.weight",
        (config.d_model,),
        _identity,
    )
    for ours, theirs in hf_attn.items():
      c = f"{p}/attention/{ours}/kernel"
      mapping[c] = (f"{blk}.0.SelfAttention.{theirs}.weight", shapes[c][::-1], _transpose)
    for w in ("wi_0", "wi_1", "wi", "wo"):
      c = f"{p}/mlp/{w}/kernel"
      if c in shapes:
        mapping[c] = (f"{blk}.1.DenseReluDense.{w}.weight", shapes[c][::-1], _transpose)
  mapping["encoder/encoder_norm/scale"] = (
      f"{prefix}encoder.final_layer_norm.weight",
      (config.d_model,),
      _identity,
  )
  return mapping


def t5x_mapping(config: t5.T5Config, source: TensorSource) -> Mapping:
  """Canonical names -> t5x keys; 3-D (flaxformer) attention kernels reshaped."""
  name = _t5x_name(source)
  keys = set(source.keys())
  mapping: Mapping = {}
  for c, shape in config.param_shapes().items():
    key = name(c)
    src_shape = shape
    if "/attention/" in c and key in keys:
      found = source.shape(key)
      if len(found) == 3:
        src_shape = found if int(np.prod(found)) == int(np.prod(shape)) else shape

    def reshape(x, shape=shape):
      return np.reshape(x, shape)

    mapping[c] = (key, src_shape, reshape)
  return mapping


# --------------------------------------------------------------------------
# Loading.


def read_params(
    source: TensorSource,
    mapping: Mapping,
    place: Callable[[str, np.ndarray], object],
    hasher: Any = None,
) -> dict:
  """Reads, checks, converts (float32) and places every mapped tensor.

  Tensors are read one at a time and the host copy is dropped after
  ``place(canonical_name, array)`` returns. Returns the nested param tree.
  """
  keys = set(source.keys())
  # Check every key and shape before reading anything (fail in seconds, not
  # after reading gigabytes).
  for canonical, (key, expected, _) in mapping.items():
    if key not in keys:
      similar = difflib.get_close_matches(key, sorted(keys), n=3)
      raise CheckpointError(
          f"{source.where(key)}: missing key {key!r} (expected shape "
          f"{tuple(expected)}); found {len(keys)} keys" + (f", e.g. {similar}" if similar else "")
      )
    found = tuple(source.shape(key))
    if found != tuple(expected):
      raise CheckpointError(
          f"{source.where(key)}: key {key!r} has shape {found}, expected "
          f"{tuple(expected)} (for {canonical!r} from the config)"
      )
  flat = {}
  # Sorted canonical order, so the hash does not depend on the source format.
  for canonical, (key, _, convert) in sorted(mapping.items()):
    arr = convert(np.asarray(source.read(key)).astype(np.float32, copy=False))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if hasher is not None:
      hasher.update(f"{canonical}:{arr.shape}".encode())
      hasher.update(memoryview(arr).cast("B"))
    flat[canonical] = place(canonical, arr)
    del arr
  return unflatten(flat)


def unflatten(flat: dict) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _index_files(path: pathlib.Path, index_name: str) -> list[pathlib.Path]:
  index = json.loads((path / index_name).read_text())
  files = sorted(set(index.get("weight_map", {}).values()))
  missing = [f for f in files if not (path / f).is_file()]
  if missing:
    raise CheckpointError(f"{path / index_name}: lists shard files that are missing: {missing}")
  return [path / f for f in files]


# --------------------------------------------------------------------------
# Fingerprints: what identifies a checkpoint's weights without reading them.

FULL_HASH_BYTES = 16 << 20  # files up to this size are hashed whole
SAMPLE_BYTES = 64 << 10  # else: the first MiB and this much at SAMPLES offsets
SAMPLES = 16


def _file_sizes(root) -> dict[str, int]:
  """{relative name: size} of every file under `root` (one listing call when remote)."""
  return {name: int(info["size"]) for name, info in paths.find_files(root).items()}


def _read_range(p, start: int, end: int) -> bytes:
  s = os.fspath(p)
  if paths.is_remote(s):
    import fsspec  # pylint: disable=import-outside-toplevel

    fs, bare = fsspec.core.url_to_fs(s)
    return fs.cat_file(bare, start=start, end=end)
  with open(s, "rb") as f:
    f.seek(start)
    return f.read(end - start)


def _file_sample(p, size: int, hasher) -> None:
  if size <= FULL_HASH_BYTES:
    hasher.update(_read_range(p, 0, size))
    return
  hasher.update(_read_range(p, 0, 1 << 20))  # safetensors/zip headers live here
  for i in range(SAMPLES):
    start = (1 << 20) + (size - (1 << 20) - SAMPLE_BYTES) * i // (SAMPLES - 1)
    hasher.update(_read_range(p, start, start + SAMPLE_BYTES))


def weights_fingerprint(
    root, files: Iterable[str] | None = None, *, max_sampled: int | None = None
) -> str:
  """A hash of the weight files under `root` (or only `files`, relative names): their
  names, sizes, and contents (whole up to 16 MiB, else the first MiB and 16 chunks of
  64 KiB spread over the file) -- a few MiB read per file, never the whole weights, so
  any re-training or conversion (every tensor changes) changes it. With `max_sampled`,
  only that many of the largest files are sampled (t5x: thousands of chunk files)."""
  sizes = _file_sizes(root)
  names = sorted(sizes) if files is None else sorted(files)
  h = hashlib.sha256()
  h.update(json.dumps([(n, sizes.get(n)) for n in names]).encode())
  sampled = names
  if max_sampled is not None:
    sampled = sorted(sorted(names, key=lambda n: (-sizes.get(n, 0), n))[:max_sampled])
  for n in sampled:
    if sizes.get(n) is None:
      raise CheckpointError(f"{root}: weight file {n} is missing")
    h.update(n.encode())
    _file_sample(remote.path(root) / n, sizes[n], h)
  return h.hexdigest()


def hf_weight_files(path) -> list[str]:
  """The weight files `hf_weight_source` would read (names relative to `path`)."""
  if (path / "model.safetensors").is_file():
    return ["model.safetensors"]
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if (path / index).is_file():
      weight_map = json.loads((path / index).read_text()).get("weight_map", {})
      return [index] + sorted(set(weight_map.values()))
  shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
  if shards:
    return shards
  if (path / "pytorch_model.bin").is_file():
    return ["pytorch_model.bin"]
  hf_weight_source(path)  # raises "no weights found"
  raise AssertionError("unreachable")


def hf_weight_source(path: pathlib.Path) -> TensorSource:
  """The weights of a transformers checkpoint directory."""
  if (path / "model.safetensors").is_file():
    return SafetensorsSource([path / "model.safetensors"])
  if (path / "model.safetensors.index.json").is_file():
    return SafetensorsSource(_index_files(path, "model.safetensors.index.json"))
  shards = sorted(path.glob("model-*-of-*.safetensors"))
  if shards:
    return SafetensorsSource(shards)
  if (path / "pytorch_model.bin").is_file():
    return TorchBinSource([path / "pytorch_model.bin"])
  if (path / "pytorch_model.bin.index.json").is_file():
    return TorchBinSource(_index_files(path, "pytorch_model.bin.index.json"))
  raise CheckpointError(
      f"{path}: no weights found: expected model.safetensors, sharded "
      "model-0000x-of-0000y.safetensors (+ model.safetensors.index.json), "
      "pytorch_model.bin, or a t5x checkpoint ('checkpoint' msgpack or Orbax "
      f"'_METADATA'); found {sorted(p.name for p in path.iterdir())[:10]}"
  )


def iter_hf_config_dirs(path: pathlib.Path) -> Iterable[pathlib.Path]:
  """Directories (nearest first) that may hold a config for ``path``."""
  yield path
  yield from list(path.parents)[:2]
