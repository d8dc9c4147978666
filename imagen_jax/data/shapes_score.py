"""Scores a (generated) image against a shapes-world scene.

The scorer segments the image by colour rather than comparing pixels, so it
works on imperfect samples:

1. every pixel takes the nearest named colour or the background (the palette
   is well separated, so mild noise and blur do not change the label);
2. the connected components (8-neighbourhood) of each colour larger than
   `MIN_AREA` of the image are the detected objects; each one's size comes from
   its bounding box's extent, its shape from the circle/square/triangle
   fitted to that box that best matches its soft coverage (the pixel's
   position between background and object colour), its position from the box
   centre;
3. the scene's objects are matched one-to-one to detections, maximising the
   number of agreeing attributes (colour counts most, as it identifies an
   object);
4. each stated fact is checked: per object its colour, shape, size and (when
   the caption states one) place; each relation between matched objects; and
   whether the number of detected objects equals the scene's.

`score` returns the fraction of correct checks per attribute (only the
attributes the scene has) and `accuracy`, the fraction over all checks, plus
`all_correct`. `mean_scores` averages a list of such dicts per key.
"""

import dataclasses
import functools
from typing import Iterable

import numpy as np

from imagen_jax.data import shapes_world

# A detection smaller than this fraction of the image is noise: the smallest
# object (a small triangle) covers 0.5 * 0.2^2 = 2% of the image.
MIN_AREA = 0.006
SIZE_THRESHOLD = (shapes_world.SIZES["small"] + shapes_world.SIZES["large"]) / 2
_NAMES = (None,) + tuple(shapes_world.COLOURS)
_PALETTE = np.array([shapes_world.BACKGROUND] + list(shapes_world.COLOURS.values()), np.float32)
_ATTRIBUTES = ("colour", "shape", "size", "place", "relation", "count")


@dataclasses.dataclass(frozen=True)
class Detection:
  colour: str
  shape: str
  size: str
  x: float  # box centre, normalised
  y: float
  extent: float  # max(box height, box width) / image side
  area: float  # pixels / image pixels
  shape_error: float  # mean squared coverage error of the fitted shape


def classify_pixels(image: np.ndarray) -> np.ndarray:
  """int [H, W]: 0 for background, i > 0 for the i-th colour of COLOURS."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an [H, W, 3] image, got {image.shape}")
  img = image.astype(np.float32)
  best = np.full(img.shape[:2], np.inf, np.float32)
  label = np.zeros(img.shape[:2], np.int32)
  for i, colour in enumerate(_PALETTE):
    d = np.square(img - colour).sum(-1)
    closer = d < best
    best = np.where(closer, d, best)
    label[closer] = i
  return label


def _soft_coverage(image: np.ndarray, colour: str) -> np.ndarray:
  """Per-pixel estimate of how much of `colour` covers it (~[0, 1]).

  The projection of the pixel onto the background->colour segment uses all
  three channels, so it averages out noise that flips hard labels.
  """
  bg = _PALETTE[0]
  axis = np.asarray(shapes_world.COLOURS[colour], np.float32) - bg
  t = (image.astype(np.float32) - bg) @ axis / float(axis @ axis)
  # Not clipped at 0: clipping would bias noisy background pixels upwards.
  return np.clip(t, -1.0, 1.5)


# Adjustments (grow the first side, grow the second) of a box side's ends
# tried when fitting small objects, whose hard-label box is +-1 pixel off
# under noise or blur.
_BOX_JITTER = ((0, 0), (-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1))
_JITTER_BELOW = 24  # pixels; larger boxes are fitted as detected
_BLUR = 0.7  # pixels; the blurred templates' Gaussian sigma


@functools.lru_cache(maxsize=4096)
def _template(shape: str, height: int, width: int) -> np.ndarray:
  return shapes_world.shape_coverage(shape, height, width)


def _classify_shape(coverage: np.ndarray, box: tuple[int, int, int, int]) -> tuple[str, float]:
  """Fits each shape to the detected box; returns the best and its error.

  `coverage` is the soft coverage of a region holding the box; `box` is
  (top, bottom, left, right) in that region's pixels, bottom/right exclusive.
  Each template spans the box exactly (or, for small boxes, the box moved by a
  pixel at either end, sharp or slightly blurred, keeping the best fit).
  """
  from scipy import ndimage

  top, bottom, left, right = box
  small = max(bottom - top, right - left) < _JITTER_BELOW
  jitter = _BOX_JITTER if small else _BOX_JITTER[:1]
  region_h, region_w = coverage.shape
  best, best_err = shapes_world.SHAPES[0], np.inf
  for dt, db in jitter:
    t, b = max(top - dt, 0), min(bottom - db, region_h)
    for dl, dr in jitter:
      l, r = max(left - dl, 0), min(right - dr, region_w)
      if b - t < 2 or r - l < 2:
        continue
      for shape in shapes_world.SHAPES:
        template = np.zeros_like(coverage)
        template[t:b, l:r] = _template(shape, b - t, r - l)
        candidates = [template]
        if small:  # small samples are often soft-edged: try a blurred fit too
          candidates.append(ndimage.gaussian_filter(template, _BLUR))
        for cand in candidates:
          err = float(np.square(coverage - cand).sum())
          if err < best_err:
            best, best_err = shape, err
  return best, best_err / coverage.size


def detect(image: np.ndarray, min_area: float = MIN_AREA) -> list[Detection]:
  """The objects in an image, largest first."""
  from scipy import ndimage

  image = np.asarray(image)
  labels = classify_pixels(image)
  height, width = labels.shape
  side = float(min(height, width))
  min_pixels = max(3.0, min_area * height * width)
  found = []
  for index in range(1, len(_NAMES)):
    components, n = ndimage.label(labels == index, structure=np.ones((3, 3)))
    if n == 0:
      continue
    areas = np.bincount(components.ravel(), minlength=n + 1)
    for k, box in enumerate(ndimage.find_objects(components), start=1):
      if box is None or areas[k] < min_pixels:
        continue
      (y0, y1), (x0, x1) = ((b.start, b.stop) for b in box)
      h, w = y1 - y0, x1 - x0
      gy0, gy1 = max(y0 - 2, 0), min(y1 + 2, height)
      gx0, gx1 = max(x0 - 2, 0), min(x1 + 2, width)
      own = np.isin(components[gy0:gy1, gx0:gx1], (0, k))
      coverage = _soft_coverage(image[gy0:gy1, gx0:gx1], _NAMES[index]) * own
      shape, err = _classify_shape(coverage, (y0 - gy0, y1 - gy0, x0 - gx0, x1 - gx0))
      extent = max(h, w) / side
      found.append(
          Detection(
              colour=_NAMES[index],
              shape=shape,
              size="large" if extent > SIZE_THRESHOLD else "small",
              x=(box[1].start + box[1].stop) / 2 / width,
              y=(box[0].start + box[0].stop) / 2 / height,
              extent=extent,
              area=areas[k] / (height * width),
              shape_error=err,
          )
      )
  found.sort(key=lambda d: -d.area)
  return found


def _object_checks(o: shapes_world.Object, d: Detection) -> dict:
  checks = {"colour": o.colour == d.colour, "shape": o.shape == d.shape, "size": o.size == d.size}
  if o.place is not None:
    checks["place"] = shapes_world.place_holds(o.place, d.x, d.y)
  return checks


def score(
    image: np.ndarray, scene: shapes_world.Scene, detections: list[Detection] | None = None
) -> dict:
  """Per-attribute correctness of `image` for `scene`, and overall accuracy.

  Returns a dict with, for the attributes the scene has, the fraction of
  correct checks: "colour", "shape", "size" (per object), "place" (objects
  with a stated place), "relation" (per relation), "count" (0 or 1); then
  "accuracy" (correct checks / all checks, in [0, 1]), "all_correct" (bool)
  and "num_detected".
  """
  from scipy import optimize

  if detections is None:
    detections = detect(image)
  detections = detections[:8]
  objs = scene.objects
  # Agreement of every (object, detection) pair; colour weighs most.
  agree = np.zeros((len(objs), max(len(detections), 1)))
  for i, o in enumerate(objs):
    for j, d in enumerate(detections):
      c = _object_checks(o, d)
      agree[i, j] = 3 * c["colour"] + sum(c.values()) - c["colour"]
  matched: dict[int, Detection] = {}
  if detections:
    rows, cols = optimize.linear_sum_assignment(-agree)
    matched = {int(i): detections[int(j)] for i, j in zip(rows, cols)}

  results = {k: [] for k in _ATTRIBUTES}
  for i, o in enumerate(objs):
    if i in matched:
      checks = _object_checks(o, matched[i])
    else:
      checks = {k: False for k in ("colour", "shape", "size")}
      if o.place is not None:
        checks["place"] = False
    for k, v in checks.items():
      results[k].append(bool(v))
  for rel in scene.relations:
    a, b = matched.get(rel.subject), matched.get(rel.reference)
    results["relation"].append(
        a is not None
        and b is not None
        and shapes_world.relation_holds(rel.relation, (a.x, a.y), (b.x, b.y))
    )
  results["count"].append(len(detections) == len(objs))

  out = {k: float(np.mean(v)) for k, v in results.items() if v}
  every = [c for v in results.values() for c in v]
  out["accuracy"] = float(np.mean(every))
  out["all_correct"] = bool(all(every))
  out["num_detected"] = len(detections)
  return out


def mean_scores(scores: Iterable[dict]) -> dict:
  """Averages score dicts per key, over the dicts that have the key."""
  sums, counts = {}, {}
  for s in scores:
    for k, v in s.items():
      sums[k] = sums.get(k, 0.0) + float(v)
      counts[k] = counts.get(k, 0) + 1
  return {k: sums[k] / counts[k] for k in sums}


def background_noise(image: np.ndarray, scene: shapes_world.Scene, margin: float = 0.06) -> float:
  """Speckle on the flat background: the mean absolute deviation (0-255 scale, over channels)
  from `BACKGROUND` of the pixels farther than `margin` (normalised) outside every object's
  bounding square. 0 for a render; what the demo reports as a sample's background noise."""
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an [H, W, 3] image, got {image.shape}")
  h, w = image.shape[:2]
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  outside = np.ones((h, w), bool)
  for o in scene.objects:
    half = shapes_world.SIZES[o.size] / 2 + margin
    near_x = np.abs(xs - o.x) < half
    near_y = np.abs(ys - o.y) < half
    outside &= ~(near_y[:, None] & near_x[None, :])
  if not outside.any():
    return 0.0
  background = np.asarray(shapes_world.BACKGROUND, np.float32)
  return float(np.abs(image[outside] - background).mean())
