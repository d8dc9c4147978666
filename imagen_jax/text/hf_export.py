"""Writing a T5 encoder in Hugging Face's ``T5EncoderModel`` layout.

The inverse of reading one with `checkpoints`: ``config.json`` (transformers'
`T5Config` fields) and ``model.safetensors`` with transformers' key names, taken
from `checkpoints.hf_mapping` (the one name table; nothing is repeated here).
The embedding is written twice, as ``shared.weight`` and
``encoder.embed_tokens.weight``, as transformers' own ``save_pretrained`` of a
`T5EncoderModel` does. ``safetensors`` is imported when a file is written.
"""

import json
import os
import pathlib

import numpy as np

from imagen_jax.text import checkpoints
from imagen_jax.text import t5

WEIGHTS_FILE = "model.safetensors"
_EMBEDDING_ALIASES = ("shared.weight", "encoder.embed_tokens.weight")


class _NoKeys(checkpoints.TensorSource):
  """An empty source: `hf_mapping` then names the plain, unprefixed layout."""

  description = "export"

  def keys(self):
    return []


def hf_config(config: t5.T5Config, *, pad_id: int = 0, eos_id: int = 1) -> dict:
  """transformers' ``config.json`` for a `T5EncoderModel` of this architecture."""
  return {
      "architectures": ["T5EncoderModel"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "d_ff": config.d_ff,
      "num_layers": config.num_layers,
      "num_decoder_layers": config.num_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": 0.0,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "feed_forward_proj": config.feed_forward_proj,
      "is_gated_act": config.is_gated,
      "dense_act_fn": config.activation,
      "is_encoder_decoder": True,
      "use_cache": True,
      "tie_word_embeddings": False,
      "pad_token_id": pad_id,
      "eos_token_id": eos_id,
      "decoder_start_token_id": pad_id,
      "torch_dtype": "float32",
  }


def hf_state_dict(config: t5.T5Config, flat_params: dict) -> dict[str, np.ndarray]:
  """{transformers key: float32 array} from our flat ``{"a/b/c": array}`` params."""
  mapping = checkpoints.hf_mapping(config, _NoKeys())
  missing = sorted(set(mapping) - set(flat_params))
  extra = sorted(set(flat_params) - set(mapping))
  if missing or extra:
    raise ValueError(f"params do not match the config: missing {missing}, unexpected {extra}")
  out = {}
  for name, (key, shape, to_canonical) in mapping.items():
    ours = np.asarray(flat_params[name], np.float32)
    # The mapping's conversions (identity, 2-D transpose) are their own
    # inverses; check that rather than assume it.
    theirs = np.ascontiguousarray(to_canonical(ours), np.float32)
    if tuple(theirs.shape) != tuple(shape) or not np.array_equal(to_canonical(theirs), ours):
      raise ValueError(f"{name}: cannot invert the mapping to {key!r} (shape {shape})")
    out[key] = theirs
  emb = out.pop(mapping["token_embedder/embedding"][0])
  for key in _EMBEDDING_ALIASES:
    out[key] = emb.copy()
  return out


def flatten(tree: dict, prefix: str = "") -> dict:
  """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (the inverse of `checkpoints.unflatten`)."""
  flat = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      flat.update(flatten(v, name + "/"))
    else:
      flat[name] = v
  return flat


def save_hf_encoder(
    directory, config: t5.T5Config, params: dict, *, pad_id: int = 0, eos_id: int = 1
) -> None:
  """Writes ``config.json`` and ``model.safetensors`` into an existing directory."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(directory)
  state = hf_state_dict(config, flatten(params))
  save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
  os.chmod(directory / WEIGHTS_FILE, 0o644)  # safetensors writes it private (0600)
  text = json.dumps(hf_config(config, pad_id=pad_id, eos_id=eos_id), indent=2, sort_keys=True)
  (directory / checkpoints.CONFIG_FILE).write_text(text + "\n")
