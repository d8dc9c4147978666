"""Writing samples: one PNG per image, a labelled grid, a settings JSON, to a local or
remote (`gs://...`) folder."""

import dataclasses
import io
import json
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from imagen_jax.storage import paths


def labelled_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    columns: int | None = None,
    cell: int = 128,
    label_lines: int = 3,
) -> np.ndarray:
  """A grid of uint8 images, each upscaled to `cell` px with its label below."""
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  n = len(images)
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = -(-n // columns)
  line_h, chars = 11, max(8, cell // 6)
  label_h = label_lines * line_h + 4
  canvas = Image.new("RGB", (columns * cell, rows * (cell + label_h)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for k, (img, label) in enumerate(zip(images, labels)):
    r, c = divmod(k, columns)
    x, y = c * cell, r * (cell + label_h)
    tile = Image.fromarray(np.asarray(img, np.uint8)).resize((cell, cell), Image.NEAREST)
    canvas.paste(tile, (x, y))
    lines = textwrap.wrap(str(label), chars)[:label_lines]
    for j, line in enumerate(lines):
      draw.text((x + 2, y + cell + 2 + j * line_h), line, fill=(0, 0, 0))
  return np.asarray(canvas)


def legend_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    captions: Sequence[str],
    *,
    cell: int = 96,
    label_width: int = 150,
) -> np.ndarray:
  """Rows of uint8 images (a row per setting, a column per caption), each upscaled to `cell`
  px: the row's label at its left, the column's number above it and, below the grid, a
  legend with every caption in full ("3: a large cyan square at the top"), wrapped to the
  grid's width, so no caption is cut."""
  if len(rows) != len(row_labels):
    raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
  columns = len(captions)
  for i, row in enumerate(rows):
    if len(row) != columns:
      raise ValueError(f"row {i} ({row_labels[i]!r}) has {len(row)} images for {columns} captions")
  line_h, char_w, head = 11, 6, 14
  width = label_width + columns * cell
  legend = [
      line
      for k, c in enumerate(captions)
      for line in textwrap.wrap(f"{k + 1}: {c}", max(20, (width - 8) // char_w))
  ]
  height = head + len(rows) * cell + 6 + len(legend) * line_h + 4
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for c in range(columns):
    draw.text((label_width + c * cell + cell // 2 - 3, 1), str(c + 1), fill=(0, 0, 0))
  for r, (row, label) in enumerate(zip(rows, row_labels)):
    y = head + r * cell
    for j, line in enumerate(textwrap.wrap(str(label), max(8, (label_width - 6) // char_w))[:6]):
      draw.text((3, y + 3 + j * line_h), line, fill=(0, 0, 0))
    for c, img in enumerate(row):
      tile = Image.fromarray(np.asarray(img, np.uint8)).resize((cell, cell), Image.NEAREST)
      canvas.paste(tile, (label_width + c * cell, y))
  y0 = head + len(rows) * cell + 6
  for j, line in enumerate(legend):
    draw.text((4, y0 + j * line_h), line, fill=(0, 0, 0))
  return np.asarray(canvas)


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def write_samples(
    outdir, prompts: Sequence[str], images: np.ndarray, num_samples: int, settings: dict
) -> dict:
  """Writes `outdir/{prompt:03d}_{sample:02d}.png`, `grid.png`, `samples.json`.

  `images` is [len(prompts) * num_samples, H, W, 3] uint8 ordered prompt-major.
  `outdir` may be local or remote (`gs://...`); each file is written whole.
  Returns the JSON record (settings plus the file list).
  """
  outdir = paths.path(outdir)
  files, labels = [], []
  for k, img in enumerate(images):
    p, s = divmod(k, num_samples)
    name = f"{p:03d}_{s:02d}.png"
    paths.write_atomic(outdir / name, _png(img))
    files.append({"file": name, "prompt": prompts[p], "sample": s})
    labels.append(prompts[p])
  grid = labelled_grid(
      images, labels, columns=max(num_samples, min(len(images), 8)) if num_samples > 1 else None
  )
  paths.write_atomic(outdir / "grid.png", _png(grid))
  record = {**_jsonable(settings), "files": files, "grid": "grid.png"}
  paths.write_atomic(outdir / "samples.json", json.dumps(record, indent=2))
  return record


def _jsonable(x):
  if dataclasses.is_dataclass(x):
    return _jsonable(dataclasses.asdict(x))
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  return x
