"""`ClipConfig`: the architecture of a CLIP model, read from a Hugging Face ``config.json``.

A ``CLIPModel`` config (``model_type`` ``"clip"``) nests a ``text_config`` and a
``vision_config``; fields a config leaves out take transformers' ``CLIPTextConfig`` /
``CLIPVisionConfig`` defaults (openai/clip-vit-base-patch32). Legacy configs that carry
``text_config_dict`` / ``vision_config_dict`` have those merged over the nested dicts, as
transformers does.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax

# Activation names as transformers' ACT2FN spells them.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults.
_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_DEFAULT_PROJECTION_DIM = 512
_DEFAULT_LOGIT_SCALE = 2.6592


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Hyperparameters of a CLIP text tower, vision tower and their projections.

  ``eos_token_id`` decides the text pooling exactly as transformers does: ``2`` (configs
  written before transformers PR #24773) pools at ``argmax(input_ids)``, any other id at the
  first position holding that id.
  """

  # Text tower.
  vocab_size: int
  text_width: int
  text_layers: int
  text_heads: int
  text_intermediate_size: int
  max_position_embeddings: int
  eos_token_id: int
  # Vision tower.
  vision_width: int
  vision_layers: int
  vision_heads: int
  vision_intermediate_size: int
  image_size: int
  patch_size: int
  # Shared.
  projection_dim: int
  text_hidden_act: str = "quick_gelu"
  vision_hidden_act: str = "quick_gelu"
  text_layer_norm_eps: float = 1e-5
  vision_layer_norm_eps: float = 1e-5
  num_channels: int = 3
  bos_token_id: int | None = None
  pad_token_id: int | None = None
  logit_scale_init_value: float = _DEFAULT_LOGIT_SCALE

  def __post_init__(self):
    for tower in ("text", "vision"):
      act = getattr(self, f"{tower}_hidden_act")
      if act not in ACTIVATIONS:
        raise ValueError(
            f"{tower}_config.hidden_act={act!r} is not supported: expected one of "
            f"{sorted(ACTIVATIONS)}"
        )
      width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
      if heads < 1 or width % heads:
        raise ValueError(
            f"{tower}_config: hidden_size={width} is not a multiple of "
            f"num_attention_heads={heads}"
        )
    if self.patch_size < 1 or self.image_size < self.patch_size:
      raise ValueError(
          f"vision_config: patch_size={self.patch_size} does not fit image_size={self.image_size}"
      )

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def legacy_eos_pooling(self) -> bool:
    """Pooling at argmax(input_ids) (``eos_token_id == 2``), as transformers does."""
    return self.eos_token_id == 2

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_hf_dict(cls, cfg: dict[str, Any], where: str = "config.json") -> "ClipConfig":
    """From a transformers ``CLIPConfig`` dict (``model_type`` ``"clip"``)."""
    text = {**_TEXT_DEFAULTS, **(cfg.get("text_config") or {}), **cfg.get("text_config_dict", {})}
    vision = {
        **_VISION_DEFAULTS,
        **(cfg.get("vision_config") or {}),
        **cfg.get("vision_config_dict", {}),
    }
    eos = text["eos_token_id"]
    if isinstance(eos, (list, tuple)) or eos is None:
      raise ValueError(
          f"{where}: text_config.eos_token_id={eos!r}: CLIP pools at one EOS id, expected an int"
      )
    try:
      return cls(
          vocab_size=int(text["vocab_size"]),
          text_width=int(text["hidden_size"]),
          text_layers=int(text["num_hidden_layers"]),
          text_heads=int(text["num_attention_heads"]),
          text_intermediate_size=int(text["intermediate_size"]),
          max_position_embeddings=int(text["max_position_embeddings"]),
          eos_token_id=int(eos),
          vision_width=int(vision["hidden_size"]),
          vision_layers=int(vision["num_hidden_layers"]),
          vision_heads=int(vision["num_attention_heads"]),
          vision_intermediate_size=int(vision["intermediate_size"]),
          image_size=_square(vision["image_size"], "image_size", where),
          patch_size=_square(vision["patch_size"], "patch_size", where),
          projection_dim=int(cfg.get("projection_dim", _DEFAULT_PROJECTION_DIM)),
          text_hidden_act=str(text["hidden_act"]),
          vision_hidden_act=str(vision["hidden_act"]),
          text_layer_norm_eps=float(text["layer_norm_eps"]),
          vision_layer_norm_eps=float(vision["layer_norm_eps"]),
          num_channels=int(vision["num_channels"]),
          bos_token_id=_optional_int(text.get("bos_token_id")),
          pad_token_id=_optional_int(text.get("pad_token_id")),
          logit_scale_init_value=float(cfg.get("logit_scale_init_value", _DEFAULT_LOGIT_SCALE)),
      )
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e


def _optional_int(x) -> int | None:
  return None if x is None else int(x)


def _square(value, name: str, where: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(
          f"{where}: vision_config.{name}={list(value)}: only square sizes are supported"
      )
    value = value[0]
  return int(value)
