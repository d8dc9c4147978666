"""The shapes world's vocabulary: its types, constants and geometry.

Shared by `shapes` (sampling, captions, rendering) and `shapes_score` (the
scorer), which both import this module and not each other's internals;
`shapes` re-exports every public name here, so `shapes.Scene`,
`shapes.COLOURS`, ... stay the names to use.

Geometry lives in normalised image coordinates ([0, 1]^2, x to the right, y
down). `signed_distance` and `shape_coverage` give the analytic anti-aliased
coverage the renderer draws with and the scorer fits.
"""

import dataclasses
import re

import numpy as np

# Colours sit near the corners of the RGB cube and the background at its
# centre, so every pair is >= ~150 apart (Euclidean, 0-255 scale).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 40, 210),
    "yellow": (235, 215, 30),
    "cyan": (30, 200, 220),
    "purple": (180, 30, 200),
}
BACKGROUND = (128, 128, 128)
SHAPES = ("circle", "square", "triangle")
# Object extent (side of its bounding square) as a fraction of the image side.
SIZES = {"small": 0.2, "large": 0.38}
PLACES = ("left", "right", "top", "bottom", "centre")
# How captions state each place (`shapes.caption`; `caption_labels` reads them back).
PLACE_WORDS = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "centre": ("in the centre", "in the middle", "in the center"),
}
RELATIONS = ("left of", "right of", "above", "below")
HELDOUT = (("purple", "triangle"), ("yellow", "circle"), ("cyan", "square"))
SPLITS = ("train", "heldout", "all")
# What a noise-aware classifier predicts of a scene (`scene_labels`): these attributes of its
# first object, each an index into its tuple of classes; UNSTATED (-1) where the scene does not
# state it (a place, for objects in relations or without one).
LABEL_GROUPS = (
    ("colour", tuple(COLOURS)),
    ("shape", SHAPES),
    ("size", tuple(SIZES)),
    ("place", PLACES),
)
UNSTATED = -1


@dataclasses.dataclass(frozen=True)
class Object:
  """One object; (x, y) is the centre of its bounding square, normalised."""

  shape: str
  colour: str
  size: str
  x: float
  y: float
  place: str | None = None  # the absolute place the caption states


@dataclasses.dataclass(frozen=True)
class Relation:
  """`objects[subject]` is `relation` `objects[reference]`."""

  subject: int
  relation: str
  reference: int


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Object, ...]
  relations: tuple[Relation, ...] = ()
  style: int = 0  # picks the caption's phrasing
  # Indices of objects described together ("two green triangles ...").
  groups: tuple[tuple[int, ...], ...] = ()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Scene":
    return cls(
        objects=tuple(Object(**o) for o in d["objects"]),
        relations=tuple(Relation(**r) for r in d.get("relations", ())),
        style=int(d.get("style", 0)),
        groups=tuple(tuple(g) for g in d.get("groups", ())),
    )


def _label(classes, value) -> int:
  return UNSTATED if value is None else classes.index(value)


def scene_labels(scene: Scene) -> np.ndarray:
  """int32 [len(LABEL_GROUPS)]: the class index of each label group of the scene's first
  object (`LABEL_GROUPS`; its place UNSTATED where the scene states none)."""
  first = scene.objects[0]
  return np.array(
      [_label(classes, getattr(first, name)) for name, classes in LABEL_GROUPS], np.int32
  )


_NOUN = re.compile(
    r"\b(" + "|".join(SIZES) + r") (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")s?\b"
)
# A place phrase, longest wording first ("on the left side" before "on the left").
_PLACE_PHRASE = "|".join(
    sorted((re.escape(w) for words in PLACE_WORDS.values() for w in words), key=len, reverse=True)
)
_PLACE_AFTER = re.compile(r"(?:, both)? (" + _PLACE_PHRASE + r")\b")
_PLACE_BEFORE = re.compile(r"^(" + _PLACE_PHRASE + r"), a $")
_PLACE_OF = {w: place for place, words in PLACE_WORDS.items() for w in words}


def caption_labels(caption: str) -> np.ndarray:
  """int32 [len(LABEL_GROUPS)]: the label of each group of the caption's first-named object
  (its first "<size> <colour> <shape>" phrase, as `shapes.caption` writes every object), its
  place read from the place phrase that follows that phrase, or that opens the caption
  ("on the left, a ..."); UNSTATED when there is none. For a one-object scene this is
  `scene_labels(scene)`; a guide reads it from a prompt. ValueError when the caption names
  no object in the shapes vocabulary."""
  text = str(caption).lower()
  m = _NOUN.search(text)
  if m is None:
    raise ValueError(
        f"caption {caption!r} names no shapes-world object (a '<size> <colour> <shape>' "
        f"phrase: sizes {', '.join(SIZES)}; colours {', '.join(COLOURS)}; shapes "
        f"{', '.join(SHAPES)}), so it has no labels to guide by"
    )
  found = dict(zip(("size", "colour", "shape"), m.groups()))
  after = _PLACE_AFTER.match(text, m.end())
  before = _PLACE_BEFORE.match(text[: m.start()])
  phrase = after or before
  found["place"] = _PLACE_OF[phrase.group(1)] if phrase else None
  return np.array([_label(classes, found[name]) for name, classes in LABEL_GROUPS], np.int32)


# ----------------------------------------------------------------------------
# Geometry predicates (what captions state and the scorer checks).


def place_holds(place: str, x: float, y: float) -> bool:
  """Whether an object centred at normalised (x, y) is at `place`."""
  if place == "left":
    return x < 0.4
  if place == "right":
    return x > 0.6
  if place == "top":
    return y < 0.4
  if place == "bottom":
    return y > 0.6
  if place == "centre":
    return abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15
  raise ValueError(f"unknown place {place!r}")


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
  """Whether centre `a` is `relation` centre `b` (dominant axis decides)."""
  dx, dy = a[0] - b[0], a[1] - b[1]
  if relation in ("left of", "right of"):
    return abs(dx) > abs(dy) and (dx < 0) == (relation == "left of")
  if relation in ("above", "below"):
    return abs(dy) > abs(dx) and (dy < 0) == (relation == "above")
  raise ValueError(f"unknown relation {relation!r}")


# ----------------------------------------------------------------------------
# Shape geometry (the renderer draws it, the scorer fits it).


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
  """Signed distance (normalised units, <0 inside) for a shape at the origin.

  Circles are exact; squares and triangles use the max over their edges'
  half-planes, exact inside and along edges, slightly short near corners.
  """
  if shape == "circle":
    return np.sqrt(dx * dx + dy * dy) - half
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) - half
  if shape == "triangle":  # apex up, base down; spans [-half, half]^2
    k = 1.0 / np.sqrt(5.0)
    side = (2.0 * np.abs(dx) - (dy + half)) * k
    return np.maximum(side, dy - half)
  raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(shape: str, height: int, width: int) -> np.ndarray:
  """Float coverage [height, width] of `shape` stretched over the whole box."""
  xs = (np.arange(width) + 0.5) / width - 0.5
  ys = (np.arange(height) + 0.5) / height - 0.5
  d = signed_distance(shape, xs[None, :], ys[:, None], 0.5)
  return np.clip(0.5 - d * min(height, width), 0.0, 1.0)
