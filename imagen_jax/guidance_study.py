"""The guidance study: classifier-free, classifier and CLIP guidance side by side on the shapes
world, scored by how well samples follow held-out captions (`scripts/guidance_study.py`).

`run_study(workdir)`:
1. trains what it needs in `workdir` (or reuses it; each run resumes from its checkpoints):
   the demo's cascade (`num_stages=1`, the default: the 16x16 base alone, its samples
   scored at 32x32 by pixel repetition as the demo scores them; `num_stages=2`: base + sr1), the noise-aware
   `classifier`, and the
   noise-aware shapes CLIP (`clip`) where `configs/shapes.py` has that stage;
   `stages_from=DIR` reads an already trained demo's `base`/`sr1` instead;
2. samples the cascade for two caption draws, guidance applied to the base stage: the demo's
   48 held-out captions (colour/shape pairs never trained on; `demo.heldout_scenes`) and a
   *validation* draw of 48 training-pair captions. Every method's scale is swept on both;
3. picks each method's scale on the validation draw and reports its held-out accuracy at that
   scale (no tuning on the held-out split), with every sweep point kept in `sweeps`;
4. measures the sampler's cost per method (one compiled batch, timed), and the guide's
   forward+backward pass against the U-Net's forward pass;
5. writes `workdir/guidance_study.json`, `guidance_study.png` (held-out accuracy against each
   method's scale) and `guidance_study_grid.png` (held-out captions, a row per method).

Methods: `unguided` (w = 1), `cfg` (w swept), `classifier` (w = 1, classifier scale swept),
`cfg+classifier` (w = `COMBINED_CFG`, classifier scale swept), with `x0_guides=True` also
`classifier_x0` / `cfg+classifier_x0` (the classifier on the denoiser's x0 estimate, the
gradient through the U-Net: about 10x the sampling cost, so off by default), and `clip` / `cfg+clip` alike when a CLIP guide exists. Samples of each (draw, method, scale) are cached in
`workdir/study_eval/`, so a rerun skips them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from imagen_jax import demo
from imagen_jax import clip as clip_lib
from imagen_jax import edit_study
from imagen_jax import unclip_study
from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.data import shapes_score
from imagen_jax.evaluation import clip_score as clip_score_lib
from imagen_jax.sampling import guides as guides_lib
from imagen_jax.sampling import line_plot

COMBINED_CFG = 3.0  # the CFG weight under which cfg+<guide> sweeps the guide's scale
CFG_SCALES = (1.5, 2.0, 3.0, 5.0)
GUIDE_SCALES = {
    "classifier": (1.0, 3.0, 10.0),
    "classifier_x0": (1.0, 3.0, 10.0, 30.0),
    "clip": (1.0, 3.0, 10.0, 30.0, 100.0),
}
VALIDATION_SEED = demo.VALIDATION_SEED  # the validation draw (training pairs), the demo's


@dataclasses.dataclass(frozen=True)
class Point:
  """One sampled setting: CFG weight `cfg`, guide `guide` (None: none) at `guide_scale`."""

  method: str
  scale: float  # the swept value: w for cfg/unguided, the guide scale otherwise
  cfg: float
  guide: str | None = None
  guide_scale: float = 0.0

  @property
  def tag(self) -> str:
    return f"{self.method}_{self.scale:g}".replace("+", "_")


def sweep_points(guide_names: Sequence[str]) -> list[Point]:
  points = [Point("unguided", 1.0, 1.0)]
  points += [Point("cfg", w, w) for w in CFG_SCALES]
  for g in guide_names:
    for s in GUIDE_SCALES[g]:
      points.append(Point(g, s, 1.0, g, s))
    for s in GUIDE_SCALES[g]:
      points.append(Point(f"cfg+{g}", s, COMBINED_CFG, g, s))
  return points


validation_scenes = demo.validation_scenes


@dataclasses.dataclass
class Sampling:
  """How the cascade samples in the study (the demo's defaults)."""

  sampler: str = "dpmpp_2m"
  num_steps: int = 24
  threshold: str = "dynamic"
  sr_sampler: str = "ddim"
  sr_num_steps: int = 12

  def settings(self, cfg: float, num_stages: int) -> list:
    base = sampling.StageSettings(
        sampler=self.sampler,
        num_steps=self.num_steps,
        guidance_scale=float(cfg),
        threshold=self.threshold,
    )
    sr = sampling.StageSettings(
        sampler=self.sr_sampler,
        num_steps=self.sr_num_steps,
        guidance_scale=1.0,
        threshold="static",
        aug_level=0.0,
    )
    return [base] + [sr] * (num_stages - 1)


def sample_point(cascade, point: Point, captions, guides, how: Sampling, cache: pathlib.Path):
  """(final images, base images) of a point, from the cache when it has them."""
  if cache.exists():
    with np.load(cache) as saved:
      return saved["images"], saved["base"]
  guide = guides[point.guide] if point.guide else None
  out = cascade.sample(
      captions,
      seed=0,
      settings=how.settings(point.cfg, len(cascade.stages)),
      progress=False,
      guide=guide,
      guide_scale=point.guide_scale,
  )
  cache.parent.mkdir(parents=True, exist_ok=True)
  np.savez(cache, images=out[-1], base=out[0])
  return out[-1], out[0]


def score(images, scenes) -> dict:
  return shapes_score.mean_scores([shapes.score(img, sc) for img, sc in zip(images, scenes)])


def choose(sweep: Sequence[dict]) -> dict:
  """The sweep point with the best validation accuracy (ties: the smaller scale)."""
  return max(sweep, key=lambda p: (p["validation"]["accuracy"], -p["scale"]))


def time_methods(cascade, guides, captions, how: Sampling, repeats: int = 3) -> dict:
  """Seconds per base-stage batch of each method: the fastest of `repeats` compiled calls
  (the first, compiling call is discarded; the minimum is the least disturbed by other
  work on shared cores)."""
  base = sampling.CascadeSampler(
      cascade.stages[:1], batch_size=len(captions), devices=list(cascade.mesh.devices.flat)
  )
  cases = {"unguided": (1.0, None), "cfg": (COMBINED_CFG, None)}
  for g in guides:
    cases[g] = (1.0, g)
    cases[f"cfg+{g}"] = (COMBINED_CFG, g)
  out = {}
  for name, (cfg, g) in cases.items():
    kw = dict(settings=how.settings(cfg, 1), progress=False)
    if g:
      kw.update(guide=guides[g], guide_scale=1.0)
    base.sample(captions, **kw)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      base.sample(captions, **kw)
      times.append(time.perf_counter() - start)
    out[name] = min(times)
  ratios = {"unguided": 1.0}
  for g in guides:
    ratios[g] = out[g] / out["unguided"]
    ratios[f"cfg+{g}"] = out[f"cfg+{g}"] / out["cfg"]
  return {"seconds_per_batch": out, "ratio_to_unguided_counterpart": ratios}


def run_study(
    workdir,
    *,
    configs: Mapping[str, Any],
    stages_from: str | None = None,
    num_eval: int = 48,
    how: Sampling | None = None,
    train: bool = True,
    num_stages: int = 1,
    x0_guides: bool = False,
    extras: Sequence[str] = (),
) -> dict:
  """Trains (or reuses) the runs, samples every sweep point, writes the outputs."""
  how = how or Sampling()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  stage_root = pathlib.Path(stages_from) if stages_from else workdir
  if num_stages not in (1, 2):
    raise ValueError(f"num_stages={num_stages}: the study samples base (1) or base + sr1 (2)")
  stage_names = ("base", "sr1")[:num_stages]
  configs = {n: c for n, c in configs.items() if n not in ("base", "sr1") or n in stage_names}
  runs = {n: stage_root / n for n in stage_names}
  runs.update({g: workdir / g for g in configs if g not in ("base", "sr1")})
  for name in ("prior", "decoder"):  # unCLIP reads the study's own CLIP
    if name in configs and not configs[name][name].get("clip"):
      configs[name][name].clip = str(runs["clip"])
  if train:
    to_train = [n for n in configs if not (stages_from and n in ("base", "sr1"))]
    demo.train_stages([configs[n] for n in to_train], workdir, to_train)
  train_seconds = time.perf_counter() - start

  cascade = sampling.CascadeSampler([sampling.load_stage(str(runs[n])) for n in stage_names])
  guides = {}
  if "classifier" in configs:
    guides["classifier"] = guides_lib.ClassifierGuide(
        guides_lib.load_classifier(runs["classifier"])
    )
    if x0_guides:  # the gradient through the U-Net: ~10x the cost of a step, opt-in
      guides["classifier_x0"] = guides_lib.ClassifierGuide(guides["classifier"].classifier, on="x0")
  if "clip" in configs:
    guides["clip"] = guides_lib.ClipGuide(clip_lib.load_clip(str(runs["clip"])))
  max_objects = int(configs["base"].input.get("max_objects", 1)) if "base" in configs else 1
  draws = {
      "heldout": demo.heldout_scenes(num_eval, seed=1234, max_objects=max_objects),
      "validation": validation_scenes(num_eval, max_objects=max_objects),
  }
  captions = {k: [shapes.caption(s) for s in v] for k, v in draws.items()}
  final_res = cascade.stages[-1].pipeline.resolution
  chance, ceiling = demo.scorer_reference(draws["heldout"], final_res)

  scorer = None
  if "clip" in guides:
    scorer = clip_score_lib.ClipScorer(guides["clip"].clip)
  points = sweep_points(list(guides))
  sweeps: dict[str, list] = {}
  finals = {}
  for p in points:
    entry = {"scale": p.scale, "cfg": p.cfg, "guide_scale": p.guide_scale}
    for draw in ("validation", "heldout"):
      cache = workdir / "study_eval" / f"{draw}__{p.tag}.npz"
      images, base = sample_point(cascade, p, captions[draw], guides, how, cache)
      images = [demo.at_least(img, demo.MIN_SCORE_RES) for img in images]
      entry[draw] = score(images, draws[draw])
      entry[f"{draw}_base_stage"] = score(
          [demo.at_least(b, demo.MIN_SCORE_RES) for b in base], draws[draw]
      )
      if draw == "heldout":
        finals[(p.method, p.scale)] = images
        if scorer is not None:  # on the base images, at the shapes CLIP's resolution
          entry["heldout_clip_score"] = scorer.score(base, captions[draw]).as_dict()
    logging.info(
        "study: %-16s scale %-5g validation %.3f held-out %.3f",
        p.method,
        p.scale,
        entry["validation"]["accuracy"],
        entry["heldout"]["accuracy"],
    )
    sweeps.setdefault(p.method, []).append(entry)

  chosen = {m: choose(s) for m, s in sweeps.items()}
  extra_records, extra_grids = {}, {}
  if "inpaint" in extras:
    extra_records["inpaint"], inpaint_finals = edit_study.inpaint_study(
        cascade.stages[0],
        sampling.load_stage(str(runs["inpaint"])),
        draws,
        how,
        workdir / "study_eval",
    )
    extra_grids["guidance_study_edits.png"] = edit_study.edit_grid(
        draws["heldout"], inpaint_finals, extra_records["inpaint"]
    )
  if "unclip" in extras:
    extra_records["unclip"], extra_grids["guidance_study_unclip.png"] = unclip_study.unclip_study(
        runs["prior"],
        sampling.load_stage(str(runs["decoder"])),
        guides["clip"].clip,
        draws,
        how,
        workdir / "study_eval",
    )
  timing = time_methods(cascade, guides, captions["heldout"][:16], how)
  record = {
      "chance": chance,
      "ground_truth": ceiling,
      "accuracy": {m: c["heldout"]["accuracy"] for m, c in chosen.items()},
      "chosen_scale": {m: c["scale"] for m, c in chosen.items()},
      "per_attribute": {m: c["heldout"] for m, c in chosen.items()},
      "base_stage_accuracy": {m: c["heldout_base_stage"]["accuracy"] for m, c in chosen.items()},
      "clip_score": {m: c["heldout_clip_score"]["clip_score"] for m, c in chosen.items() if scorer},
      "clip_score_note": (
          "held-out base-stage images under the study's own shapes CLIP (the CLIP guide's "
          "model, so CLIP-guided points are scored by the model they were steered by); "
          "100 * max(cos, 0), evaluation/clip_score.py"
          if scorer
          else "no CLIP in this run"
      ),
      "sweeps": sweeps,
      "timing": timing,
      "selection": "each method's scale is the best on a validation draw of training-pair "
      f"captions (seed {VALIDATION_SEED}); accuracy is on the held-out draw at that scale",
      "num_eval_captions": num_eval,
      "resolution": final_res,
      "stages": list(stage_names),
      "sampling": dataclasses.asdict(how),
      "combined_cfg": COMBINED_CFG,
      "runs": {k: str(v) for k, v in runs.items()},
      "train_seconds": train_seconds,
      "wall_seconds": time.perf_counter() - start,
  }
  record.update(extra_records)
  if "unclip" in extra_records:  # one row of the table beside the guides
    record["accuracy"]["unclip"] = extra_records["unclip"]["accuracy"]
  for name, grid in extra_grids.items():
    Image.fromarray(grid).save(workdir / name)
    record.setdefault("extra_grids", []).append(name)
  record["wall_seconds"] = time.perf_counter() - start
  _write_outputs(workdir, record, finals, captions["heldout"], chosen)
  return record


def _write_outputs(workdir: pathlib.Path, record, finals, captions, chosen) -> None:
  series = {
      m: [(p["scale"], p["heldout"]["accuracy"]) for p in s]
      for m, s in record["sweeps"].items()
      if m != "unguided"
  }
  plot = line_plot.line_plot(
      series,
      title="held-out caption accuracy vs scale (cfg: w; guides: their scale)",
      xlabel="scale (log)",
      ylabel="accuracy",
      hlines={"chance": record["chance"], "unguided": record["accuracy"]["unguided"]},
      log_x=True,
  )
  Image.fromarray(plot).save(workdir / "guidance_study.png")
  cols = min(8, len(captions))
  rows, labels = [], []
  for m, c in chosen.items():
    rows += list(finals[(m, c["scale"])][:cols])
    labels += [f"{m} {c['scale']:g}: {cap}" for cap in captions[:cols]]
  grid = sampling.labelled_grid(rows, labels, columns=cols, cell=96, label_lines=5)
  Image.fromarray(grid).save(workdir / "guidance_study_grid.png")
  record["plot"], record["grid"] = "guidance_study.png", "guidance_study_grid.png"
  (workdir / "guidance_study.json").write_text(json.dumps(record, indent=2))


def format_table(record) -> str:
  clip = record.get("clip_score") or {}
  lines = [f"{'method':<18} scale  held-out  base stage  CLIP score", "-" * 58]
  for m, acc in record["accuracy"].items():
    if m not in record["chosen_scale"]:  # unCLIP: its own sweep, below
      continue
    c = f"{clip[m]:.1f}" if m in clip else "-"
    lines.append(
        f"{m:<18} {record['chosen_scale'][m]:<6g} {acc:.3f}     "
        f"{record['base_stage_accuracy'][m]:.3f}       {c}"
    )
  if "unclip" in record:
    u = record["unclip"]
    lines.append(
        f"{'unclip':<18} prior w={u['chosen']['prior_cfg']:g}, decoder w="
        f"{u['chosen']['decoder_cfg']:g}: {u['accuracy']:.3f} (true embedding: "
        f"{u['decoder_true_embedding_accuracy']:.3f})"
    )
  if "inpaint" in record:
    i = record["inpaint"]
    lines.append(
        f"{'inpaint (hole)':<18} RePaint w={i['chosen_cfg']['repaint']:g}: {i['accuracy']:.3f} "
        f"(w=1: {i['unguided_accuracy']:.3f}; known-region error "
        f"{i['known_region_error']:.4f}); GLIDE stage {i['glide_stage_accuracy']:.3f} "
        f"(error {i['glide_stage_known_region_error']:.4f})"
    )
  lines.append(f"{'chance (unrelated)':<18}        {record['chance']:.3f}")
  lines.append(f"{'ground truth':<18}        {record['ground_truth']:.3f}")
  return "\n".join(lines)
