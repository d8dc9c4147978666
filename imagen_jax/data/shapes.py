"""The shapes world: the embedded default dataset, generated on the fly.

A scene is 1-3 flat objects on a plain grey background. Each object has a
shape (circle, square, triangle), one of six well separated colours, a size
(small/large) and, optionally, an absolute place (left, right, top, bottom,
centre); a scene may also hold relations between two of its objects ("left
of", "right of", "above", "below"). Everything a caption names is stored in
the `Scene`, and `shapes_score.score` checks exactly those facts, so the world
measures text-image alignment without any pretrained model. The types,
constants and shape geometry live in `shapes_world` (re-exported here).

API (pinned in DESIGN.md)::

  scene = sample_scene(rng, split="train")   # np.random.Generator or int seed
  text = caption(scene)                       # varied English, deterministic
  image = render(scene, 64)                   # uint8 [64, 64, 3]
  result = score(image, scene)                # {"colour": .., "accuracy": ..}

Geometry lives in normalised image coordinates ([0, 1]^2, x to the right, y
down), so a 32x32 and a 128x128 render of one scene agree. Rendering is a
vectorised numpy rasterisation with analytic anti-aliasing: per pixel, the
coverage is clip(0.5 - d, 0, 1) where d is the signed distance (in pixels) from
the pixel centre to the shape's boundary. This is the box-filtered coverage of
a straight edge (what supersampling converges to) at the cost of one distance
evaluation per pixel, so a 32x32 scene renders in tens of microseconds.

Held-out combinations: `HELDOUT` lists (colour, shape) pairs that
`split="train"` never produces and `split="heldout"` always includes (at least
one object), so the demo can measure accuracy on captions never seen in
training. Each held-out colour and shape still appears in training, in other
combinations. `split="all"` samples every combination.
"""

import random
from typing import Optional, Sequence, Union

import numpy as np

# The world's vocabulary, re-exported: `shapes.Scene`, `shapes.COLOURS`, ...
# are the names to use (it lives in shapes_world, shared with the scorer).
from imagen_jax.data.shapes_world import BACKGROUND
from imagen_jax.data.shapes_world import COLOURS
from imagen_jax.data.shapes_world import caption_labels
from imagen_jax.data.shapes_world import HELDOUT
from imagen_jax.data.shapes_world import LABEL_GROUPS
from imagen_jax.data.shapes_world import Object
from imagen_jax.data.shapes_world import PLACE_WORDS
from imagen_jax.data.shapes_world import PLACES
from imagen_jax.data.shapes_world import place_holds
from imagen_jax.data.shapes_world import RELATIONS
from imagen_jax.data.shapes_world import scene_labels
from imagen_jax.data.shapes_world import Relation
from imagen_jax.data.shapes_world import relation_holds
from imagen_jax.data.shapes_world import Scene
from imagen_jax.data.shapes_world import shape_coverage
from imagen_jax.data.shapes_world import SHAPES
from imagen_jax.data.shapes_world import signed_distance
from imagen_jax.data.shapes_world import SIZES
from imagen_jax.data.shapes_world import SPLITS
from imagen_jax.data.shapes_world import UNSTATED

# `score` is pinned here (DESIGN.md); the scorer imports shapes_world only.
from imagen_jax.data.shapes_score import score

_BORDER = 0.03  # min distance from an object's box to the image edge
_GAP = 0.07  # min gap between two objects' boxes
_PLACE_BAND = 0.32  # left/right/top/bottom centres lie within this of an edge
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_DIRECTION = {
    "left of": (-1.0, 0.0),
    "right of": (1.0, 0.0),
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
}


# ----------------------------------------------------------------------------
# Sampling.


def _as_rng(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  return np.random.default_rng(rng)


def _combos(split: str, used_colours: set[str]) -> list[tuple[str, str]]:
  out = []
  for colour in COLOURS:
    if colour in used_colours:
      continue
    for shape in SHAPES:
      heldout = (colour, shape) in HELDOUT
      if split == "train" and heldout:
        continue
      if split == "heldout_only" and not heldout:
        continue
      out.append((colour, shape))
  return out


def _pick_identities(rng, n: int, split: str) -> list[tuple[str, str, str]]:
  """n (colour, shape, size) triples with distinct colours."""
  forced = int(rng.integers(n)) if split == "heldout" else -1
  used, out = set(), []
  for i in range(n):
    sub = "heldout_only" if i == forced else ("all" if split == "all" else "train")
    combos = _combos(sub, used)
    colour, shape = combos[int(rng.integers(len(combos)))]
    used.add(colour)
    size = ("small", "large")[int(rng.integers(2))]
    out.append((colour, shape, size))
  return out


def _centre_range(size: str) -> tuple[float, float]:
  half = SIZES[size] / 2
  return _BORDER + half, 1.0 - _BORDER - half


def _sample_at_place(rng, place: str | None, size: str, loose: bool = False) -> tuple[float, float]:
  lo, hi = _centre_range(size)
  # Singles sit in the middle band of their side; `loose` (pairs) may use all
  # of it so that two objects fit.
  mlo, mhi = (lo, hi) if loose else (max(lo, 0.3), min(hi, 0.7))
  u = lambda a, b: float(rng.uniform(a, max(a, b)))
  if place is None:
    return u(lo, hi), u(lo, hi)
  if place == "left":
    return u(lo, _PLACE_BAND), u(mlo, mhi)
  if place == "right":
    return u(1 - _PLACE_BAND, hi), u(mlo, mhi)
  if place == "top":
    return u(mlo, mhi), u(lo, _PLACE_BAND)
  if place == "bottom":
    return u(mlo, mhi), u(1 - _PLACE_BAND, hi)
  if place == "centre":
    return u(0.44, 0.56), u(0.44, 0.56)
  raise ValueError(f"unknown place {place!r}")


def _fits(objs: Sequence[Object], gap: float = _GAP) -> bool:
  for o in objs:
    lo, hi = _centre_range(o.size)
    if not (lo - 1e-9 <= o.x <= hi + 1e-9 and lo - 1e-9 <= o.y <= hi + 1e-9):
      return False
  for i, a in enumerate(objs):
    for b in objs[i + 1 :]:
      need = (SIZES[a.size] + SIZES[b.size]) / 2 + gap
      if abs(a.x - b.x) < need and abs(a.y - b.y) < need:
        return False
  return True


def _sample_related(
    rng, relation: str, size_a: str, size_b: str, ref: tuple[float, float]
) -> tuple[float, float]:
  """A centre for an object that is `relation` the object centred at ref."""
  dx, dy = _DIRECTION[relation]
  base = (SIZES[size_a] + SIZES[size_b]) / 2 + _GAP
  dist = float(rng.uniform(base, base + 0.3))
  perp = float(rng.uniform(-0.35, 0.35)) * dist
  return ref[0] + dx * dist + dy * perp, ref[1] + dy * dist + dx * perp


def _layout_single(rng, ids):
  ((c, s, z),) = ids
  place = PLACES[int(rng.integers(len(PLACES)))]
  x, y = _sample_at_place(rng, place, z)
  return (Object(s, c, z, x, y, place),), (), ()


def _layout_relation(rng, ids):
  (ca, sa, za), (cb, sb, zb) = ids
  relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
  xb, yb = _sample_at_place(rng, None, zb)
  xa, ya = _sample_related(rng, relation, za, zb, (xb, yb))
  objs = (Object(sa, ca, za, xa, ya), Object(sb, cb, zb, xb, yb))
  return objs, (Relation(0, relation, 1),), ()


def _layout_absolute(rng, ids):
  places = rng.permutation(len(PLACES))[: len(ids)]
  objs = []
  for (c, s, z), p in zip(ids, places):
    x, y = _sample_at_place(rng, PLACES[int(p)], z)
    objs.append(Object(s, c, z, x, y, PLACES[int(p)]))
  return tuple(objs), (), ()


def _layout_pair(rng, ids):
  ((c, s, z),) = ids
  place = PLACES[int(rng.integers(4))]  # not "centre": no room for two
  objs = tuple(
      Object(s, c, z, *_sample_at_place(rng, place, z, loose=True), place) for _ in range(2)
  )
  return objs, (), ((0, 1),)


def _layout_relation_plus(rng, ids):
  objs, rels, _ = _layout_relation(rng, ids[:2])
  ((c, s, z),) = ids[2:]
  place = PLACES[int(rng.integers(len(PLACES)))]
  x, y = _sample_at_place(rng, place, z)
  return objs + (Object(s, c, z, x, y, place),), rels, ()


# (layout, number of distinct identities, number of objects, weight)
_LAYOUTS = (
    (_layout_single, 1, 1, 0.3),
    (_layout_relation, 2, 2, 0.25),
    (_layout_absolute, 2, 2, 0.15),
    (_layout_pair, 1, 2, 0.1),
    (_layout_absolute, 3, 3, 0.1),
    (_layout_relation_plus, 3, 3, 0.1),
)


def sample_scene(
    rng: np.random.Generator | int | Sequence[int], split: str = "train", *, max_objects: int = 3
) -> Scene:
  """Samples a random scene; deterministic given the generator / seed.

  Args:
    rng: a `np.random.Generator` (advanced in place) or a seed for one.
    split: "train" never uses a `HELDOUT` (colour, shape) combination,
      "heldout" always has at least one object with one, "all" is unrestricted.
    max_objects: 1, 2 or 3; limits the scene layouts used.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 1 <= max_objects <= 3:
    raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")
  rng = _as_rng(rng)
  layouts = [l for l in _LAYOUTS if l[2] <= max_objects]
  cumulative = np.cumsum([l[3] for l in layouts])
  pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
  layout, n_ids, _, _ = layouts[min(pick, len(layouts) - 1)]
  while True:
    ids = _pick_identities(rng, n_ids, split)
    for _ in range(20):  # retry the geometry, then the identities (sizes)
      objs, rels, groups = layout(rng, ids)
      if _fits(objs, gap=_GAP if not groups else 2 * _GAP):
        style = int(rng.integers(2**31))
        return Scene(objs, rels, style, groups)


# ----------------------------------------------------------------------------
# Captions.

_RELATION_WORDS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}


def _noun(o: Object, plural: bool = False) -> str:
  return f"{o.size} {o.colour} {o.shape}{'s' if plural else ''}"


def _phrase(r: random.Random, o: Object) -> str:
  """'a large red circle on the left' (place only when the scene states it)."""
  text = f"a {_noun(o)}"
  if o.place is not None:
    text += " " + r.choice(PLACE_WORDS[o.place])
  return text


def _relation_phrase(r: random.Random, scene: Scene, rel: Relation, clause: bool) -> str:
  a, b = scene.objects[rel.subject], scene.objects[rel.reference]
  relation = rel.relation
  if r.random() < 0.5:  # say it the other way round
    a, b, relation = b, a, _INVERSE[relation]
  words = r.choice(_RELATION_WORDS[relation])
  verb = " is" if clause and r.random() < 0.5 else ""
  return f"a {_noun(a)}{verb} {words} a {_noun(b)}"


def _join(parts: list[str]) -> str:
  if len(parts) == 1:
    return parts[0]
  return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
  """Describes everything `score` checks, in one of several phrasings."""
  r = random.Random(scene.style)
  in_relation = {i for rel in scene.relations for i in (rel.subject, rel.reference)}
  grouped = {i for g in scene.groups for i in g}
  there_is = len(scene.objects) > 1 and not scene.groups and r.random() < 0.25
  parts = [_relation_phrase(r, scene, rel, clause=not there_is) for rel in scene.relations]
  for group in scene.groups:
    o = scene.objects[group[0]]
    text = f"two {_noun(o, plural=True)}"
    if o.place is not None:
      text += r.choice(("", ", both")) + " " + r.choice(PLACE_WORDS[o.place])
    parts.append(text)
  singles = [i for i in range(len(scene.objects)) if i not in in_relation and i not in grouped]
  for i in singles:
    parts.append(_phrase(r, scene.objects[i]))
  text = _join(parts)
  if len(scene.objects) == 1 and r.random() < 0.5:
    o = scene.objects[0]
    text = r.choice(
        (
            f"there is {text}",
            f"a picture of {text}",
            f"{text} on a grey background",
            f"{r.choice(PLACE_WORDS[o.place])}, a {_noun(o)}",
        )
    )
  elif there_is:
    text = "there is " + text
  return text


# ----------------------------------------------------------------------------
# Rendering.


def render(scene: Scene, size: int) -> np.ndarray:
  """Draws `scene` anti-aliased as a uint8 [size, size, 3] image."""
  size = int(size)
  if size < 1:
    raise ValueError(f"size must be positive, got {size}")
  img = np.empty((size, size, 3), np.float32)
  img[...] = BACKGROUND
  for o in scene.objects:
    half = SIZES[o.size] / 2
    x0 = max(int(np.floor((o.x - half) * size)) - 1, 0)
    x1 = min(int(np.ceil((o.x + half) * size)) + 1, size)
    y0 = max(int(np.floor((o.y - half) * size)) - 1, 0)
    y1 = min(int(np.ceil((o.y + half) * size)) + 1, size)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size - o.x
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size - o.y
    d = signed_distance(o.shape, dx[None, :], dy[:, None], half)
    cov = np.clip(0.5 - d * size, 0.0, 1.0)[..., None]
    window = img[y0:y1, x0:x1]
    window += cov * (np.asarray(COLOURS[o.colour], np.float32) - window)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)
