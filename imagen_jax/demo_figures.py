"""The embedded default's figures beside `demo_results.json`.

* `demo_plot.png` (`plot`): left, held-out accuracy per attribute against the guidance
  weight w (the dynamic-thresholding settings, w = 1 being no guidance), with the scorer's
  chance level; right, each stage's training loss against its step, read back from the
  stage's TensorBoard events.
* `demo_grid.png` (`grid`): one row per setting, one column per held-out caption, each
  caption in full in a numbered legend below.
"""

import pathlib
import re
from typing import Mapping, Sequence

import numpy as np

from imagen_jax import sampling
from imagen_jax.sampling import line_plot
from imagen_jax.train import metrics as metrics_lib

ATTRIBUTES = ("colour", "shape", "size", "place", "count", "all_correct")
_W = re.compile(r"w=([0-9.]+)")


def guidance_weight(label: str) -> float | None:
  """The w of a setting label ("w=3, dynamic thr." -> 3.0); None without one."""
  m = _W.search(label)
  return float(m.group(1)) if m else None


def accuracy_curves(per_attribute: Mapping[str, Mapping[str, float]], threshold: str = "dynamic"):
  """attribute -> [(w, accuracy)] over the settings thresholded by `threshold` and w = 1."""
  curves: dict[str, list[tuple[float, float]]] = {}
  for label, scores in per_attribute.items():
    w = guidance_weight(label)
    if w is None or (w != 1.0 and threshold not in label):
      continue
    for a in ATTRIBUTES:
      if a in scores:
        curves.setdefault(a, []).append((w, float(scores[a])))
  return {a: sorted(pts) for a, pts in curves.items()}


def loss_curves(stage_dirs: Mapping[str, pathlib.Path]) -> dict[str, list[tuple[float, float]]]:
  """stage name -> [(step, loss)] from its events (stages without any are left out)."""
  out = {}
  for name, d in stage_dirs.items():
    points = metrics_lib.read_events(d).get("loss", [])
    if points:
      last = {int(s): float(v) for s, v in points}  # a resumed run logs a step again
      out[name] = sorted(last.items())
  return out


def plot(record: Mapping, stage_dirs: Mapping[str, pathlib.Path]) -> np.ndarray:
  """uint8 [H, W, 3]: the accuracy-vs-w panel beside the loss panel (module docstring)."""
  curves = accuracy_curves(record["per_attribute"])
  left = line_plot.line_plot(
      curves,
      title=f"held-out accuracy per attribute ({record['num_eval_captions']} captions)",
      xlabel="guidance weight w (dynamic thresholding)",
      ylabel="accuracy",
      hlines={"chance": float(record["chance"])},
  )
  losses = loss_curves(stage_dirs)
  if not losses:
    return left
  right = line_plot.line_plot(losses, title="training loss per stage", xlabel="step", ylabel="loss")
  return np.concatenate([left, right], axis=1)


def grid(
    finals: Mapping[str, Sequence[np.ndarray]], captions: Sequence[str], columns: int = 8
) -> np.ndarray:
  """uint8: each setting's first `columns` final images in a row, captions in a legend."""
  labels = list(finals)
  cols = min(columns, len(captions))
  return sampling.legend_grid(
      [list(finals[k][:cols]) for k in labels], labels, list(captions[:cols]), cell=96
  )
