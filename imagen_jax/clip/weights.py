"""Hugging Face ``CLIPModel`` state dicts to the Flax parameter tree of `imagen_jax.clip.model`.

Every parameter is filled from exactly one tensor, with its shape checked; every tensor
in the checkpoint is used, except the ``position_ids`` buffers older checkpoints saved.
Linear weights ``[out, in]`` become kernels ``[in, out]``; the patch convolution's
``[out, in, kh, kw]`` (OIHW) becomes HWIO; layer-norm ``weight`` becomes ``scale``.
"""

import re
from typing import Callable

import jax
import numpy as np

from imagen_jax.clip import model
from imagen_jax.clip.config import ClipConfig

# Buffers, not parameters, that older transformers versions saved with the weights.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_TOWER = {"text": "text_model", "vision": "vision_model"}
_EMBEDDINGS = ("token_embedding", "position_embedding", "class_embedding", "patch_embedding")
_PROJECTIONS = ("text_projection", "visual_projection")

Transform = Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _linear(x):
  return x.T


def _conv(x):  # OIHW -> HWIO
  return x.transpose(2, 3, 1, 0)


def hf_key(flax_path: str) -> tuple[str, Transform]:
  """The transformers state-dict key of a Flax parameter (``"text/layers_0/mlp/fc1/kernel"``
  -> ``"text_model.encoder.layers.0.mlp.fc1.weight"``) and the array transform."""
  parts = flax_path.split("/")
  if parts == ["logit_scale"]:
    return "logit_scale", _identity
  tower, *rest = parts
  if rest[0] in _PROJECTIONS:
    return f"{rest[0]}.weight", _linear
  out = [_TOWER[tower]]
  for part in rest[:-1]:
    m = re.fullmatch(r"layers_(\d+)", part)
    if m:
      out += ["encoder", "layers", m.group(1)]
    elif part in _EMBEDDINGS:
      out += ["embeddings", part]
    else:
      out.append(part)
  leaf = rest[-1]
  if leaf == "class_embedding":
    return ".".join(out + ["embeddings", "class_embedding"]), _identity
  if leaf == "kernel":
    return ".".join(out + ["weight"]), _conv if rest[-2] == "patch_embedding" else _linear
  if leaf in ("scale", "embedding"):
    return ".".join(out + ["weight"]), _identity
  return ".".join(out + [leaf]), _identity


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _missing_parts(missing: list[str]) -> list[str]:
  """Human names of the model parts a list of missing keys covers entirely or partly."""
  parts = []
  for prefix, name in (
      ("text_model.", "the text tower (text_model.*)"),
      ("vision_model.", "the vision tower (vision_model.*)"),
      ("text_projection.", "text_projection"),
      ("visual_projection.", "visual_projection"),
      ("logit_scale", "logit_scale"),
  ):
    if any(k.startswith(prefix) for k in missing):
      parts.append(name)
  return parts


def read_params(config: ClipConfig, source, where: str) -> dict:
  """The param tree (numpy float32 leaves) from a tensor source with ``keys()``,
  ``shape(key)`` and ``read(key)`` (`imagen_jax.text.checkpoints.TensorSource`)."""
  shapes = _flat(model.param_shapes(config))
  wanted = {path: hf_key(path) for path in shapes}
  keys = set(source.keys())
  missing = sorted(k for k, _ in wanted.values() if k not in keys)
  if missing:
    raise ValueError(
        f"{where}: the weights lack {len(missing)} of the {len(wanted)} CLIPModel tensors "
        f"(missing {', '.join(_missing_parts(missing))}); first missing keys: {missing[:5]}"
    )
  used = {k for k, _ in wanted.values()}
  unexpected = sorted(keys - used - set(IGNORED_KEYS))
  if unexpected:
    raise ValueError(
        f"{where}: {len(unexpected)} tensors are not part of a CLIPModel of this config "
        f"(a different architecture or config?): {unexpected[:5]}"
    )
  flat = {}
  for path, (key, transform) in wanted.items():
    want = tuple(shapes[path].shape)
    got = tuple(source.shape(key))
    array = np.asarray(source.read(key), np.float32)
    if array.ndim == len(want):
      array = transform(array)
    if tuple(array.shape) != want:
      raise ValueError(
          f"{where}: tensor {key!r} has shape {list(got)}, expected one that gives "
          f"{list(want)} for {path!r} (does config.json match the weights?)"
      )
    flat[path] = np.array(array, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
  return _unflatten(flat)


def to_device(params: dict) -> dict:
  return jax.tree.map(jax.numpy.asarray, params)
