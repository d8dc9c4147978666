"""FID of a trained cascade on COCO (scripts/eval_fid.py): the stages loaded from their
workdirs, sampled at per-stage settings (and a sweep of the base stage's guidance scale)
through the resumable, host-sharded harness of imagen_jax.evaluation.coco_fid.

Output (written by process 0): `<output_dir>/fid.json` with every run's result, whether a
stage was trained on COCO (the zero-shot protocol assumes none was), and for a guidance
sweep `fid_vs_guidance.json` and `fid_vs_guidance.md`. With a CLIP (`clip=`, --clip_path),
each run's result also has the CLIP score of the same samples (`ClipScore.as_dict()`:
`clip_score`, `clip_score_scale`, `clip_backbone`, ...) and `fid_vs_clip_score.{json,md}`
is the FID-vs-CLIP-score curve (imagen_jax.evaluation.curve).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from imagen_jax import sampling
from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import curve as curve_lib
from imagen_jax.evaluation import inception
from imagen_jax.storage import paths


def make_extractor(
    weights: str | None, *, batch_size: int, image_size: int = 299, dtype: str = "float32"
) -> inception.FeatureExtractor:
  """The FID Inception from `weights` (a .pth/.npz path, None: the default cache file);
  'random:SEED' gives random weights, for tests only (the numbers are not FID)."""
  kw = dict(
      batch_size=batch_size,
      image_size=image_size,
      dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
  )
  if weights and weights.startswith("random:"):
    logging.warning("random Inception weights: the numbers are NOT FID values (tests only)")
    return inception.FeatureExtractor.random(int(weights.split(":", 1)[1]), **kw)
  return inception.FeatureExtractor.from_weights(weights, **kw)


def guidance_table(results: Sequence[Mapping[str, Any]]) -> str:
  """Markdown table of FID against the base stage's guidance scale."""
  lines = ["| base guidance w | FID |", "|---|---|"]
  lines += [f"| {r['settings']['base_guidance_scale']:g} | {r['fid']:.3f} |" for r in results]
  return "\n".join(lines) + "\n"


def evaluate(
    workdirs: Sequence[str],
    harness: coco_fid.CocoFid,
    *,
    per_stage: Mapping[str, Sequence],
    guidance_sweep: Sequence[float] | None = None,
    batch_size: int = 16,
    text_encoder: str | None = None,
    save_images: bool = False,
    clip: curve_lib.ClipBesideFid | None = None,
) -> dict:
  """Samples and scores each run; returns (and on process 0 writes) fid.json's record.

  `harness` has drawn its captions already (`harness.draw()`, which fails fast on too
  many samples before any stage is loaded); `per_stage` maps each sampler setting to one
  value per stage (None: the stage config's); `guidance_sweep` replaces the base stage's
  guidance scale with each value in turn, one run each; `clip` (built on `harness`) adds the
  CLIP score of the same samples to each run and writes the FID-vs-CLIP-score curve.
  """
  out_dir = harness.out_dir
  stages = [sampling.load_stage(w) for w in workdirs]
  coco_trained = {s.workdir: why for s in stages if (why := coco_fid.coco_training(s.config))}
  for workdir, why in coco_trained.items():
    logging.warning(
        "stage %s was trained on COCO (%s): zero-shot COCO FID assumes the model "
        "never saw COCO; this FID is not comparable to Imagen's",
        workdir,
        why,
    )
  settings = [
      sampling.StageSettings.from_config(
          s.config.sampling, **{k: per_stage[k][i] for k in per_stage}
      )
      for i, s in enumerate(stages)
  ]
  # Each host samples its own shards on its own devices.
  sampler = sampling.CascadeSampler(
      stages,
      settings,
      batch_size=batch_size,
      devices=jax.local_devices(),
      text_encoder=text_encoder,
  )
  runs = (
      [(None, settings)]
      if guidance_sweep is None
      else [
          (w, [dataclasses.replace(settings[0], guidance_scale=w)] + settings[1:])
          for w in guidance_sweep
      ]
  )
  results = []
  for w, run_settings in runs:
    name = "default" if w is None else f"base_w{w:g}"

    def sample_fn(captions, rng_seed, run_settings=run_settings):
      return sampler.sample(captions, rng_seed, settings=run_settings, progress=False)[-1]

    record = {
        "stages": [
            {
                "workdir": s.workdir,
                "checkpoint_step": s.step,
                "model": f"{s.config.model.name}/{s.config.model.variant}",
                **dataclasses.asdict(st),
            }
            for s, st in zip(stages, run_settings)
        ],
        "base_guidance_scale": run_settings[0].guidance_scale,
        "trained_on_coco": bool(coco_trained),
    }
    run_fn = sample_fn if clip is None else clip.wrap(sample_fn, name)
    result = harness.evaluate(run_fn, name, record, save_images=save_images)
    scored = None if clip is None else clip.finish(sample_fn, name)
    if result is not None:
      line = f"{name}: FID-{result['counts']['samples']} = {result['fid']:.4f}"
      if scored is not None:
        result.update(scored.as_dict())
        coco_fid.write_json(coco_fid.join(out_dir, name, "result.json"), result)
        line += f", CLIP score {scored.mean:.4f} ({scored.backbone}, x{scored.scale:g})"
      results.append(result)
      print(f"{line} ({result['counts']['shards_reused']} shards reused)")
  out = {
      "runs": results,
      "trained_on_coco": bool(coco_trained),
      "stages_trained_on_coco": coco_trained,
  }
  if guidance_sweep is not None:
    out["fid_vs_guidance"] = [
        {"base_guidance_scale": r["settings"]["base_guidance_scale"], "fid": r["fid"]}
        for r in results
    ]
  if clip is not None:
    out["fid_vs_clip_score"] = curve_lib.fid_vs_clip_score(results, clip.scorer.info())
  if jax.process_index() == 0:
    if clip is not None:
      curve_lib.write_curve(out_dir, out["fid_vs_clip_score"])
    if guidance_sweep is not None:
      coco_fid.write_json(coco_fid.join(out_dir, "fid_vs_guidance.json"), out["fid_vs_guidance"])
      paths.write_atomic(coco_fid.join(out_dir, "fid_vs_guidance.md"), guidance_table(results))
    coco_fid.write_json(coco_fid.join(out_dir, "fid.json"), out)
    print(
        json.dumps(
            {
                "output": coco_fid.join(out_dir, "fid.json"),
                "fid": {r["name"]: r["fid"] for r in results},
                "trained_on_coco": bool(coco_trained),
                **(
                    {}
                    if clip is None
                    else {
                        "clip_score": {r["name"]: r["clip_score"] for r in results},
                        **clip.scorer.info(),
                    }
                ),
            }
        )
    )
  return out
