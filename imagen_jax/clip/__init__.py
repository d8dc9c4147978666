"""Frozen CLIP (image and text towers) in Flax, imported from Hugging Face ``CLIPModel``
directories, or the noise-aware CLIP this project trains (`config.task = "clip"`), for CLIP
guidance and CLIP scores.

Public API (docs/clip.md):
  load_clip(path, *, dtype=float32, precision=None) -> ClipModel
  ClipModel.image_features(pixel_values NHWC, normalised) = transformers' get_image_features
  ClipModel.text_features(input_ids, mask) = get_text_features
  ClipModel.encode_images(images uint8 or [-1, 1]) / .encode_texts(captions): L2-normalised
  ClipModel.image_features_fn(params, ...), .text_features_fn(params, ...),
    .encode_images_fn(params, ...), .encode_ids_fn(params, ...): pure, for jit/grad
  ClipModel.config (ClipConfig), .params, .logit_scale, .projection_dim, .image_size
  load_clip(workdir) -> clip.noisy.NoisyClipModel: the same interface plus log_snr
    (image_features(pixel_values, log_snr), encode_images(images, log_snr=None)),
    similarity_fn(texts, schedule) for diffusion.similarity_guidance, check_stage(resolution)

Importing this package loads no weights and imports none of torch, transformers or
tokenizers. It imports nothing of imagen_jax but imagen_jax.text (the safe weight readers);
clip.noisy, imported when a workdir is loaded, reads it with imagen_jax.models,
imagen_jax.train (clip_task) and imagen_jax.sampling (cascade.restore_run).
"""

from imagen_jax.clip.config import ClipConfig
from imagen_jax.clip.load import ClipModel
from imagen_jax.clip.load import load_clip
