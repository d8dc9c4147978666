"""CLIP score beside FID (scripts/eval_fid.py --clip_path): the same samples, scored by both,
per guidance scale -> the FID-vs-CLIP-score curve papers report (GLIDE, Imagen, Parti).

The COCO harness (`coco_fid.CocoFid`) keeps each shard's Inception features, not its images.
`ClipBesideFid.wrap` wraps a run's `sample_fn`: every shard the harness samples is also
scored with the CLIP, on the images FID sees (after `coco_fid.to_resolution`), and the
cosines are written to `<output_dir>/<run>/clip_score/shard-XXXXX.npz` (with the captions'
hash and the backbone, checked when read back). A shard whose features were kept from an
earlier run without --clip_path has no cosines yet; `finish` scores the shard's saved images
(--save_images) or samples the shard again (the sampler is a function of captions and seed,
so these are the same samples up to numerics). Each process scores its own shards; process 0
gathers them, adds the `ClipScore.as_dict()` fields to the run's result.json and writes
`fid_vs_clip_score.json` (+ `.md`): the curve, the backbone and the scale convention.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from imagen_jax.evaluation import clip_score as clip_score_lib
from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import fid
from imagen_jax.storage import paths

CLIP_DIR = "clip_score"
CURVE_JSON = "fid_vs_clip_score.json"
CURVE_MD = "fid_vs_clip_score.md"
SampleFn = Callable[[list, int], np.ndarray]


def _captions_hash(captions: Sequence[str]) -> str:  # = coco_fid's shard hash
  return hashlib.sha256(json.dumps(list(captions)).encode()).hexdigest()


class ClipBesideFid:
  """CLIP scores of a `coco_fid.CocoFid` harness's samples (module docstring)."""

  def __init__(self, scorer: clip_score_lib.ClipScorer, harness: coco_fid.CocoFid):
    self.scorer, self.harness = scorer, harness
    p = harness.protocol
    caps = harness.draw()["captions"]
    scorer.check_captions(caps)  # every caption, before any stage is loaded
    self.shards = [
        (k, caps[lo : lo + p.shard_size]) for k, lo in enumerate(range(0, len(caps), p.shard_size))
    ]
    self._by_seed = {coco_fid.seed_for_shard(p.seed, k): k for k, _ in self.shards}

  @classmethod
  def from_path(cls, clip_path: str, harness: coco_fid.CocoFid, **scorer_kw) -> ClipBesideFid:
    return cls(clip_score_lib.ClipScorer.from_path(clip_path, **scorer_kw), harness)

  def _path(self, run_dir: str, k: int) -> str:
    return coco_fid.join(run_dir, CLIP_DIR, f"shard-{k:05d}.npz")

  def _score(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    images = coco_fid.to_resolution(images, self.harness.protocol.resolution)
    return self.scorer.cosines(images, captions)

  def _save(self, run_dir: str, k: int, captions: Sequence[str], cosine: np.ndarray) -> None:
    if not paths.is_remote(run_dir):
      os.makedirs(os.path.join(run_dir, CLIP_DIR), exist_ok=True)
    fid.save_npz(
        self._path(run_dir, k),
        cosine=np.asarray(cosine, np.float64),
        captions_sha256=_captions_hash(captions),
        backbone=self.scorer.backbone,
    )

  def _load(self, run_dir: str, k: int, captions: Sequence[str]) -> np.ndarray | None:
    path = self._path(run_dir, k)
    try:
      z = fid.load_npz(path)
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      logging.warning("ignoring unreadable CLIP score shard %s (%s)", path, e)
      return None
    if str(z.get("backbone")) != self.scorer.backbone:
      raise ValueError(
          f"{path} was scored with CLIP {str(z.get('backbone'))!r}, not "
          f"{self.scorer.backbone!r}; use a new output directory (or delete {CLIP_DIR}/)"
      )
    if str(z.get("captions_sha256")) != _captions_hash(captions):
      raise ValueError(f"{path} belongs to a different draw; use a new output directory")
    return z["cosine"]

  def run_dir(self, name: str) -> str:
    return coco_fid.join(self.harness.out_dir, name)

  def wrap(self, sample_fn: SampleFn, name: str) -> SampleFn:
    """`sample_fn` that also scores (and saves) each harness shard it samples for run
    `name`."""
    run_dir = self.run_dir(name)

    def wrapped(captions, rng_seed):
      images = sample_fn(captions, rng_seed)
      k = self._by_seed.get(rng_seed)
      arr = np.asarray(images)
      ok = arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3
      if k is not None and list(captions) == self.shards[k][1] and ok and len(arr) == len(captions):
        self._save(run_dir, k, captions, self._score(arr, captions))
      return images  # anything malformed: the harness raises its own error

    return wrapped

  def _fill(self, sample_fn: SampleFn, run_dir: str) -> int:
    """Scores this process's shards that have features but no cosines; returns how many."""
    h = self.harness
    done = 0
    for k, captions in self.shards:
      if k % h.process_count != h.process_index or self._load(run_dir, k, captions) is not None:
        continue
      shard = fid.load_npz(coco_fid.join(run_dir, "shards", f"shard-{k:05d}.npz"))
      if "images" in shard:
        images = shard["images"]
      else:
        logging.warning(
            "shard %d of %s has FID features but no CLIP score (made without --clip_path) "
            "and no saved images: sampling it again",
            k,
            run_dir,
        )
        images = np.asarray(sample_fn(list(captions), coco_fid.seed_for_shard(h.protocol.seed, k)))
      self._save(run_dir, k, captions, self._score(images, captions))
      done += 1
    return done

  def finish(self, sample_fn: SampleFn, name: str) -> clip_score_lib.ClipScore | None:
    """After `harness.evaluate(..., name)`: missing shards scored, then on process 0 the
    run's score (other processes return None)."""
    run_dir = self.run_dir(name)
    filled = self._fill(sample_fn, run_dir)
    if filled:
      logging.info("CLIP-scored %d shards of %s after the fact", filled, run_dir)
    self.harness.barrier(f"clip_score_{name}")
    if self.harness.process_index != 0:
      return None
    cos = []
    for k, captions in self.shards:
      c = self._load(run_dir, k, captions)
      if c is None:
        raise RuntimeError(f"CLIP score shard {k} of {run_dir} is missing; rerun to resume")
      cos.append(c)
    return self.scorer.result(np.concatenate(cos))


def fid_vs_clip_score(results: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> dict:
  """The curve: one point per run (its base guidance scale, FID, CLIP score), with the
  backbone and the scale convention (`ClipScorer.info()`)."""
  points = [
      {
          "guidance_scale": r["settings"]["base_guidance_scale"],
          "fid": r["fid"],
          "clip_score": r["clip_score"],
          "run": r["name"],
      }
      for r in results
  ]
  return {**dict(info), "points": points}


def curve_table(curve: Mapping[str, Any]) -> str:
  lines = [
      f"CLIP score: {curve['clip_score_formula']}, backbone {curve['clip_backbone']}",
      "",
      "| base guidance w | FID | CLIP score |",
      "|---|---|---|",
  ]
  lines += [
      f"| {p['guidance_scale']:g} | {p['fid']:.3f} | {p['clip_score']:.3f} |"
      for p in curve["points"]
  ]
  return "\n".join(lines) + "\n"


def write_curve(out_dir: str, curve: Mapping[str, Any]) -> None:
  """`fid_vs_clip_score.json` and `.md` (call on process 0). No plot: matplotlib is not a
  dependency."""
  coco_fid.write_json(coco_fid.join(out_dir, CURVE_JSON), curve)
  paths.write_atomic(coco_fid.join(out_dir, CURVE_MD), curve_table(curve))
