"""`TextEncoder` and `load_text_encoder`: a frozen T5 encoder ready to use.

    enc = load_text_encoder("byt5-tiny-random")          # built-in, no files
    enc = load_text_encoder("/ckpts/t5-v1_1-xxl", dtype=jnp.bfloat16, mesh=mesh)
    emb, mask = enc.encode(["a red circle", ""])   # float32 [2, L, D], bool [2, L]

Inside a larger jitted function use the pure ``enc.encode_fn(enc.params, ids,
mask)`` (params passed as an argument, never closed over) with ids from
``enc.tokenize``. ``enc.identity`` is a stable hash of everything that
determines the embeddings (architecture, weights, tokenizer vocabulary,
max_length, compute dtype); the embedding cache keys on it. `describe_encoder`
gives the config, dim and a cheap ``fingerprint`` of the same without reading the
weights (a trainer with a filled cache needs nothing more).
"""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from imagen_jax.storage import paths
from imagen_jax.text import builtin
from imagen_jax.text import remote
from imagen_jax.text import checkpoints
from imagen_jax.text import t5
from imagen_jax.text import tokenizers

# Checkpoints' default caption length (imagen-pytorch's; DeepFloyd IF uses 77).
DEFAULT_MAX_LENGTH = 256
# Params smaller than this stay replicated when a mesh is given.
MIN_SHARD_BYTES = 1 << 20


def param_sharding(
    shape: Sequence[int], mesh: Mesh, axis: str | None, min_bytes: int = MIN_SHARD_BYTES
) -> NamedSharding:
  """FSDP-style: shard the largest dimension divisible by the axis size."""
  n = mesh.shape[axis] if axis in mesh.axis_names else 1
  spec = [None] * len(shape)
  if n > 1 and int(np.prod(shape)) * 4 >= min_bytes:
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
      if shape[i] % n == 0:
        spec[i] = axis
        break
  return NamedSharding(mesh, P(*spec))


def _auto_mesh(mesh: Mesh | None) -> Mesh | None:
  # Auto axis types let jit propagate the params' FSDP sharding through the
  # encoder without per-op sharding annotations.
  if mesh is None:
    return None
  return Mesh(mesh.devices, mesh.axis_names)


class TextEncoder:
  """A frozen T5 encoder with its tokenizer.

  Attributes:
    module: the `t5.T5Encoder` Flax module.
    params: its parameter tree (float32, on device, sharded if a mesh was given).
    config: the `t5.T5Config`.
    tokenizer: the tokenizer (None if the checkpoint had none: then only
      `encode_ids` works).
    max_length: L, the padded caption length in tokens.
    dim: D, the embedding width.
    identity: stable hash string for cache keys (of the weights as read, so the same
      weights in another format have the same identity).
    fingerprint: `describe_encoder(...).fingerprint`: the cheap hash (no weights read)
      that `EmbeddingCache` maps to `identity`.
    num_truncated: running count of captions truncated by `tokenize`.
  """

  def __init__(
      self,
      *,
      config: t5.T5Config,
      params: Any,
      tokenizer: tokenizers.Tokenizer | None,
      max_length: int,
      dtype: Any = jnp.float32,
      weights_digest: str,
      source: str,
      mesh: Mesh | None = None,
      batch_axes: Sequence[str] | None = None,
      precision: Any = None,
      fingerprint: str | None = None,
  ):
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
      raise checkpoints.CheckpointError(
          f"{source}: tokenizer {getattr(tokenizer, 'path', tokenizer)} has "
          f"{tokenizer.vocab_size} ids but the model's embedding has only "
          f"{config.vocab_size} rows (config vocab_size)"
      )
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.max_length = int(max_length)
    self.dtype = jnp.dtype(dtype)
    self.source = source
    self.fingerprint = fingerprint
    self.mesh = _auto_mesh(mesh)
    if self.mesh is not None and batch_axes is None:
      batch_axes = tuple(self.mesh.axis_names)
    self.batch_axes = tuple(batch_axes or ())
    self.module = t5.T5Encoder(
        config, dtype=self.dtype, param_dtype=jnp.float32, precision=precision
    )
    self.encode_fn = t5.make_encode_fn(self.module)
    self.num_truncated = 0
    self.identity = _identity(config, weights_digest, tokenizer, self.max_length, self.dtype)
    if self.mesh is None:
      self._jitted = jax.jit(self.encode_fn)
      self._batch_multiple = 1
    else:
      batch = NamedSharding(self.mesh, P(self.batch_axes or None))
      self._batch_sharding = batch
      self._jitted = jax.jit(self.encode_fn, out_shardings=(batch, batch))
      self._batch_multiple = int(np.prod([self.mesh.shape[a] for a in self.batch_axes]))

  @property
  def dim(self) -> int:
    return self.config.d_model

  def __repr__(self):
    return (
        f"TextEncoder({self.source!r}, d_model={self.dim}, "
        f"layers={self.config.num_layers}, max_length={self.max_length}, "
        f"dtype={self.dtype.name}, identity={self.identity!r})"
    )

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32 [B, L], mask bool [B, L])`` padded to ``max_length``."""
    if self.tokenizer is None:
      raise ValueError(
          f"{self.source}: no tokenizer (expected spiece.model or "
          "tokenizer.json beside the checkpoint); pass tokenizer=PATH to "
          "load_text_encoder or use encode_ids"
      )
    result = tokenizers.tokenize(self.tokenizer, texts, self.max_length)
    self.num_truncated += result.num_truncated
    return result.ids, result.mask

  def _padded_batch(self, b: int) -> int:
    size = 1
    while size < b:
      size *= 2
    m = self._batch_multiple
    return -(-size // m) * m

  def encode_ids(self, ids, mask) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids: ``(emb float32 [B, L, D], mask bool [B, L])``.

    The batch is padded up to a power of two (and a multiple of the mesh's
    batch shards) so the jitted encoder compiles once per bucket, not once per
    batch size. Padding rows are dropped from the result.
    """
    ids = np.asarray(ids, np.int32)
    mask = np.asarray(mask, bool)
    if ids.ndim != 2 or ids.shape != mask.shape:
      raise ValueError(f"ids {ids.shape} and mask {mask.shape} must both be [batch, length]")
    b, length = ids.shape
    if b == 0:
      return (jnp.zeros((0, length, self.dim), jnp.float32), jnp.zeros((0, length), bool))
    pad = self._padded_batch(b) - b
    if pad:
      ids = np.concatenate([ids, np.zeros((pad, length), np.int32)])
      mask = np.concatenate([mask, np.zeros((pad, length), bool)])
    if self.mesh is None:
      ids_d, mask_d = jax.device_put(ids), jax.device_put(mask)
    else:
      ids_d = jax.device_put(ids, self._batch_sharding)
      mask_d = jax.device_put(mask, self._batch_sharding)
    emb, mask_out = self._jitted(self.params, ids_d, mask_d)
    if pad:  # Sliced in a (tiny) jitted function: no implicit transfers.
      emb, mask_out = _take_rows(b)(emb, mask_out)
    return emb, mask_out

  def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """Tokenizes and encodes captions: ``(emb float32 [B, L, D], mask bool [B, L])``.

    Positions past each caption's ``</s>`` are zero in ``emb`` and False in
    ``mask``.
    """
    ids, mask = self.tokenize(texts)
    return self.encode_ids(ids, mask)


@functools.lru_cache(maxsize=None)
def _take_rows(b: int):
  return jax.jit(lambda emb, mask: (emb[:b], mask[:b]))


def _identity(config, weights_digest, tokenizer, max_length, dtype) -> str:
  h = hashlib.sha256()
  h.update(
      json.dumps(
          {
              "format": "imagen_jax.text.TextEncoder/v1",
              "config": config.to_dict(),
              "max_length": max_length,
              "dtype": jnp.dtype(dtype).name,
              "tokenizer": tokenizer.identity if tokenizer is not None else None,
          },
          sort_keys=True,
      ).encode()
  )
  h.update(weights_digest.encode())
  return "t5-" + h.hexdigest()[:32]


def _placer(mesh: Mesh | None, param_axis: str | None, min_shard_bytes: int):
  mesh = _auto_mesh(mesh)

  def place(name, arr):
    del name
    if mesh is None:
      return jax.device_put(arr)
    sharding = param_sharding(arr.shape, mesh, param_axis, min_shard_bytes)
    return jax.device_put(arr, sharding)

  return place


def _byte_tokenizer_declared(dirs) -> bool:
  for d in dirs:
    for name in ("tokenizer_config.json", checkpoints.CONFIG_FILE):
      f = d / name
      if f.is_file():
        try:
          if json.loads(f.read_text()).get("tokenizer_class") == "ByT5Tokenizer":
            return True
        except (OSError, json.JSONDecodeError, AttributeError):
          pass
  return False


def _existing_dirs(dirs):
  out = []
  for d in dirs:
    try:
      if d.is_dir():
        out.append(d)
    except OSError:
      pass
  return out


def _find_tokenizer(dirs, tokenizer_arg):
  if tokenizer_arg is not None:
    return tokenizers.load_tokenizer(tokenizer_arg)
  dirs = _existing_dirs(dirs)
  tok = tokenizers.find_tokenizer(dirs)
  if tok is None and _byte_tokenizer_declared(dirs):
    tok = tokenizers.ByteTokenizer()
  return tok


def _tokenizer_identity(dirs, tokenizer_arg) -> str | None:
  """`_find_tokenizer(...).identity` without building the tokenizer (hashes its file)."""
  if tokenizer_arg is not None:
    if str(tokenizer_arg) in ("byte", "byt5"):
      return tokenizers.ByteTokenizer.identity
    p = _as_path(tokenizer_arg)
    found = p if p.is_file() else tokenizers.find_tokenizer_file([p])
    if found is None:
      raise FileNotFoundError(
          f"{p}: no tokenizer found, expected {tokenizers.SPIECE_FILE} "
          f"or {tokenizers.TOKENIZER_JSON_FILE}"
      )
    return tokenizers.file_identity(found)
  dirs = _existing_dirs(dirs)
  found = tokenizers.find_tokenizer_file(dirs)
  if found is not None:
    return tokenizers.file_identity(found)
  if _byte_tokenizer_declared(dirs):
    return tokenizers.ByteTokenizer.identity
  return None


def _as_path(p):
  return remote.path(p)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """Everything about an encoder except its weights (`describe_encoder`).

  fingerprint: a stable hash of the architecture, tokenizer, max_length, compute dtype
    and the weight files (names, sizes, sampled contents), computed without reading the
    weights; `EmbeddingCache` maps it to the encoder's `identity`.
  """

  source: str
  kind: str  # "builtin" | "hf" | "t5x"
  config: t5.T5Config
  max_length: int
  dtype: str
  fingerprint: str
  root: Any = None  # the directory given (local or remote)
  model_dir: Any = None  # hf: the directory with config.json and the weights
  t5x_dir: Any = None  # t5x: the checkpoint directory
  tok_dirs: tuple = ()

  @property
  def dim(self) -> int:
    return self.config.d_model


def _fingerprint(config, weights, tokenizer_identity, max_length, dtype) -> str:
  h = hashlib.sha256()
  h.update(
      json.dumps(
          {
              "format": "imagen_jax.text.EncoderFingerprint/v1",
              "config": config.to_dict(),
              "max_length": max_length,
              "dtype": jnp.dtype(dtype).name,
              "tokenizer": tokenizer_identity,
              "weights": weights,
          },
          sort_keys=True,
      ).encode()
  )
  return "fp-" + h.hexdigest()[:32]


def describe_encoder(
    path_or_name,
    *,
    max_length: int | None = None,
    dtype: Any = jnp.float32,
    tokenizer: str | None = None,
) -> EncoderSpec:
  """The config, dim, max_length and fingerprint of an encoder, reading its config.json,
  tokenizer file and a few MiB of its weight files (never the weights themselves).

  Accepts what `load_text_encoder` accepts, including `gs://` directories (read in
  place). Raises FileNotFoundError for a missing directory.
  """
  dtype_name = jnp.dtype(dtype).name
  spec = builtin.get(str(path_or_name))
  if spec is not None:
    length = int(max_length or spec.max_length)
    tok_id = _tokenizer_identity([], tokenizer or spec.tokenizer)
    weights = f"builtin:{path_or_name}:seed={spec.seed}:v1"
    return EncoderSpec(
        str(path_or_name),
        "builtin",
        spec.config,
        length,
        dtype_name,
        _fingerprint(spec.config, weights, tok_id, length, dtype),
    )
  path = _as_path(path_or_name)
  if not path.is_dir():
    raise FileNotFoundError(
        f"{path}: not a checkpoint directory and not a built-in encoder name "
        f"(built-ins: {sorted(builtin.BUILTINS)}). Point the stage config at a T5 "
        "(a Hugging Face directory with config.json + safetensors, or a t5x checkpoint; "
        "local or gs://): --config.text.encoder=DIR, or the stage config's `encoder=DIR` "
        "argument."
    )
  model_dir = path
  if (
      not (path / checkpoints.CONFIG_FILE).is_file()
      and (path / "text_encoder" / checkpoints.CONFIG_FILE).is_file()
  ):
    model_dir = path / "text_encoder"  # diffusers pipeline layout
  config_file = model_dir / checkpoints.CONFIG_FILE
  t5x_dir = checkpoints.find_t5x_checkpoint(path)
  length = int(max_length or DEFAULT_MAX_LENGTH)
  if config_file.is_file() and (t5x_dir is None or _has_hf_weights(model_dir)):
    config = checkpoints.config_from_hf(config_file)
    tok_dirs = (model_dir, path, path / "tokenizer", model_dir.parent)
    files = checkpoints.hf_weight_files(model_dir)
    weights = checkpoints.weights_fingerprint(model_dir, files)
    kind = "hf"
  elif t5x_dir is not None:
    config_files = [d / checkpoints.CONFIG_FILE for d in checkpoints.iter_hf_config_dirs(t5x_dir)]
    config_files = [f for f in config_files if f.is_file()]
    config = (
        checkpoints.config_from_hf(config_files[0])
        if config_files
        else checkpoints.config_from_t5x(checkpoints.t5x_source(t5x_dir))
    )
    tok_dirs = list(checkpoints.iter_hf_config_dirs(t5x_dir))
    if path not in tok_dirs:
      tok_dirs.append(path)
    tok_dirs = tuple(tok_dirs)
    weights = checkpoints.weights_fingerprint(t5x_dir, max_sampled=8)
    kind = "t5x"
  else:
    checkpoints.hf_weight_source(model_dir)  # Raises "no weights found".
    raise AssertionError("unreachable")
  tok_id = _tokenizer_identity(tok_dirs, tokenizer)
  return EncoderSpec(
      str(path_or_name),
      kind,
      config,
      length,
      dtype_name,
      _fingerprint(config, weights, tok_id, length, dtype),
      root=path,
      model_dir=model_dir,
      t5x_dir=t5x_dir,
      tok_dirs=tok_dirs,
  )


def load_text_encoder(
    path_or_name,
    *,
    max_length: int | None = None,
    dtype: Any = jnp.float32,
    tokenizer: str | None = None,
    mesh: Mesh | None = None,
    param_axis: str | None = "fsdp",
    batch_axes: Sequence[str] | None = None,
    min_shard_bytes: int = MIN_SHARD_BYTES,
    precision: Any = None,
) -> TextEncoder:
  """Loads a frozen T5 encoder; never touches the network (but for `gs://`).

  Args:
    path_or_name: a built-in name (``"byt5-tiny-random"``), a Hugging Face T5
      directory (or a diffusers pipeline directory with ``text_encoder/``), or
      a t5x/Orbax checkpoint directory; see `checkpoints` for the layouts. A
      `gs://` Hugging Face directory is copied to local disk first
      (`paths.local_copy`, reused while unchanged); a `gs://` t5x checkpoint is
      read in place by TensorStore.
    max_length: caption length L in tokens (default: the built-in's, else 256).
    dtype: compute dtype of the matmuls (params stay float32).
    tokenizer: a tokenizer file/directory or ``"byte"``, overriding the one
      found beside the checkpoint.
    mesh: if given, params are placed sharded over ``param_axis`` (largest
      divisible dimension of each param of at least ``min_shard_bytes``;
      smaller ones are replicated) and `encode` shards the batch over
      ``batch_axes`` (default: all mesh axes).
    precision: matmul precision (e.g. ``"highest"`` for float32 parity on
      accelerators).
  """
  place = _placer(mesh, param_axis, min_shard_bytes)
  hasher = hashlib.sha256()
  desc = describe_encoder(path_or_name, max_length=max_length, dtype=dtype, tokenizer=tokenizer)
  common = dict(
      max_length=desc.max_length,
      dtype=dtype,
      source=str(path_or_name),
      mesh=mesh,
      batch_axes=batch_axes,
      precision=precision,
      fingerprint=desc.fingerprint,
  )
  if desc.kind == "builtin":
    spec = builtin.get(str(path_or_name))
    flat = builtin.random_params(spec.config, spec.seed, lambda n, a: a)
    for name, arr in sorted(flat.items()):  # As checkpoints.read_params.
      hasher.update(f"{name}:{arr.shape}".encode())
      hasher.update(memoryview(arr).cast("B"))
    params = checkpoints.unflatten({n: place(n, a) for n, a in flat.items()})
    return TextEncoder(
        config=spec.config,
        params=params,
        tokenizer=tokenizers.load_tokenizer(tokenizer or spec.tokenizer),
        weights_digest=hasher.hexdigest(),
        **common,
    )

  if desc.kind == "hf":
    model_dir, tok_dirs = desc.model_dir, list(desc.tok_dirs)
    if paths.is_remote(desc.root):  # safetensors/torch read local files
      local = remote.local_copy(desc.root)
      rel = os.fspath(desc.model_dir)[len(os.fspath(desc.root)) :].strip("/")
      model_dir = local / rel if rel else local
      tok_dirs = [model_dir, local, local / "tokenizer", model_dir.parent]
    source = checkpoints.hf_weight_source(model_dir)
    mapping = checkpoints.hf_mapping(desc.config, source)
  else:
    source = checkpoints.t5x_source(desc.t5x_dir)
    mapping = checkpoints.t5x_mapping(desc.config, source)
    tok_dirs = list(desc.tok_dirs)

  params = checkpoints.read_params(source, mapping, place, hasher)
  return TextEncoder(
      config=desc.config,
      params=params,
      tokenizer=_find_tokenizer(tok_dirs, tokenizer),
      weights_digest=hasher.hexdigest(),
      **common,
  )


def _has_hf_weights(d) -> bool:
  names = (
      "model.safetensors",
      "model.safetensors.index.json",
      "pytorch_model.bin",
      "pytorch_model.bin.index.json",
  )
  return any((d / n).is_file() for n in names) or any(d.glob("model-*-of-*.safetensors"))
