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

  evaluators = evaluators_lib.from_config(config.evals, sample_fn)
  for name, evaluator, log_steps in evaluators:
    if config_lib.itstime(step, log_steps, total_steps):
      for key, value in evaluator.run(state.ema_params):
        writer.write_scalars(step, {f"{name}/{key}": value})
"""

from typing import Any, Callable, Iterator, Mapping

import numpy as np

from imagen_jax.evaluation import alignment
from imagen_jax.evaluation import coco_fid
from imagen_jax.evaluation import fid
from imagen_jax.evaluation import inception

SampleFn = Callable[[Any, list, int], np.ndarray]


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
    dataset, split, max_objects, annotations, image_dir, tfds_name, tfds_split, data_dir = (
        self._source_args
    )
    if dataset == "shapes":
      from imagen_jax.data import sources  # pylint: disable=import-outside-toplevel

      return sources.ShapesSource(self.resolution, split, max_objects)
    return coco_fid.open_source(annotations, image_dir, tfds_name, tfds_split, data_dir)

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


EVALUATORS = {"alignment": AlignmentEvaluator, "fid": FidEvaluator}


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
