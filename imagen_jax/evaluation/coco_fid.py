"""The COCO FID-30K harness (Imagen's protocol), resumable and sharded over hosts.

Protocol (Imagen §4.1, following GLIDE / DALL-E / Make-A-Scene):
  1. Draw `num_samples` (30,000) records from COCO 2014 val *without replacement* with
     `np.random.default_rng(seed)`; record i's caption is one of its (~5) captions, chosen
     with `np.random.default_rng([seed, i])`. Asking for more samples than the source has
     records is an error: drawing with replacement would repeat reference images and
     captions and bias FID low, so it is not done.
  2. Reference: the drawn records' images, centre-cropped to a square and resized to
     `resolution` (256) with PIL bicubic (antialiased), as uint8. Their Inception
     statistics are cached in `cache_dir` under a key made of the sha256 of those uint8
     pixels, the resolution and the Inception weights/input size, so they are computed once.
  3. Samples: `sample_fn(captions, rng_seed) -> uint8 [n, H, W, 3]` for each shard of
     `shard_size` captions, downsampled (PIL bicubic) to `resolution`. Shard k runs on
     process k % process_count with `rng_seed = seed_for_shard(seed, k)`; each finished
     shard's features are written atomically to `<run_dir>/shards/`, so a restart skips
     them and continues.
  4. Both sides go through the same clean-fid resize to 299 and the FID Inception;
     FID = Fréchet distance of the float64 statistics. Process 0 writes `result.json`.

Directory layout: `out_dir/captions.json` (the draw: seed, indices, captions, hashes),
`out_dir/<name>/shards/shard-XXXXX.npz`, `out_dir/<name>/result.json`; several settings
(e.g. a guidance sweep) share one draw and one reference. `out_dir` and `cache_dir` may be
remote (`gs://...`, through `imagen_jax.storage.paths`): every file is written whole (a
local one to a temporary name, then renamed; a remote one in one upload).

Zero-shot: Imagen's COCO FID is of a model that never saw COCO. `coco_training(config)` says
whether a stage's saved config trained on COCO, so a caller can warn.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from imagen_jax.data import preprocess
from imagen_jax.evaluation import fid
from imagen_jax.evaluation import inception
from imagen_jax.parallel import multihost
from imagen_jax.storage import paths

SampleFn = Callable[[list, int], np.ndarray]
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
COCO_IMAGES_URL = "http://images.cocodataset.org/zips/val2014.zip"
# TFDS coco_captions uses the Karpathy splits; val2014 = val + restval + test.
TFDS_VAL2014_SPLIT = "val+restval+test"


@dataclasses.dataclass(frozen=True)
class Protocol:
  num_samples: int = 30_000
  seed: int = 0
  resolution: int = 256
  shard_size: int = 250
  read_threads: int = 8


def open_source(
    annotations: str | None = None,
    image_dir: str | None = None,
    tfds_name: str | None = None,
    tfds_split: str = TFDS_VAL2014_SPLIT,
    data_dir: str | None = None,
):
  """The caption/image source: a COCO json + image folder (local or gs://), or TFDS."""
  from imagen_jax.data import folder_source  # pylint: disable=import-outside-toplevel
  from imagen_jax.data import sources  # pylint: disable=import-outside-toplevel

  if tfds_name:
    return sources.TfdsSource(tfds_name, split=tfds_split, data_dir=data_dir)
  if not annotations or not paths.path(annotations).is_file():
    raise FileNotFoundError(
        f"COCO captions file {annotations!r} not found: give --coco_annotations="
        f".../annotations/captions_val2014.json (from {COCO_ANNOTATIONS_URL}) or "
        "--tfds_name=coco_captions"
    )
  if not image_dir or not paths.path(image_dir).is_dir():
    raise FileNotFoundError(
        f"COCO reference image directory {image_dir!r} not found: give --coco_images=.../"
        f"val2014 (the folder of COCO_val2014_*.jpg from {COCO_IMAGES_URL})"
    )
  return folder_source.CocoJsonSource(annotations, image_dir)


def seed_for_shard(seed: int, shard: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(1)[0] >> 1)


def to_resolution(images: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [N, H, W, 3] -> centre-cropped square, PIL bicubic to `resolution`."""
  out = []
  for img in images:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    box = None if h == w else (left, top, left + s, top + s)
    out.append(preprocess.resize(img, resolution, resolution, "bicubic", box=box))
  return np.stack(out) if out else np.zeros((0, resolution, resolution, 3), np.uint8)


def draw_indices(source, num_samples: int, seed: int) -> np.ndarray:
  """The protocol's draw: `num_samples` record indices without replacement (sorted)."""
  n = source.num_records
  if n is None:  # an infinite procedural source: record i is drawn from [seed, i]
    return np.arange(num_samples)
  if num_samples > n:
    raise ValueError(
        f"num_samples={num_samples} is larger than the {n} records of {source.name}. "
        "The protocol draws records without replacement (one caption per drawn image); "
        "sampling with replacement would duplicate reference images and captions and bias "
        f"FID low, so it is not allowed: use --num_samples <= {n}."
    )
  return np.sort(np.random.default_rng(seed).choice(n, num_samples, replace=False))


def read_record(source, index: int, seed: int, resolution: int) -> tuple[np.ndarray, str]:
  """(uint8 image at `resolution`, caption) of record `index`; the caption choice uses
  `np.random.default_rng([seed, index])`. An unreadable image is an error, not a skip."""
  rng = np.random.default_rng([int(seed), int(index)])
  try:
    image, caption = source.read(int(index), rng)
  except preprocess.BadExampleError as e:
    raise ValueError(
        f"reference record {index} of {source.name} is unreadable ({e}); "
        "the FID reference must be exactly the drawn images"
    ) from e
  return to_resolution(image[None], resolution)[0], caption


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _captions_hash(captions: Sequence[str]) -> str:
  return _sha(json.dumps(list(captions)).encode())


def join(base: str, *parts: str) -> str:
  """`base/part/...` for a local or remote (`gs://`) base, as a string."""
  return os.fspath(paths.path(base).joinpath(*parts))


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON to a local or remote path, whole (`paths.write_atomic`)."""
  paths.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str) -> Any:
  return json.loads(paths.path(path).read_text())


_COCO_DATASETS = ("coco_json",)


def coco_training(config) -> str | None:
  """Why a stage's saved config (its `input` group) trained on COCO, or None.

  COCO when `input.dataset` is `tfds:coco*` or `coco_json`, or when its `annotations` or
  `path` mention "coco". Zero-shot COCO FID (Imagen's protocol) assumes the model never saw
  COCO, so such a result is not comparable to the paper's.
  """
  inp = config.get("input") or {}  # a ConfigDict or the saved JSON's dict
  dataset = str(inp.get("dataset") or "")
  if dataset.lower().startswith("tfds:coco") or dataset in _COCO_DATASETS:
    return f"input.dataset={dataset!r}"
  for key in ("annotations", "path"):
    value = inp.get(key)
    if isinstance(value, str) and "coco" in value.lower():
      return f"input.{key}={value!r}"
  return None


class CocoFid:
  """FID of a `sample_fn` against a fixed draw from an image-caption source.

  `extractor` is an `inception.FeatureExtractor` (uint8 images -> [N, 2048]).
  """

  def __init__(
      self,
      source,
      extractor,
      out_dir: str,
      protocol: Protocol = Protocol(),
      cache_dir: str | None = None,
      process_index: int = 0,
      process_count: int = 1,
      barrier: Callable[[str], None] = multihost.sync,
  ):
    if protocol.num_samples < 2:
      raise ValueError(f"num_samples={protocol.num_samples}: FID needs at least 2 samples")
    if protocol.shard_size < 1:
      raise ValueError(f"shard_size={protocol.shard_size} must be >= 1")
    self.source = source
    self.extractor = extractor
    self.out_dir = out_dir
    self.protocol = protocol
    self.cache_dir = cache_dir or join(out_dir, "reference_cache")
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.barrier = barrier
    self._draw = None
    self._ref = None

  # --- the draw and the reference -------------------------------------------------------

  def _indices(self) -> np.ndarray:
    return draw_indices(self.source, self.protocol.num_samples, self.protocol.seed)

  def _read(self, index: int):
    return read_record(self.source, index, self.protocol.seed, self.protocol.resolution)

  def _read_all(self, indices, on_chunk):
    """Reads the records in order, in chunks, calling on_chunk(images, captions)."""
    chunk = max(self.extractor.batch_size, 64)
    with concurrent.futures.ThreadPoolExecutor(self.protocol.read_threads) as pool:
      for lo in range(0, len(indices), chunk):
        pairs = list(pool.map(self._read, indices[lo : lo + chunk]))
        on_chunk(np.stack([p[0] for p in pairs]), [p[1] for p in pairs])

  def draw(self) -> dict:
    """The drawn records and captions (`out_dir/captions.json`), made once by process 0."""
    if self._draw is not None:
      return self._draw
    path = join(self.out_dir, "captions.json")
    p = self.protocol
    expect = {
        "seed": p.seed,
        "num_samples": p.num_samples,
        "resolution": p.resolution,
        "source": self.source.name,
    }
    if self.process_index == 0 and not paths.path(path).exists():
      indices = self._indices()
      start = time.perf_counter()
      pixels, captions = hashlib.sha256(), []

      def collect(images, caps):
        pixels.update(np.ascontiguousarray(images).tobytes())
        captions.extend(caps)

      self._read_all(indices, collect)
      write_json(
          path,
          {
              **expect,
              "indices": [int(i) for i in indices],
              "captions": captions,
              "captions_sha256": _captions_hash(captions),
              "reference_pixels_sha256": pixels.hexdigest(),
              "sampling": "without replacement",
          },
      )
      logging.info(
          "drew %d captions from %s in %.1fs",
          len(captions),
          self.source.name,
          time.perf_counter() - start,
      )
    self.barrier("coco_fid_draw")
    draw = read_json(path)
    mismatch = {k: (draw.get(k), v) for k, v in expect.items() if draw.get(k) != v}
    if mismatch:
      raise ValueError(
          f"{path} was made with different settings (found, wanted): {mismatch}; "
          "use a new output directory"
      )
    self._draw = draw
    return draw

  def reference_key(self) -> str:
    d = self.draw()
    ident = f"{d['reference_pixels_sha256']}|{self.protocol.resolution}|{self.extractor.identity}"
    return _sha(ident.encode())[:24]

  def reference(self) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(mu, sigma, stats path) of the drawn images, from the cache or computed, on process
    0; other processes only join the barrier and get None."""
    if self._ref is not None:
      return self._ref
    d = self.draw()
    path = join(self.cache_dir, f"coco_ref_{self.reference_key()}.npz")
    if self.process_index == 0 and not paths.path(path).exists():
      start = time.perf_counter()
      feats, pixels = [], hashlib.sha256()

      def featurize(images, caps):
        del caps
        pixels.update(np.ascontiguousarray(images).tobytes())
        feats.append(self.extractor(images))

      self._read_all(np.asarray(d["indices"]), featurize)
      if pixels.hexdigest() != d["reference_pixels_sha256"]:
        raise ValueError(
            f"the reference images of {self.source.name} changed since "
            f"{self.out_dir}/captions.json was written; use a new output directory"
        )
      feats = np.concatenate(feats)
      if len(feats) <= inception.FEATURE_DIM:  # small runs: exact, cheap feature-form FID
        fid.save_npy(path[:-4] + "_features.npy", feats)
      mu, sigma = fid.statistics(feats)
      fid.save_statistics(
          path,
          mu,
          sigma,
          len(d["indices"]),
          {
              "source": self.source.name,
              "pixels_sha256": d["reference_pixels_sha256"],
              "inception": self.extractor.identity,
              "resolution": str(self.protocol.resolution),
          },
      )
      logging.info(
          "reference statistics of %d images in %.1fs -> %s",
          len(d["indices"]),
          time.perf_counter() - start,
          path,
      )
    self.barrier("coco_fid_reference")
    if self.process_index != 0:
      return None
    mu, sigma, _, _ = fid.load_statistics(path)
    self._ref = (mu, sigma, path)
    return self._ref

  # --- samples --------------------------------------------------------------------------

  def _shards(self) -> list[tuple[int, list[str]]]:
    caps, size = self.draw()["captions"], self.protocol.shard_size
    return [(k, caps[lo : lo + size]) for k, lo in enumerate(range(0, len(caps), size))]

  def _shard_path(self, run_dir: str, k: int) -> str:
    return join(run_dir, "shards", f"shard-{k:05d}.npz")

  def _load_shard(self, path: str, captions: Sequence[str]) -> np.ndarray | None:
    try:
      z = fid.load_npz(path)
      ok = str(z["captions_sha256"]) == _captions_hash(captions)
      feats = z["features"]
    except FileNotFoundError:
      return None
    except (OSError, ValueError, KeyError) as e:
      logging.warning("ignoring unreadable shard %s (%s)", path, e)
      return None
    if not ok or feats.shape != (len(captions), inception.FEATURE_DIM):
      raise ValueError(f"{path} belongs to a different draw or settings; use a new directory")
    return feats

  def generate(self, sample_fn: SampleFn, run_dir: str, save_images: bool = False) -> dict:
    """Generates this process's missing shards; returns counts and timings."""
    if not paths.is_remote(run_dir):
      os.makedirs(os.path.join(run_dir, "shards"), exist_ok=True)
    p = self.protocol
    reused = generated = 0
    seconds = 0.0
    sample_res = None
    for k, captions in self._shards():
      if k % self.process_count != self.process_index:
        continue
      path = self._shard_path(run_dir, k)
      if self._load_shard(path, captions) is not None:
        reused += 1
        continue
      start = time.perf_counter()
      images = np.asarray(sample_fn(list(captions), seed_for_shard(p.seed, k)))
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise TypeError(
            f"sample_fn must return uint8 [n, H, W, 3], got {images.dtype} {images.shape}"
        )
      if images.shape[0] != len(captions):
        raise ValueError(
            f"sample_fn returned {images.shape[0]} images for {len(captions)} captions"
        )
      if sample_res is None and min(images.shape[1:3]) < p.resolution:
        logging.warning(
            "samples are %dx%d, upsampled to %d: not the paper protocol",
            images.shape[1],
            images.shape[2],
            p.resolution,
        )
      sample_res = images.shape[1]
      images = to_resolution(images, p.resolution)
      feats = self.extractor(images)
      extra = {"images": images} if save_images else {}
      fid.save_npz(
          path,
          features=feats,
          captions_sha256=_captions_hash(captions),
          rng_seed=seed_for_shard(p.seed, k),
          **extra,
      )
      generated += 1
      seconds += time.perf_counter() - start
      logging.info("shard %d: %d samples in %.1fs", k, len(captions), time.perf_counter() - start)
    return {
        "reused": reused,
        "generated": generated,
        "seconds": seconds,
        "sample_resolution": sample_res,
    }

  def evaluate(
      self,
      sample_fn: SampleFn,
      name: str = "default",
      settings: Mapping[str, Any] | None = None,
      save_images: bool = False,
  ) -> dict | None:
    """Draw + reference + shards + FID; process 0 returns and writes the result dict."""
    start = time.perf_counter()
    d = self.draw()
    ref = self.reference()
    run_dir = join(self.out_dir, name)
    stats = self.generate(sample_fn, run_dir, save_images)
    self.barrier(f"coco_fid_generate_{name}")
    if self.process_index != 0:
      return None
    mu_ref, sigma_ref, ref_path = ref
    feats = []
    for k, captions in self._shards():
      f = self._load_shard(self._shard_path(run_dir, k), captions)
      if f is None:
        raise RuntimeError(
            f"shard {k} of {run_dir} is missing (process "
            f"{k % self.process_count} did not finish it); rerun to resume"
        )
      feats.append(f)
    feats = np.concatenate(feats)
    ref_feats = ref_path[:-4] + "_features.npy"
    if len(feats) <= inception.FEATURE_DIM and paths.path(ref_feats).exists():
      value = fid.frechet_distance_from_features(feats, fid.load_npy(ref_feats))
    else:
      mu, sigma = fid.statistics(feats)
      value = fid.frechet_distance(mu, sigma, mu_ref, sigma_ref)
    p = self.protocol
    result = {
        "fid": value,
        "name": name,
        "settings": dict(settings or {}),
        "protocol": {
            **dataclasses.asdict(p),
            "sampling": "captions drawn without replacement",
            "reference": "drawn images, centre crop, PIL bicubic to resolution",
            "resize_to_inception": "clean-fid (PIL bicubic on float channels)",
        },
        "seed": p.seed,
        "counts": {
            "samples": int(feats.shape[0]),
            "reference": len(d["indices"]),
            "shards": len(self._shards()),
            "shards_generated_now": stats["generated"],
            "shards_reused": stats["reused"],
            "processes": self.process_count,
        },
        "hashes": {
            "captions_sha256": d["captions_sha256"],
            "reference_pixels_sha256": d["reference_pixels_sha256"],
            "reference_stats": ref_path,
            "inception": self.extractor.identity,
        },
        "source": self.source.name,
        "sample_resolution": stats["sample_resolution"],
        "inception_image_size": self.extractor.image_size,
        "comparable_to_published_fid": bool(
            self.extractor.image_size == 299 and not self.extractor.weights_id.startswith("random")
        ),
        "seconds": {
            "generation_this_process": stats["seconds"],
            "total": time.perf_counter() - start,
        },
    }
    write_json(join(run_dir, "result.json"), result)
    return result
