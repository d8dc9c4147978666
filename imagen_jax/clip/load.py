"""`load_clip(path)`: a frozen CLIP from a Hugging Face ``CLIPModel`` directory (a
`ClipModel`) or from a project training workdir (a `clip.noisy.NoisyClipModel`).

The directory holds ``config.json`` (``model_type`` ``"clip"``) and the weights, first match
wins: ``model.safetensors``; sharded safetensors (``model.safetensors.index.json``, or
``model-*-of-*.safetensors`` found by glob); ``pytorch_model.bin`` (or its sharded index),
read only with ``torch.load(..., weights_only=True, map_location="cpu")`` (torch needed): a
file holding anything but tensors is refused, never unpickled. Tokenizer files and
``preprocessor_config.json`` are optional and used by `ClipModel.encode_texts` /
`ClipModel.encode_images`. Nothing touches the network.

A project training workdir (a ``checkpoints/`` folder, no CLIP ``config.json``) is read by
`clip.noisy.load_noisy_clip`: the noise-aware CLIP of ``config.task = "clip"``
(configs/shapes.py:stage=clip, GLIDE's noised CLIP), whose image functions also take the
noise level (``image_features(pixel_values, log_snr)``, ``encode_images(images,
log_snr=None)``) and whose ``similarity_fn(texts, schedule)`` is the ``(x_t, t) -> [B]`` guide
of ``diffusion.similarity_guidance(..., on="x_t")``. A workdir of another task (a diffusion
stage, a classifier) is a ValueError. That reader imports the trainer's checkpointing, so it
is imported only when a workdir is loaded.

Pure functions, for use inside ``jax.jit`` / ``jax.grad`` (CLIP guidance differentiates
w.r.t. pixels); ``params`` is `ClipModel.params`:

  clip.image_features_fn(params, pixel_values)  -> [B, proj]  (= get_image_features)
  clip.text_features_fn(params, input_ids, mask) -> [B, proj]  (= get_text_features)
  clip.preprocess_fn(images)                    -> normalised pixel_values
  clip.encode_images_fn(params, images)         -> L2-normalised image embeddings
  clip.encode_ids_fn(params, input_ids, mask)   -> L2-normalised text embeddings

The methods of the same names without ``_fn`` close over ``clip.params`` and are jitted.
"""

import json
import pathlib
import pickle
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from imagen_jax.clip import model
from imagen_jax.clip import preprocess
from imagen_jax.clip import tokenizer
from imagen_jax.clip import weights
from imagen_jax.clip.config import ClipConfig
from imagen_jax.text import checkpoints

CONFIG_FILE = "config.json"
_PARTIAL = {
    "clip_vision_model": (
        "CLIPVisionModel",
        "the text tower (text_model.*), text_projection and logit_scale",
    ),
    "clip_text_model": (
        "CLIPTextModel",
        "the vision tower (vision_model.*), visual_projection and logit_scale",
    ),
}


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipModel:
  """A loaded CLIP: ``config``, ``params`` (a pytree), the towers and preprocessing."""

  def __init__(
      self,
      config: ClipConfig,
      params: dict,
      *,
      directory: pathlib.Path | None = None,
      preprocess_config: preprocess.PreprocessConfig | None = None,
      dtype: Any = jnp.float32,
      precision: Any = None,
  ):
    self.config = config
    self.params = params
    self.directory = directory
    self.preprocess_config = preprocess_config or preprocess.PreprocessConfig.default(
        config.image_size
    )
    self.text_tower = model.ClipTextTower(config, dtype=dtype, precision=precision)
    self.vision_tower = model.ClipVisionTower(config, dtype=dtype, precision=precision)
    self._tokenizer = None
    self._jit_image = jax.jit(self.image_features_fn)
    self._jit_text = jax.jit(self.text_features_fn)
    self._jit_encode_images = jax.jit(self.encode_images_fn)

  # -- properties ---------------------------------------------------------------------------
  @property
  def projection_dim(self) -> int:
    return self.config.projection_dim

  @property
  def image_size(self) -> int:
    return self.config.image_size

  @property
  def max_length(self) -> int:
    return self.config.max_position_embeddings

  @property
  def logit_scale(self) -> float:
    """The learned log-scale, as transformers stores it; similarity logits are
    ``exp(logit_scale) * cosine``."""
    return float(self.params["logit_scale"])

  # -- pure functions -----------------------------------------------------------------------
  def image_features_fn(self, params, pixel_values):
    """Normalised NHWC pixel_values at ``image_size`` -> projected pooled embedding."""
    return self.vision_tower.apply({"params": params["vision"]}, jnp.asarray(pixel_values))

  def text_features_fn(self, params, input_ids, mask=None):
    """input_ids [B, L <= max_length], mask (True on real tokens) -> projected EOS embedding."""
    return self.text_tower.apply({"params": params["text"]}, input_ids, mask)

  def preprocess_fn(self, images):
    return preprocess.preprocess(images, self.preprocess_config)

  def encode_images_fn(self, params, images):
    return l2_normalize(self.image_features_fn(params, self.preprocess_fn(images)))

  def encode_ids_fn(self, params, input_ids, mask=None):
    return l2_normalize(self.text_features_fn(params, input_ids, mask))

  # -- bound, jitted ------------------------------------------------------------------------
  def image_features(self, pixel_values) -> jax.Array:
    return self._jit_image(self.params, pixel_values)

  def text_features(self, input_ids, mask=None) -> jax.Array:
    return self._jit_text(self.params, input_ids, mask)

  def encode_images(self, images) -> jax.Array:
    """uint8 [B, H, W, 3] or float [-1, 1] images -> L2-normalised embeddings [B, proj]."""
    return self._jit_encode_images(self.params, images)

  @property
  def tokenizer(self) -> tokenizer.ClipTokenizer:
    if self._tokenizer is None:
      if self.directory is None:
        raise ValueError("this CLIP model was built without a directory: no tokenizer")
      tok = tokenizer.ClipTokenizer(self.directory, self.max_length)
      if not self.config.legacy_eos_pooling and tok.eos_id != self.config.eos_token_id:
        raise ValueError(
            f"{self.directory}: the tokenizer's {tok.eos_token!r} is id {tok.eos_id} but "
            f"config.json's text_config.eos_token_id is {self.config.eos_token_id}: the "
            "text tower would pool at the wrong position"
        )
      self._tokenizer = tok
    return self._tokenizer

  def tokenize(self, texts: Sequence[str]):
    return self.tokenizer.tokenize(texts)

  def encode_texts(self, texts: Sequence[str]) -> jax.Array:
    """Captions -> L2-normalised text embeddings [B, proj] (a caption longer than the
    encoder takes is a ValueError naming it)."""
    ids, mask = self.tokenize(texts)
    return l2_normalize(self.text_features(ids, mask))


# -- loading --------------------------------------------------------------------------------


def _load_project_checkpoint(path: pathlib.Path):
  """The noise-aware CLIP trained by this project in workdir `path` (EMA params)."""
  from imagen_jax.clip import noisy  # the trainer's checkpointing: only for workdirs

  return noisy.load_noisy_clip(path)


def _read_json(path: pathlib.Path) -> dict:
  try:
    cfg = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read: {e}") from e
  if not isinstance(cfg, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return cfg


def _check_architecture(cfg: dict, where: pathlib.Path) -> None:
  model_type = cfg.get("model_type")
  archs = cfg.get("architectures") or []
  if model_type == "clip":
    return
  if model_type in _PARTIAL:
    kind, missing = _PARTIAL[model_type]
    raise ValueError(
        f"{where}: a {kind} directory (model_type {model_type!r}, architectures {archs}): it "
        f"lacks {missing}; a CLIPModel directory (model_type 'clip') is expected"
    )
  raise ValueError(
      f"{where}: model_type {model_type!r} (architectures {archs}) is not CLIP: a "
      "CLIPModel directory (config.json with model_type 'clip') is expected"
  )


def _index_files(path: pathlib.Path, index_name: str) -> list[pathlib.Path]:
  index = _read_json(path / index_name)
  files = sorted(set(index.get("weight_map", {}).values()))
  missing = [f for f in files if not (path / f).is_file()]
  if not files or missing:
    raise FileNotFoundError(f"{path / index_name}: lists shard files that are missing: {missing}")
  return [path / f for f in files]


def _torch_source(files: list[pathlib.Path]):
  try:
    return checkpoints.TorchBinSource(files)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f"{', '.join(map(str, files))}: refused: the file holds objects other than tensors, "
        "and PyTorch weights are only read with torch.load(weights_only=True) (never "
        f"unpickled); convert the checkpoint to model.safetensors ({str(e).splitlines()[0]})"
    ) from e


def weight_source(path: pathlib.Path):
  """The tensor source of a CLIPModel directory's weights (see the module docstring)."""
  if (path / "model.safetensors").is_file():
    return checkpoints.SafetensorsSource([path / "model.safetensors"])
  if (path / "model.safetensors.index.json").is_file():
    return checkpoints.SafetensorsSource(_index_files(path, "model.safetensors.index.json"))
  shards = sorted(path.glob("model-*-of-*.safetensors"))
  if shards:
    return checkpoints.SafetensorsSource(shards)
  if (path / "pytorch_model.bin").is_file():
    return _torch_source([path / "pytorch_model.bin"])
  if (path / "pytorch_model.bin.index.json").is_file():
    return _torch_source(_index_files(path, "pytorch_model.bin.index.json"))
  raise FileNotFoundError(
      f"{path}: no CLIP weights found: expected model.safetensors, sharded "
      "model-0000x-of-0000y.safetensors (+ model.safetensors.index.json) or "
      f"pytorch_model.bin; found {sorted(p.name for p in path.iterdir())[:12]}"
  )


def load_clip(path, *, dtype: Any = jnp.float32, precision: Any = None):
  """A frozen CLIP from a Hugging Face ``CLIPModel`` directory, or the noise-aware CLIP of
  a project training workdir (see the module docstring).

  ``dtype`` is the compute dtype of the matmuls (params stay float32); ``precision`` is
  passed to every matmul (e.g. ``jax.lax.Precision.HIGHEST`` for float32 parity on TPU).
  Both apply to Hugging Face models only (a project model runs as it was trained).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such CLIP directory")
  if not path.is_dir():
    raise ValueError(f"{path}: not a directory: expected a Hugging Face CLIPModel directory")
  config_path = path / CONFIG_FILE
  cfg = _read_json(config_path) if config_path.is_file() else None
  if (cfg is None or "model_type" not in cfg) and (path / "checkpoints").is_dir():
    return _load_project_checkpoint(path)
  if cfg is None:
    raise FileNotFoundError(
        f"{path}: no {CONFIG_FILE}: not a Hugging Face CLIPModel directory; found "
        f"{sorted(p.name for p in path.iterdir())[:12]}"
    )
  _check_architecture(cfg, config_path)
  config = ClipConfig.from_hf_dict(cfg, str(config_path))
  source = weight_source(path)
  params = weights.to_device(weights.read_params(config, source, source.description))
  return ClipModel(
      config,
      params,
      directory=path,
      preprocess_config=preprocess.PreprocessConfig.from_directory(path, config.image_size),
      dtype=dtype,
      precision=precision,
  )
