"""Caption-guided inpainting on the shapes world (`scripts/guidance_study.py --extras
inpaint`, issue #21): sample-time RePaint of the ordinary base stage against a GLIDE-style
inpainting stage (`configs/shapes.py:stage=inpaint`), on held-out captions.

The task: each scene (one object) is rendered at the base's resolution and its object is
erased by a hole, the object's box grown by `HOLE_MARGIN` pixels (`object_hole`); what stays
known is background. The sampler must paint the caption's object into the hole. Scored:
* `accuracy`: the scorer's caption accuracy of the whole image (`shapes.score`, at 32x32 by
  pixel repetition as the demo scores its base); only the hole can hold the object, so this
  is the accuracy of what was painted there (its place is given by the hole);
* `known_region_error`: mean |x - known| over the kept pixels, x and known in [0, 1].

Methods: `repaint` (the base stage; known pixels replaced at every step, `resample` R
repeats), `glide` (the inpainting stage alone: it sees the masked image and the mask and
paints every pixel itself, no paste), `glide+paste` (the inpainting stage with RePaint's
paste, R = 1). Each at CFG weight w = 1 (`unguided`) and at each w > 1 of `cfg_scales`, the
w chosen on the validation draw (training-pair captions), reported once on the held-out one.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Sequence

import numpy as np

from imagen_jax import demo
from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.data import shapes_score

HOLE_MARGIN = 1  # pixels around the object's box (the renderer anti-aliases one pixel out)
CFG_SCALES = (1.0, 3.0)
METHODS = ("repaint", "glide", "glide+paste")


def object_hole(scene, resolution: int, margin: int = HOLE_MARGIN) -> np.ndarray:
  """bool [r, r], True where a pixel is known: outside the first object's box + margin."""
  r = int(resolution)
  o = scene.objects[0]
  half = shapes.SIZES[o.size] / 2
  x0 = max(int(np.floor((o.x - half) * r)) - margin, 0)
  x1 = min(int(np.ceil((o.x + half) * r)) + margin, r)
  y0 = max(int(np.floor((o.y - half) * r)) - margin, 0)
  y1 = min(int(np.ceil((o.y + half) * r)) + margin, r)
  keep = np.ones((r, r), bool)
  keep[y0:y1, x0:x1] = False
  return keep


def edit_inputs(scenes, resolution: int):
  """(images uint8 [N, r, r, 3], keep bool [N, r, r]) of the inpainting task."""
  images = np.stack([shapes.render(s, resolution) for s in scenes])
  keep = np.stack([object_hole(s, resolution) for s in scenes])
  return images, keep


def known_region_error(images, known, keep) -> float:
  """Mean |x - known| over the kept pixels, both in [0, 1]."""
  diff = np.abs(images.astype(np.float32) - known.astype(np.float32)) / 255.0
  return float(diff[np.broadcast_to(keep[..., None], diff.shape)].mean())


@dataclasses.dataclass(frozen=True)
class Point:
  method: str
  cfg: float

  @property
  def tag(self) -> str:
    return f"inpaint_{self.method}_{self.cfg:g}".replace("+", "_")


def _sample(samplers, point: Point, captions, images, keep, how, resample: int, cache):
  if cache.exists():
    with np.load(cache) as saved:
      return saved["images"]
  stage = "base" if point.method == "repaint" else "inpaint"
  edit = sampling.Edit(
      images,
      keep,
      resample=resample if point.method == "repaint" else 1,
      paste=point.method != "glide",
  )
  out = samplers[stage].sample(
      captions, seed=0, settings=how.settings(point.cfg, 1), progress=False, edit=edit
  )[0]
  cache.parent.mkdir(parents=True, exist_ok=True)
  np.savez(cache, images=out)
  return out


def inpaint_study(
    base_stage: Any,
    inpaint_stage: Any,
    draws: dict,
    how: Any,
    cache_dir: pathlib.Path,
    *,
    cfg_scales: Sequence[float] = CFG_SCALES,
    resample: int = 2,
) -> tuple[dict, dict]:
  """(record, held-out images per (method, cfg)) of the inpainting comparison (module doc).

  base_stage / inpaint_stage: `sampling.load_stage` results at the same resolution;
  draws: {"validation": scenes, "heldout": scenes} (one object each); how: the study's
  `guidance_study.Sampling`."""
  r = base_stage.pipeline.resolution
  if inpaint_stage.pipeline.resolution != r or not inpaint_stage.pipeline.is_inpainting:
    raise ValueError(
        f"the inpainting stage ({inpaint_stage.workdir}) must be an inpainting stage at the "
        f"base's {r}x{r}; it is {inpaint_stage.pipeline.resolution}x"
        f"{inpaint_stage.pipeline.resolution}, inpainting={inpaint_stage.pipeline.is_inpainting}"
    )
  samplers = {
      "base": sampling.CascadeSampler([base_stage]),
      "inpaint": sampling.CascadeSampler([inpaint_stage]),
  }
  inputs = {k: edit_inputs(v, r) for k, v in draws.items()}
  captions = {k: [shapes.caption(s) for s in v] for k, v in draws.items()}
  sweeps, finals = {}, {}
  for method in METHODS:
    for w in cfg_scales:
      p = Point(method, float(w))
      entry = {"cfg": p.cfg}
      for draw in ("validation", "heldout"):
        images, keep = inputs[draw]
        out = _sample(
            samplers,
            p,
            captions[draw],
            images,
            keep,
            how,
            resample,
            cache_dir / f"{draw}__{p.tag}.npz",
        )
        scored = [demo.at_least(img, demo.MIN_SCORE_RES) for img in out]
        entry[draw] = shapes_score.mean_scores(
            [shapes.score(img, sc) for img, sc in zip(scored, draws[draw])]
        )
        entry[f"{draw}_known_region_error"] = known_region_error(out, images, keep)
        if draw == "heldout":
          finals[(method, p.cfg)] = out
      logging.info(
          "study: inpaint %-12s w %-4g validation %.3f held-out %.3f known-region error %.4f",
          method,
          p.cfg,
          entry["validation"]["accuracy"],
          entry["heldout"]["accuracy"],
          entry["heldout_known_region_error"],
      )
      sweeps.setdefault(method, []).append(entry)

  def chosen(method):
    guided = [e for e in sweeps[method] if e["cfg"] > 1.0] or sweeps[method]
    return max(guided, key=lambda e: (e["validation"]["accuracy"], -e["cfg"]))

  def unguided(method):
    return next((e for e in sweeps[method] if e["cfg"] == 1.0), None)

  best = {m: chosen(m) for m in METHODS}
  record = {
      "known_region_error": best["repaint"]["heldout_known_region_error"],
      "accuracy": best["repaint"]["heldout"]["accuracy"],
      "unguided_accuracy": (unguided("repaint") or {}).get("heldout", {}).get("accuracy"),
      "glide_stage_accuracy": best["glide"]["heldout"]["accuracy"],
      "glide_stage_known_region_error": best["glide"]["heldout_known_region_error"],
      "glide_stage_unguided_accuracy": (unguided("glide") or {}).get("heldout", {}).get("accuracy"),
      "glide_stage_pasted_accuracy": best["glide+paste"]["heldout"]["accuracy"],
      "chosen_cfg": {m: e["cfg"] for m, e in best.items()},
      "per_attribute": {m: e["heldout"] for m, e in best.items()},
      "resample": int(resample),
      "hole": f"the first object's box + {HOLE_MARGIN} px; the known region is background",
      "sweeps": sweeps,
  }
  return record, finals


def edit_grid(draw_scenes, finals, record, columns: int = 8) -> np.ndarray:
  """Held-out edits, a row each: the known image (hole black), then each method at its w."""
  rows, labels = [], []
  scenes = list(draw_scenes)[:columns]
  images, keep = edit_inputs(scenes, next(iter(finals.values())).shape[1])
  shown = np.where(keep[..., None], images, np.uint8(0))
  rows += list(shown)
  labels += [f"input: {shapes.caption(s)}" for s in scenes]
  for m in METHODS:
    w = record["chosen_cfg"][m]
    rows += list(finals[(m, w)][: len(scenes)])
    labels += [f"{m} w={w:g}: {shapes.caption(s)}" for s in scenes]
  return sampling.labelled_grid(rows, labels, columns=len(scenes), cell=96, label_lines=5)
