"""Denoising networks of the cascade (Flax Linen) and their registry."""

from imagen_jax.models.efficient_unet import EfficientUNet
from imagen_jax.models.registry import get_model
from imagen_jax.models.registry import model_config
from imagen_jax.models.registry import model_names
from imagen_jax.models.registry import variants
from imagen_jax.models.unet import UNet

__all__ = ["EfficientUNet", "UNet", "get_model", "model_config", "model_names", "variants"]
