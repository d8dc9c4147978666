"""A line plot as a PNG with PIL alone (no matplotlib in the requirements): the studies'
accuracy-vs-scale curves and loss curves.

  line_plot({"classifier": [(0, 0.5), (1, 0.6)], "cfg": [...]}, title="...",
            xlabel="scale", ylabel="accuracy") -> uint8 [H, W, 3]

Axes are linear, ticks at 5 even steps of each range, one colour per series, a legend at the
right. Horizontal reference lines (`hlines={"chance": 0.3}`) are dashed grey.
"""

from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

# Tableau-10, the matplotlib default cycle.
_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def _range(values: Sequence[float]) -> tuple[float, float]:
  lo, hi = float(min(values)), float(max(values))
  if hi - lo < 1e-12:
    lo, hi = lo - 0.5, hi + 0.5
  pad = 0.05 * (hi - lo)
  return lo - pad, hi + pad


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    hlines: Mapping[str, float] | None = None,
    size: tuple[int, int] = (640, 400),
    log_x: bool = False,
) -> np.ndarray:
  """uint8 [H, W, 3]: each series as a polyline with point markers (module docstring);
  `log_x`: a logarithmic x axis (every x must be > 0)."""
  hlines = dict(hlines or {})
  for name, pts in series.items():
    for x, y in pts:
      if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"line_plot: series {name!r} has a non-finite point ({x}, {y})")
      if log_x and x <= 0:
        raise ValueError(f"line_plot: series {name!r} has x={x} <= 0 on a log x axis")
  fx = np.log10 if log_x else float
  series = {n: [(float(fx(x)), float(y)) for x, y in pts] for n, pts in series.items()}
  points = [p for pts in series.values() for p in pts]
  if not points:
    raise ValueError("line_plot: no points to plot")
  w, h = size
  left, right, top, bottom = 56, 150, 28, 44
  x0, x1 = _range([p[0] for p in points])
  y0, y1 = _range([p[1] for p in points] + list(hlines.values()))
  canvas = Image.new("RGB", (w, h), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  pw, ph = w - left - right, h - top - bottom

  def px(x, y):
    return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

  draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
  for k in range(6):
    xv, yv = x0 + k * (x1 - x0) / 5, y0 + k * (y1 - y0) / 5
    gx, _ = px(xv, y0)
    _, gy = px(x0, yv)
    draw.line([gx, top + ph, gx, top + ph + 4], fill=(0, 0, 0))
    draw.text((gx - 12, top + ph + 6), f"{10**xv if log_x else xv:.3g}", fill=(0, 0, 0))
    draw.line([left - 4, gy, left, gy], fill=(0, 0, 0))
    draw.text((4, gy - 6), f"{yv:.3g}", fill=(0, 0, 0))
  for name, yv in hlines.items():
    _, gy = px(x0, yv)
    for sx in range(left, left + pw, 8):
      draw.line([sx, gy, min(sx + 4, left + pw), gy], fill=(150, 150, 150))
    draw.text((left + 4, gy - 12), name, fill=(110, 110, 110))
  for k, (name, pts) in enumerate(series.items()):
    colour = _COLOURS[k % len(_COLOURS)]
    xy = [px(float(x), float(y)) for x, y in sorted(pts)]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    for cx, cy in xy:
      draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    ly = top + 4 + 14 * k
    draw.line([left + pw + 10, ly + 6, left + pw + 28, ly + 6], fill=colour, width=2)
    draw.text((left + pw + 32, ly), str(name)[:18], fill=(0, 0, 0))
  draw.text((left, 8), title, fill=(0, 0, 0))
  draw.text((left + pw // 2 - 3 * len(xlabel), h - 16), xlabel, fill=(0, 0, 0))
  draw.text((4, 8), ylabel if not title else "", fill=(0, 0, 0))
  if title and ylabel:
    draw.text((left + pw - 6 * len(ylabel), 8), f"y: {ylabel}", fill=(0, 0, 0))
  return np.asarray(canvas)
