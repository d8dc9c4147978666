"""Input pipeline throughput (img/s) on this machine; not a test.

  python benchmarks/input_pipeline.py [--seconds 5] [--workers 2]

Measures the shapes world and the folder source (JPEGs of 640x480 with
sidecar captions, written to a temporary folder) at 64x64 and 256x256, as
base-stage batches (no low-res input) and SR batches (with `lowres` at a
quarter of the resolution).
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from imagen_jax.data import input_pipeline


def _make_folder(root: str, n: int) -> None:
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:480, 0:640]
  for i in range(n):
    a, b, c = rng.uniform(0.005, 0.05, 3)
    img = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], -1)
    img = ((img + 1) * 127.5).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(root, f"{i:04d}.jpg"), quality=90)
    with open(os.path.join(root, f"{i:04d}.txt"), "w") as f:
      f.write(f"synthetic picture number {i}\n")


def _measure(config, resolution, lowres, batch, seconds, workers):
  it = input_pipeline.create_input_iterator(
      {**config, "num_workers": workers},
      global_batch_size=batch,
      resolution=resolution,
      lowres_resolution=lowres,
      seed=0,
      process_index=0,
      process_count=1,
      devices_per_process=1,
  )
  next(it)  # warm up (thread start, first decode)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += len(next(it)["caption"])
  rate = count / (time.perf_counter() - start)
  it.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--images", type=int, default=64)
  args = parser.parse_args()
  print(f"cpus: {os.cpu_count()}, worker threads: {args.workers}, batch: {args.batch}")
  with tempfile.TemporaryDirectory() as root:
    _make_folder(root, args.images)
    for name, config in (
        ("shapes", {"dataset": "shapes"}),
        ("folder (640x480 jpeg)", {"dataset": "folder", "path": root}),
    ):
      for res in (64, 256):
        for lowres in (None, res // 4):
          rate = _measure(config, res, lowres, args.batch, args.seconds, args.workers)
          stage = f"+lowres {lowres}" if lowres else "base"
          print(f"{name:22s} {res:4d}x{res:<4d} {stage:12s} {rate:8.0f} img/s")


if __name__ == "__main__":
  main()
