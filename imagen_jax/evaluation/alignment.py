"""Caption alignment on the shapes world: how often samples show what the caption says.

The demo's metric: draw scenes of the held-out split (colour/shape pairs training never
showed) with `np.random.default_rng(seed)` -- the same draw as `imagen_jax.demo` for the
same seed and `max_objects` -- caption them, sample one image per caption, and score each
image against its scene with `shapes.score` (per-attribute correctness, overall
`accuracy`). Two references put the number in context: `chance` (renders of *unrelated*
scenes scored against the captions: a generator that ignores the text) and `ceiling`
(ground-truth renders at the sample resolution).
"""

from typing import Callable, Sequence

import numpy as np

from imagen_jax.data import shapes
from imagen_jax.data import shapes_score

SampleFn = Callable[[list, int], np.ndarray]


def draw_scenes(num: int, seed: int = 0, split: str = "heldout", max_objects: int = 1) -> list:
  if num < 1:
    raise ValueError(f"num_samples={num} must be >= 1")
  rng = np.random.default_rng(seed)
  return [shapes.sample_scene(rng, split, max_objects=max_objects) for _ in range(num)]


def score_images(images: np.ndarray, scenes: Sequence) -> dict:
  """Mean `shapes.score` of uint8 images [N, H, W, 3] against their scenes."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise TypeError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
  if len(images) != len(scenes):
    raise ValueError(f"{len(images)} images for {len(scenes)} scenes")
  return shapes_score.mean_scores(shapes.score(img, sc) for img, sc in zip(images, scenes))


def references(scenes: Sequence, resolution: int) -> dict:
  """{"chance": unrelated renders' accuracy, "ceiling": own renders' accuracy}."""
  renders = np.stack([shapes.render(s, resolution) for s in scenes])
  shifted = np.roll(renders, 1, axis=0)
  return {
      "chance": score_images(shifted, scenes)["accuracy"] if len(scenes) > 1 else 0.0,
      "ceiling": score_images(renders, scenes)["accuracy"],
  }


def evaluate(
    sample_fn: SampleFn,
    num_samples: int = 64,
    seed: int = 0,
    split: str = "heldout",
    max_objects: int = 1,
    sample_seed: int | None = None,
    with_references: bool = True,
) -> dict:
  """Scores `sample_fn(captions, rng_seed)` on `num_samples` held-out captions.

  Returns the mean per-attribute scores (`accuracy`, `colour`, `shape`, ..., `all_correct`)
  and, with `with_references`, `chance` and `ceiling` at the sample resolution.
  """
  scenes = draw_scenes(num_samples, seed, split, max_objects)
  captions = [shapes.caption(s) for s in scenes]
  images = np.asarray(sample_fn(captions, seed if sample_seed is None else sample_seed))
  out = score_images(images, scenes)
  out.pop("num_detected", None)
  if with_references:
    out.update(references(scenes, images.shape[1]))
  return out
