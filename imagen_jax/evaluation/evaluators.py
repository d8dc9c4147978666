"""Evaluators for the training loop, big_vision style: `Evaluator(sample_fn, **cfg).run(params)`.

`sample_fn(params, captions: list[str], rng_seed: int) -> uint8 [N, H, W, 3]` is all an
evaluator knows about the model (evaluation never imports train or pipeline); `run(params)`
samples with those params (the loop passes the current EMA params) and yields
`(name, value)` pairs. `config.evals.<name>` entries are dicts with `type` (a key
of `EVALUATORS`; defaults to the entry's name), `log_steps` and the evaluator's kwargs;
`from_config` builds them:

  config.evals.alignment = dict(type="alignment", log_steps=1000, num_samples=64)
  config.evals.fid = dict(type="fid", log_steps=5000, num_samples=1000, resolution=64,
                          inception_weights="/path/pt_inception-2015-12-05-6726825d.pth")
  config.evals.clip_score = dict(type="clip_score", log_steps=5000, num_samples=1000,
                                 clip_path="/path/clip-vit-large-patch14", captions="coco",
                                 annotations=".../captions_val2014.json", image_dir=".../val2014")

  evaluators = evaluators_lib.from_config(config.evals, sample_fn)
  for name, evaluator, log_steps in evaluators:
    if config_lib.itstime(step, log_steps, total_steps):
      for key, value in evaluator.run(state.ema_params):
        writer.write_scalars(step, {f"{name}/{key}": value})
"""

import logging
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from imagen_jax.evaluation import alignment
from imagen_jax.evaluation import clip_score as clip_score_lib
from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import fid
from imagen_jax.evaluation import inception

SampleFn = Callable[[Any, list, int], np.ndarray]


def open_source(
    dataset: str,
    resolution: int,
    split: str = "heldout",
    max_objects: int = 1,
    annotations: str | None = None,
    image_dir: str | None = None,
    tfds_name: str | None = None,
    tfds_split: str = coco_fid.TFDS_VAL2014_SPLIT,
    data_dir: str | None = None,
):
  """The records an evaluator draws: the shapes world's `split` rendered at `resolution`,
  or COCO 2014 val (`annotations` + `image_dir`, or `tfds_name` in `data_dir`)."""
  if dataset == "shapes":
    from imagen_jax.data import sources  # pylint: disable=import-outside-toplevel

    return sources.ShapesSource(resolution, split, max_objects)
  if dataset == "coco":
    return coco_fid.open_source(annotations, image_dir, tfds_name, tfds_split, data_dir)
  raise ValueError(f"dataset must be 'shapes' or 'coco', got {dataset!r}")


def draw_captions(source, num_samples: int, seed: int) -> list[str]:
  """The captions of the records `coco_fid` draws (without replacement) for `seed`: the
  same captions as a `FidEvaluator` of the same source, `num_samples` and `seed`."""
  return [
      source.read(int(i), np.random.default_rng([int(seed), int(i)]))[1]
      for i in coco_fid.draw_indices(source, num_samples, seed)
  ]


class AlignmentEvaluator:
  """Shapes-world caption alignment (the demo's metric) of held-out captions."""

  def __init__(
      self,
      sample_fn: SampleFn,
      *,
      num_samples: int = 64,
      seed: int = 0,
      split: str = "heldout",
      max_objects: int = 1,
  ):
    self.sample_fn = sample_fn
    self.kw = dict(
        num_samples=int(num_samples), seed=int(seed), split=split, max_objects=int(max_objects)
    )
    self._refs = None

  def run(self, params: Any) -> Iterator[tuple[str, float]]:
    # The same captions and noise every time: steps are comparable.
    res = alignment.evaluate(
        lambda captions, seed: self.sample_fn(params, captions, seed),
        with_references=self._refs is None,
        **self.kw,
    )
    if self._refs is None:
      self._refs = {k: res.pop(k) for k in ("chance", "ceiling")}
    res.update(self._refs)
    for key in sorted(res):
      yield key, float(res[key])


class FidEvaluator:
  """FID of samples against the drawn records' images, in memory (no shards on disk).

  dataset="shapes": records are shapes-world scenes of `split` rendered at `resolution`;
  dataset="coco": COCO 2014 val through `annotations` + `image_dir` or `tfds_name`
  (in `data_dir`; drawn without replacement, as in `coco_fid`). Captions and reference statistics are
  made once, on the first run. `inception_weights` is a pytorch-fid .pth / .npz path (local
  or gs://, copied into the local cache once), or "random:SEED" for tests (then the value
  is not an FID).
  """

  def __init__(
      self,
      sample_fn: SampleFn,
      *,
      resolution: int,
      num_samples: int = 1000,
      seed: int = 0,
      dataset: str = "shapes",
      split: str = "heldout",
      max_objects: int = 1,
      annotations: str | None = None,
      image_dir: str | None = None,
      tfds_name: str | None = None,
      tfds_split: str = coco_fid.TFDS_VAL2014_SPLIT,
      data_dir: str | None = None,
      inception_weights: str | None = None,
      inception_image_size: int = 299,
      inception_batch_size: int = 64,
      sample_batch_size: int = 256,
  ):
    if dataset not in ("shapes", "coco"):
      raise ValueError(f"dataset must be 'shapes' or 'coco', got {dataset!r}")
    self.sample_fn = sample_fn
    self.resolution, self.num_samples, self.seed = int(resolution), int(num_samples), int(seed)
    self.sample_batch_size = int(sample_batch_size)
    self._source_args = (
        dataset,
        split,
        max_objects,
        annotations,
        image_dir,
        tfds_name,
        tfds_split,
        data_dir,
    )
    kw = dict(batch_size=inception_batch_size, image_size=inception_image_size)
    if inception_weights and inception_weights.startswith("random:"):
      self.extractor = inception.FeatureExtractor.random(int(inception_weights[7:]), **kw)
    else:  # fails now, not at the first eval step, when the file is missing
      self.extractor = inception.FeatureExtractor.from_weights(inception_weights, **kw)
    self._captions = None
    self._ref = None

  def _source(self):
    dataset, *rest = self._source_args
    return open_source(dataset, self.resolution, *rest)

  def _prepare(self):
    source = self._source()
    indices = coco_fid.draw_indices(source, self.num_samples, self.seed)
    captions, feats = [], []
    for lo in range(0, len(indices), self.sample_batch_size):
      pairs = [
          coco_fid.read_record(source, i, self.seed, self.resolution)
          for i in indices[lo : lo + self.sample_batch_size]
      ]
      captions += [c for _, c in pairs]
      feats.append(self.extractor(np.stack([im for im, _ in pairs])))
    self._captions = captions
    self._ref = np.concatenate(feats)

  def run(self, params: Any) -> Iterator[tuple[str, float]]:
    if self._ref is None:
      self._prepare()
    feats = []
    bs = self.sample_batch_size
    for k, lo in enumerate(range(0, len(self._captions), bs)):
      caps = self._captions[lo : lo + bs]
      images = np.asarray(self.sample_fn(params, caps, coco_fid.seed_for_shard(self.seed, k)))
      inception.check_images(images, "sample_fn output")
      feats.append(self.extractor(coco_fid.to_resolution(images, self.resolution)))
    yield "fid", fid.frechet_distance_from_features(np.concatenate(feats), self._ref)


class ClipScoreEvaluator:
  """CLIP score (imagen_jax.evaluation.clip_score: mean of scale * max(cos, 0), ×100 by
  default) of samples against their captions, with the CLIP at `clip_path` (a Hugging Face
  CLIPModel directory, or a project workdir with a trained CLIP), loaded at construction so
  a bad path fails before training.

  `captions`: "shapes" (the shapes world's `split`, drawn as `FidEvaluator` draws them),
  "coco" (COCO 2014 val through `annotations` + `image_dir` or `tfds_name`; the FID
  evaluator's draw for the same `seed` and `num_samples`), or a list of captions (the
  first `num_samples`). A source is drawn once, on the first run; a caption longer than the
  CLIP takes is a ValueError naming it (then, or at construction for listed captions).
  Batch k is sampled with `coco_fid.seed_for_shard(seed, k)`, as the FID evaluator does.
  Yields `clip_score` and `clip_score_scale`; the backbone is `self.backbone` (logged).
  """

  def __init__(
      self,
      sample_fn: SampleFn,
      *,
      clip_path: str,
      captions: Any = "shapes",
      num_samples: int = 64,
      seed: int = 0,
      split: str = "heldout",
      max_objects: int = 1,
      annotations: str | None = None,
      image_dir: str | None = None,
      tfds_name: str | None = None,
      tfds_split: str = coco_fid.TFDS_VAL2014_SPLIT,
      data_dir: str | None = None,
      scale: float = clip_score_lib.DEFAULT_SCALE,
      clip_batch_size: int = 64,
      sample_batch_size: int = 256,
  ):
    if int(num_samples) < 1:
      raise ValueError(f"num_samples={num_samples!r} must be >= 1")
    if int(sample_batch_size) < 1:
      raise ValueError(f"sample_batch_size={sample_batch_size!r} must be >= 1")
    if isinstance(captions, str):
      if captions not in ("shapes", "coco"):
        raise ValueError(
            f"captions={captions!r}: expected 'shapes', 'coco' or a list of caption strings"
        )
      # Only the captions are used: the shapes scenes are rendered small.
      self._source_kw = dict(
          dataset=captions,
          resolution=16,
          split=split,
          max_objects=max_objects,
          annotations=annotations,
          image_dir=image_dir,
          tfds_name=tfds_name,
          tfds_split=tfds_split,
          data_dir=data_dir,
      )
      self._captions = None
    else:
      listed = list(captions)
      if len(listed) < int(num_samples):
        raise ValueError(
            f"captions: {len(listed)} listed, fewer than num_samples={int(num_samples)}"
        )
      self._captions = clip_score_lib.caption_list(listed[: int(num_samples)])
    self.sample_fn = sample_fn
    self.num_samples, self.seed = int(num_samples), int(seed)
    self.sample_batch_size = int(sample_batch_size)
    self.scorer = clip_score_lib.ClipScorer.from_path(
        clip_path, batch_size=clip_batch_size, scale=scale
    )
    self.backbone = self.scorer.backbone
    self._checked = False
    if self._captions is not None:  # listed captions: checked now, not at the first eval
      self.captions()

  def captions(self) -> list[str]:
    if self._captions is None:
      self._captions = draw_captions(open_source(**self._source_kw), self.num_samples, self.seed)
    if not self._checked:
      self.scorer.check_captions(self._captions)
      self._checked = True
    return self._captions

  def run(self, params: Any) -> Iterator[tuple[str, float]]:
    captions, bs = self.captions(), self.sample_batch_size
    cos = []
    for k, lo in enumerate(range(0, len(captions), bs)):
      caps = captions[lo : lo + bs]
      images = np.asarray(self.sample_fn(params, caps, coco_fid.seed_for_shard(self.seed, k)))
      inception.check_images(images, "sample_fn output")
      cos.append(self.scorer.cosines(images, caps))
    result = self.scorer.result(np.concatenate(cos))
    logging.info(
        "clip_score %.4f with %s (%s)",
        result.mean,
        result.backbone,
        clip_score_lib.formula(result.scale),
    )
    yield "clip_score", result.mean
    yield "clip_score_scale", result.scale


EVALUATORS = {
    "alignment": AlignmentEvaluator,
    "fid": FidEvaluator,
    "clip_score": ClipScoreEvaluator,
}


def from_config(evals: Mapping[str, Any], sample_fn: SampleFn) -> list[tuple[str, Any, int]]:
  """[(name, evaluator, log_steps)] for each `config.evals.<name>` entry."""
  out = []
  for name, cfg in dict(evals).items():
    cfg = dict(cfg)
    kind = cfg.pop("type", name)
    log_steps = cfg.pop("log_steps", None)
    if kind not in EVALUATORS:
      raise ValueError(
          f"config.evals.{name}: unknown type {kind!r}; known: {', '.join(EVALUATORS)}"
      )
    if not log_steps or int(log_steps) < 1:
      raise ValueError(f"config.evals.{name}: log_steps must be a positive int, got {log_steps!r}")
    out.append((name, EVALUATORS[kind](sample_fn, **cfg), int(log_steps)))
  return out
