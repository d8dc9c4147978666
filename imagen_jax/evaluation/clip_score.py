"""CLIP score: how well images match their captions under a frozen CLIP.

The convention, stated in every output (`ClipScore.as_dict`):

  clip_score = mean over pairs i of  scale * max(cos(E_image(x_i), E_text(c_i)), 0)

with `scale = 100` by default: the ×100 scale of torchmetrics' `CLIPScore` and of the
numbers text-to-image papers report (GLIDE, DALL-E 2, Imagen, Parti). Hessel et al. 2021's
CLIPScore is the same with `scale = 2.5`. The clamp is per pair, as in Hessel et al.;
torchmetrics clamps the mean instead (`max(100 * mean cos, 0)`); the two agree whenever no
pair has a negative cosine, which is what `clip_score_negative_pairs` counts, and
`clip_score_mean_cosine` gives torchmetrics' exact value as `max(100 * it, 0)`. Scores made
with different CLIP backbones are not comparable, so the backbone is part of the output
(`clip_backbone`).

Unlike torchmetrics (which truncates with a warning), a caption longer than the CLIP's text
positions is an error naming it.

The CLIP is duck-typed: any object with `encode_images(images [B, H, W, 3] uint8 or float in
[-1, 1]) -> [B, D]` and `encode_texts(list[str]) -> [B, D]`, L2-normalised (they are
normalised again here, in float64), e.g. `imagen_jax.clip.load_clip(path)` (a Hugging Face
CLIPModel directory, or a project workdir with a CLIP trained on the shapes world); optional:
`tokenize(captions)` (then every caption's length is checked before anything is encoded), a
`backbone` or `name` string (else the name is derived from its `config`), and a fixed input
`resolution` (uint8 images are then resized to it, for a CLIP that does not resize itself).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

from imagen_jax import clip as clip_lib
from imagen_jax.evaluation import coco_fid

DEFAULT_SCALE = 100.0  # torchmetrics / GLIDE / Imagen; Hessel et al.'s CLIPScore: 2.5
HESSEL_SCALE = 2.5
# (vision width, layers) -> OpenAI / OpenCLIP ViT size names.
_VIT_SIZES = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H", (1408, 40): "g", (1664, 48): "bigG"}


def formula(scale: float) -> str:
  return f"mean_i {scale:g} * max(cos(image_i, caption_i), 0)"


def backbone_name(model: Any) -> str:
  """The CLIP's name for the output: its `backbone` or `name` string, else derived from an
  `imagen_jax.clip.ClipModel`'s config (e.g. 'ViT-B/32 (clip-vit-base-patch32)')."""
  for attr in ("backbone", "name"):
    value = getattr(model, attr, None)
    if isinstance(value, str) and value:
      return value
  cfg = getattr(model, "config", None)
  directory = getattr(model, "directory", None)
  where = f" ({os.path.basename(os.fspath(directory).rstrip('/'))})" if directory else ""
  model_cfg = getattr(cfg, "model", None)
  if getattr(model_cfg, "name", None):  # a project-trained CLIP: its training config
    name = f"{model_cfg.name}/{getattr(model_cfg, 'variant', None) or 'default'}"
    if getattr(model, "resolution", None):
      name += f"@{model.resolution}px"
    if getattr(model, "step", None) is not None:
      name += f", step {model.step}"
    return name + where
  if cfg is None or not hasattr(cfg, "vision_width"):
    return type(model).__name__ + where
  size = _VIT_SIZES.get((cfg.vision_width, cfg.vision_layers))
  arch = (
      f"ViT-{size}/{cfg.patch_size}"
      if size
      else f"ViT(width={cfg.vision_width},layers={cfg.vision_layers})/{cfg.patch_size}"
  )
  if cfg.image_size != 224:
    arch += f"@{cfg.image_size}px"
  return arch + where


def load(path: str) -> Any:
  """`imagen_jax.clip.load_clip(path)` with errors that name `clip_path`: a Hugging Face
  CLIPModel directory, or a project workdir holding a trained CLIP."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"clip_path={path!r} does not exist: expected a Hugging Face CLIPModel directory "
        "(config.json with model_type 'clip' + weights + tokenizer) or a project CLIP workdir"
    )
  try:
    return clip_lib.load_clip(path)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"clip_path={path!r} is not a usable CLIP: {e}") from e


@dataclasses.dataclass(frozen=True)
class ClipScore:
  """`mean` = the CLIP score; `per_sample` = scale * max(cos, 0) per pair (float64);
  `cosine` = the raw cosines."""

  mean: float
  per_sample: np.ndarray
  cosine: np.ndarray
  scale: float
  backbone: str

  def as_dict(self) -> dict:
    """The JSON fields; every one states the convention beside the value."""
    return {
        "clip_score": self.mean,
        "clip_score_scale": self.scale,
        "clip_score_formula": formula(self.scale),
        "clip_backbone": self.backbone,
        "clip_score_pairs": int(self.cosine.size),
        "clip_score_negative_pairs": int(np.sum(self.cosine < 0)),
        "clip_score_mean_cosine": float(np.mean(self.cosine)) if self.cosine.size else math.nan,
    }


def scores_from_cosines(cosine: np.ndarray, scale: float = DEFAULT_SCALE) -> np.ndarray:
  return float(scale) * np.maximum(np.asarray(cosine, np.float64), 0.0)


def _check_scale(scale: float) -> float:
  scale = float(scale)
  if not math.isfinite(scale) or scale <= 0:
    raise ValueError(f"scale={scale!r} must be a positive number (100: torchmetrics, 2.5: Hessel)")
  return scale


def _normalized(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _padded(items, size: int):
  """`items` padded to `size` rows by repeating the last (fixed shapes: one compile)."""
  if len(items) == size:
    return items
  if isinstance(items, np.ndarray):
    return np.concatenate([items, np.repeat(items[-1:], size - len(items), axis=0)])
  return list(items) + [items[-1]] * (size - len(items))


class ClipScorer:
  """CLIP scores of image/caption pairs with one CLIP; text embeddings are cached by
  caption (a guidance sweep scores the same captions once per scale)."""

  def __init__(
      self,
      clip_model: Any,
      *,
      batch_size: int = 64,
      scale: float = DEFAULT_SCALE,
      backbone: str | None = None,
  ):
    for method in ("encode_images", "encode_texts"):
      if not callable(getattr(clip_model, method, None)):
        raise TypeError(f"{type(clip_model).__name__} has no {method}(): not a CLIP model")
    if int(batch_size) < 1:
      raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    self.model = clip_model
    self.batch_size = int(batch_size)
    self.scale = _check_scale(scale)
    self.backbone = backbone or backbone_name(clip_model)
    self._text = {}

  @classmethod
  def from_path(cls, path: str, **kw) -> "ClipScorer":
    scorer = cls(load(path), **kw)
    logging.info("CLIP score with %s from %s: %s", scorer.backbone, path, formula(scorer.scale))
    return scorer

  def info(self) -> dict:
    return {
        "clip_backbone": self.backbone,
        "clip_score_scale": self.scale,
        "clip_score_formula": formula(self.scale),
    }

  def _batches(self, n: int):
    bs = min(self.batch_size, n)
    return bs, [(lo, min(lo + bs, n)) for lo in range(0, n, bs)]

  def check_captions(self, captions: Sequence[str]) -> None:
    """ValueError naming the first caption longer than the CLIP's text encoder takes (with
    a `tokenize` method; else `text_embeddings` finds it when encoding)."""
    captions = caption_list(captions)
    tokenize = getattr(self.model, "tokenize", None)
    if callable(tokenize) and captions:
      try:
        tokenize(captions)
      except ValueError as e:
        raise ValueError(f"CLIP score ({self.backbone}): {e}") from e

  def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
    """float64 [N, D], L2-normalised; each distinct caption is encoded once."""
    captions = caption_list(captions)
    todo = list(dict.fromkeys(c for c in captions if c not in self._text))
    if todo:
      bs, spans = self._batches(len(todo))
      for lo, hi in spans:
        try:
          emb = self.model.encode_texts(_padded(todo[lo:hi], bs))
        except ValueError as e:
          raise ValueError(f"CLIP score ({self.backbone}), captions {todo[lo:hi]!r}: {e}") from e
        for c, row in zip(todo[lo:hi], _normalized(emb)[: hi - lo]):
          self._text[c] = row
    if not captions:
      return np.zeros((0, 0))
    return np.stack([self._text[c] for c in captions])

  def image_embeddings(self, images) -> np.ndarray:
    """float64 [N, D], L2-normalised, of uint8 (or [-1, 1] float) images [N, H, W, 3].

    A CLIP with a fixed input `resolution` and no resizing of its own (the project's
    noise-aware CLIP) gets uint8 images resized to it first (centre crop, PIL bicubic)."""
    images = _check_images(images)
    size = getattr(self.model, "resolution", None)
    if size and images.dtype == np.uint8 and images.shape[1:3] != (size, size) and len(images):
      images = coco_fid.to_resolution(images, int(size))
    bs, spans = self._batches(len(images))
    out = [
        _normalized(self.model.encode_images(_padded(images[lo:hi], bs)))[: hi - lo]
        for lo, hi in spans
    ]
    return np.concatenate(out) if out else np.zeros((0, 0))

  def cosines(self, images, captions: Sequence[str]) -> np.ndarray:
    """float64 [N]: cos(image_i, caption_i)."""
    images, captions = _check_images(images), caption_list(captions)
    if len(images) != len(captions):
      raise ValueError(
          f"{len(images)} images for {len(captions)} captions: the CLIP score pairs image i "
          "with caption i, so the counts must be equal"
      )
    if not captions:
      return np.zeros((0,))
    self.check_captions(captions)
    text = self.text_embeddings(captions)
    return np.sum(self.image_embeddings(images) * text, axis=-1)

  def result(self, cosine: np.ndarray) -> ClipScore:
    cosine = np.asarray(cosine, np.float64).reshape(-1)
    if not cosine.size:
      raise ValueError("no image/caption pairs: a CLIP score needs at least one")
    per = scores_from_cosines(cosine, self.scale)
    return ClipScore(float(per.mean()), per, cosine, self.scale, self.backbone)

  def score(self, images, captions: Sequence[str]) -> ClipScore:
    return self.result(self.cosines(images, captions))


def clip_score(
    clip_model: Any,
    images,
    captions: Sequence[str],
    batch_size: int = 64,
    *,
    scale: float = DEFAULT_SCALE,
) -> ClipScore:
  """The CLIP score of `images[i]` against `captions[i]`: `.mean` = mean of
  `scale * max(cos, 0)` (×100 by default, the torchmetrics / paper scale; 2.5 for Hessel et
  al.'s CLIPScore), `.per_sample`, `.cosine`, `.backbone`; `.as_dict()` for JSON."""
  return ClipScorer(clip_model, batch_size=batch_size, scale=scale).score(images, captions)


def caption_list(captions) -> list[str]:
  if isinstance(captions, str):
    raise TypeError(f"captions must be a list of strings, not one string ({captions[:40]!r})")
  captions = list(captions)
  bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
  if bad:
    raise TypeError(f"caption {bad[0]} is {type(captions[bad[0]]).__name__}, not a string")
  return captions


def _check_images(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise TypeError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
  return images
