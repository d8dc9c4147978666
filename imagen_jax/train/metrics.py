"""TensorBoard event files without TensorFlow, console lines, image grids. Process 0 writes."""

from __future__ import annotations

import io
import math
import os
import socket
import struct
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from imagen_jax.storage import paths as storage_paths


def _png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


class MetricWriter:
  """Scalars and images to `<logdir>/events.out.tfevents.*`; a no-op off process 0.

  Writes TFRecord-framed `Event` protos with tensorboard's `RecordWriter` (its
  `EventFileWriter` would import TensorFlow through `tensorboard.compat`).

  On an object store (`gs://`) an object appears only when its upload is closed, so a
  long-lived event file would stay invisible for the whole run and be lost with the process.
  There each `flush()` closes the current file and the next write starts a new one
  (`rotate`, default: the logdir is remote): TensorBoard reads every event file of a
  directory, in name order, and the names sort by their creation time. A kill loses at most
  the events since the last flush (the loop flushes at every log step).
  """

  def __init__(
      self, logdir: str | os.PathLike, enabled: bool | None = None, rotate: bool | None = None
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.rotate = storage_paths.is_remote(logdir) if rotate is None else rotate
    self._file = self._writer = None
    self._count = 0
    self.path = None
    if self.enabled:
      self._logdir = storage_paths.path(logdir)
      self._logdir.mkdir(parents=True, exist_ok=True)
      self._open()

  def _open(self) -> None:
    name = (
        f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        f".{self._count}"
    )
    self._count += 1
    self.path = self._logdir / name
    self._file = self.path.open("wb")
    self._writer = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event) -> None:
    if self._writer is None:
      self._open()
    self._writer.write(event.SerializeToString())

  def _add(self, step: int, values: list) -> None:
    self._write(
        event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
    )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = []
    for name, value in scalars.items():
      try:
        values.append(summary_pb2.Summary.Value(tag=name, simple_value=float(value)))
      except (TypeError, ValueError):
        continue  # e.g. "n/a"
    self._add(step, values)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """`images`: name -> uint8 [H, W, 3]."""
    if not self.enabled:
      return
    values = []
    for name, img in images.items():
      img = np.asarray(img, np.uint8)
      values.append(
          summary_pb2.Summary.Value(
              tag=name,
              image=summary_pb2.Summary.Image(
                  height=img.shape[0],
                  width=img.shape[1],
                  colorspace=img.shape[2],
                  encoded_image_string=_png_bytes(img),
              ),
          )
      )
    self._add(step, values)

  def flush(self) -> None:
    if self._file is None:
      return
    if self.rotate:
      self.close()
    else:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = self._writer = None


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] grid."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y : y + h, x : x + w] = img
  return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  storage_paths.path(path).write_bytes(_png_bytes(image))


def to_uint8(images: Any) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255]."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
  """Per-key mean over host metric dicts (non-finite values kept)."""
  out = {}
  for key in history[0]:
    vals = [float(np.asarray(h[key])) for h in history if key in h]
    out[key] = float(np.mean(vals))
  return out


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, total_steps: int, metrics: Mapping[str, Any], width: int = 20) -> str:
  """E.g. `[#####-----]  500/1000 loss 0.1234 gnorm 1.2 lr 1.0e-04 | 3.1 step/s ...`."""
  frac = step / max(total_steps, 1)
  done = int(round(frac * width))
  parts = [f"[{'#' * done}{'-' * (width - done)}] {step:>{len(str(total_steps))}}/{total_steps}"]
  fmt = {
      "loss": ("loss", "{:.4f}"),
      "grad_norm": ("gnorm", "{:.3g}"),
      "lr": ("lr", "{:.2e}"),
      "steps_per_sec": ("step/s", "{:.2f}"),
      "images_per_sec": ("img/s", "{:.1f}"),
      "tflops_per_device": ("TFLOP/s/dev", "{:.3g}"),
      "mfu": ("MFU", "{}"),
      "skipped_total": ("skipped steps", "{:.0f}"),
      "bad_examples": ("nonfinite examples", "{:.0f}"),
      "input/skipped_records": ("bad records", "{:.0f}"),
  }
  for key, (label, f) in fmt.items():
    if key in metrics:
      value = metrics[key]
      if key == "mfu" and not isinstance(value, str):
        value = f"{100 * value:.1f}%"
      parts.append(f"{label} {f.format(value) if not isinstance(value, str) else value}")
  rate = metrics.get("steps_per_sec")
  if isinstance(rate, float) and rate > 0:
    parts.append(f"ETA {_fmt_duration((total_steps - step) / rate)}")
  return " ".join(parts)


def log_console(line: str) -> None:
  if jax.process_index() == 0:
    logging.info("%s", line)


def read_events(logdir: str | os.PathLike) -> dict[str, list[tuple[int, Any]]]:
  """tag -> [(step, value)] from every event file in `logdir` (local or gs://), in file-name
  (creation) order: the scalars as floats, images as `Summary.Image` protos. No TensorFlow."""
  out: dict[str, list[tuple[int, Any]]] = {}
  for path in sorted(storage_paths.path(logdir).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4  # length, its CRC, the record, its CRC
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else v.image
        out.setdefault(v.tag, []).append((event.step, value))
  return out
