"""unCLIP on the shapes world (`scripts/guidance_study.py --extras unclip`, issue #21): the
diffusion prior maps a caption to the study's shapes CLIP image embedding, the decoder
turns the embedding (and the caption) into a 16x16 image; scored on the held-out captions
like every other method of the study.

Swept: the prior's CFG weight (`PRIOR_SCALES`) x the decoder's (`DECODER_SCALES`), chosen
on the validation draw and reported once on the held-out one. Two references at the
decoder's chosen weight: `decoder_true_embedding` decodes the CLIP embedding of each scene's
own render (what a perfect prior would give: the decoder alone), and `variations` decodes
the embeddings of the first held-out renders with an empty caption (DALL·E 2's image
variations; a grid).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import numpy as np

from imagen_jax import demo
from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.data import shapes_score
from imagen_jax.sampling import unclip

PRIOR_SCALES = (1.0, 3.0)
DECODER_SCALES = (1.0, 3.0)


def _score(images, scenes) -> dict:
  return shapes_score.mean_scores(
      [shapes.score(demo.at_least(img, demo.MIN_SCORE_RES), sc) for img, sc in zip(images, scenes)]
  )


def _cached(path: pathlib.Path, make):
  if path.exists():
    with np.load(path) as saved:
      return saved["images"]
  out = make()
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, images=out)
  return out


def unclip_study(
    prior_dir, decoder_stage: Any, clip: Any, draws: dict, how: Any, cache_dir: pathlib.Path
) -> tuple[dict, np.ndarray]:
  """(record, a grid of held-out unCLIP samples and variations) (module docstring).

  prior_dir: a trained prior run; decoder_stage: `sampling.load_stage` of a decoder run;
  clip: the CLIP both were trained on; draws: {"validation", "heldout"} scenes; how: the
  study's `guidance_study.Sampling` (the sampler and step count serve the prior too)."""
  prior = unclip.PriorSampler(unclip.load_prior(str(prior_dir)))
  decoder = sampling.CascadeSampler([decoder_stage])
  r = decoder_stage.pipeline.resolution
  captions = {k: [shapes.caption(s) for s in v] for k, v in draws.items()}
  sweep, finals = [], {}
  for wp in PRIOR_SCALES:
    embeds = {
        k: prior.sample(c, guidance_scale=wp, num_steps=how.num_steps, sampler=how.sampler, seed=0)
        for k, c in captions.items()
    }
    for wd in DECODER_SCALES:
      entry = {"prior_cfg": wp, "decoder_cfg": wd}
      for draw in ("validation", "heldout"):
        images = _cached(
            cache_dir / f"{draw}__unclip_p{wp:g}_d{wd:g}.npz",
            lambda: decoder.sample(
                captions[draw],  # pylint: disable=cell-var-from-loop
                seed=0,
                settings=how.settings(wd, 1),
                progress=False,
                image_embed=embeds[draw],  # pylint: disable=cell-var-from-loop
            )[0],
        )
        entry[draw] = _score(images, draws[draw])
        if draw == "heldout":
          finals[(wp, wd)] = images
      logging.info(
          "study: unclip prior w %-4g decoder w %-4g validation %.3f held-out %.3f",
          wp,
          wd,
          entry["validation"]["accuracy"],
          entry["heldout"]["accuracy"],
      )
      sweep.append(entry)
  best = max(sweep, key=lambda e: (e["validation"]["accuracy"], -e["prior_cfg"], -e["decoder_cfg"]))
  wd = best["decoder_cfg"]
  renders = np.stack([shapes.render(s, r) for s in draws["heldout"]])
  true_z = unclip.embed_images(clip, renders)
  oracle = _cached(
      cache_dir / f"heldout__unclip_true_embedding_d{wd:g}.npz",
      lambda: decoder.sample(
          captions["heldout"],
          seed=0,
          settings=how.settings(wd, 1),
          progress=False,
          image_embed=true_z,
      )[0],
  )
  cols = min(8, len(renders))
  variations = _cached(
      cache_dir / f"heldout__unclip_variations_d{wd:g}.npz",
      lambda: decoder.sample(
          [""] * cols,
          seed=1,
          settings=how.settings(wd, 1),
          progress=False,
          image_embed=true_z[:cols],
      )[0],
  )
  record = {
      "accuracy": best["heldout"]["accuracy"],
      "chosen": {"prior_cfg": best["prior_cfg"], "decoder_cfg": wd},
      "per_attribute": best["heldout"],
      "decoder_true_embedding_accuracy": _score(oracle, draws["heldout"])["accuracy"],
      "clip": str(getattr(clip, "directory", "") or prior.prior.clip_path),
      "sweeps": sweep,
  }
  heldout = captions["heldout"][:cols]
  rows = list(renders[:cols]) + list(finals[(best["prior_cfg"], wd)][:cols]) + list(variations)
  labels = (
      [f"render: {c}" for c in heldout]
      + [f"unCLIP: {c}" for c in heldout]
      + ["variation of the top row's render (empty caption)"] * cols
  )
  grid = sampling.labelled_grid(rows, labels, columns=cols, cell=96, label_lines=5)
  return record, grid
