"""The embedded default: train the shapes cascade on the CPU, then measure it.

`run_demo(base_config, sr_config, workdir)`:
1. trains the base stage in `workdir/base` and the SR stage in `workdir/sr1`
   (each resumes from its own checkpoints, so an interrupted demo continues);
2. samples the cascade for captions of held-out scenes (colour/shape pairs
   that training never showed, `shapes.sample_scene(split="heldout")`) under
   several settings: no guidance, and two guidance scales with static and
   with dynamic thresholding;
3. scores every final image against its scene with `shapes.score`, and
   records the scorer's chance level (images of unrelated scenes) and its
   ceiling (ground-truth renders), then writes `workdir/demo_results.json`
   and `workdir/demo_grid.png`. The base stage's own output (upscaled to the
   scorer's minimum of 32x32 by pixel repetition) is scored as well.

Each setting's images are cached in `workdir/eval/` so a restart skips them.
"""

import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Sequence

import numpy as np

from imagen_jax import sampling
from imagen_jax.data import shapes
from imagen_jax.data import shapes_score
from imagen_jax.train import loop


def cpu_device_count(batch_sizes: Sequence[int], cores: int) -> int:
  """Virtual CPU devices for the demo: one per core, as many as divide every batch.

  XLA:CPU (jaxlib 0.10) runs each convolution on one core, so one device leaves
  the other cores idle in the convolutions; one device per core makes the
  data-parallel mesh use them all (BENCHMARKS.md, "Where the CPU time goes").
  """
  for n in range(max(1, int(cores)), 0, -1):
    if all(int(b) % n == 0 for b in batch_sizes):
      return n
  return 1


DEVICES_FLAG = "--xla_force_host_platform_device_count"


def set_cpu_devices(batch_sizes: Sequence[int], requested: int = -1) -> int:
  """Sets XLA_FLAGS for `requested` virtual CPU devices (-1: `cpu_device_count` of this
  machine's cores). Call it before JAX starts its backends (the first device query), not
  after. Returns the count asked for, 0 where nothing was set (XLA_FLAGS already sets it)."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if DEVICES_FLAG in xla_flags:
    return 0
  n = int(requested)
  if n < 0:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = cpu_device_count(batch_sizes, cores or 1)
  if n > 1:
    os.environ["XLA_FLAGS"] = f"{xla_flags} {DEVICES_FLAG}={n}".strip()
    return n
  return 0


def check_cpu_devices(asked: int) -> None:
  """Logs the devices, and a warning when JAX started before `set_cpu_devices` asked."""
  import jax  # pylint: disable=import-outside-toplevel

  logging.info("JAX devices: %d x %s", jax.device_count(), jax.devices()[0].device_kind)
  if asked and jax.default_backend() == "cpu" and jax.local_device_count() != asked:
    logging.warning(
        "Asked XLA for %d CPU devices, got %d: JAX's CPU backend had started "
        "before XLA_FLAGS was set. Set XLA_FLAGS=%s=%d before starting.",
        asked,
        jax.local_device_count(),
        DEVICES_FLAG,
        asked,
    )


@dataclasses.dataclass(frozen=True)
class Setting:
  label: str
  guidance_scale: float
  threshold: str


DEFAULT_SETTINGS = (
    Setting("w=1 (no guidance)", 1.0, "static"),
    Setting("w=3, static clip", 3.0, "static"),
    Setting("w=3, dynamic thr.", 3.0, "dynamic"),
    Setting("w=5, static clip", 5.0, "static"),
    Setting("w=5, dynamic thr.", 5.0, "dynamic"),
)


def heldout_scenes(num: int, seed: int, max_objects: int):
  rng = np.random.default_rng(seed)
  return [shapes.sample_scene(rng, "heldout", max_objects=max_objects) for _ in range(num)]


def scorer_reference(scenes, resolution):
  """(chance, ceiling): mean accuracy on unrelated scenes' and own renders at `resolution`
  (below the scorer's 32x32, upscaled by pixel repetition as a base stage's samples are)."""
  renders = [at_least(shapes.render(s, resolution), MIN_SCORE_RES) for s in scenes]
  own = shapes_score.mean_scores([shapes.score(r, s) for r, s in zip(renders, scenes)])
  shifted = renders[1:] + renders[:1]
  unrelated = shapes_score.mean_scores([shapes.score(r, s) for r, s in zip(shifted, scenes)])
  return unrelated["accuracy"], own["accuracy"]


def train_stages(configs: Sequence, workdir: pathlib.Path, names):
  for name, config in zip(names, configs):
    start = time.perf_counter()
    logging.info(
        "demo: training stage %s (%d steps) in %s", name, config.total_steps, workdir / name
    )
    loop.train_and_evaluate(config, str(workdir / name))
    logging.info("demo: stage %s done in %.0fs", name, time.perf_counter() - start)


def evaluate(
    workdirs,
    scenes,
    settings: Sequence[Setting],
    eval_dir,
    *,
    num_steps: int,
    sampler: str,
    sr_num_steps: int,
    sr_sampler: str,
    seed: int = 0,
    time_grid: str | None = None,
):
  """Per setting: cascade images for the scenes' captions and their scores. Samples are
  cached per setting and sampler settings (`time_grid`: every stage's; None: the
  samplers' defaults)."""
  eval_dir.mkdir(parents=True, exist_ok=True)
  captions = [shapes.caption(s) for s in scenes]
  cascade = sampling.CascadeSampler([sampling.load_stage(w) for w in workdirs], batch_size=32)
  results, base_results, finals = {}, {}, {}
  # The default grids by name, so a cache from before a default changed is not reused.
  grids = "-".join(sampling.default_time_grid(s) for s in (sampler, sr_sampler))
  for setting in settings:
    cache = eval_dir / (
        setting.label.replace(" ", "_")
        .replace(",", "")
        .replace("(", "")
        .replace(")", "")
        .replace("=", "")
        + f"__{sampler}{num_steps}_{sr_sampler}{sr_num_steps}_{time_grid or grids}.npz"
    )
    if cache.exists():
      with np.load(cache) as saved:
        images, base = list(saved["images"]), list(saved["base"])
    else:
      # The setting applies to the base, where the text is decided; SR
      # stages upsample unguided from a clean (aug_level 0) low-res input.
      stage_settings = [
          sampling.StageSettings(
              sampler=sampler,
              num_steps=num_steps,
              guidance_scale=setting.guidance_scale,
              threshold=setting.threshold,
              time_grid=time_grid,
          )
      ]
      stage_settings += [
          sampling.StageSettings(
              sampler=sr_sampler,
              num_steps=sr_num_steps,
              guidance_scale=1.0,
              threshold="static",
              aug_level=0.0,
              time_grid=time_grid,
          )
      ] * (len(workdirs) - 1)
      images = cascade.sample(captions, seed=seed, settings=stage_settings, progress=False)
      np.savez(cache, images=np.stack(images[-1]), base=np.stack(images[0]))
      images, base = list(images[-1]), list(images[0])
    scores = shapes_score.mean_scores([shapes.score(img, sc) for img, sc in zip(images, scenes)])
    base_scores = shapes_score.mean_scores(
        [shapes.score(at_least(img, MIN_SCORE_RES), sc) for img, sc in zip(base, scenes)]
    )
    results[setting.label] = scores
    base_results[setting.label] = base_scores
    finals[setting.label] = images
    logging.info(
        "demo: %-20s accuracy %.3f (base stage %.3f)",
        setting.label,
        scores["accuracy"],
        base_scores["accuracy"],
    )
  return results, base_results, finals, captions


MIN_SCORE_RES = 32  # the scorer is specified for renders of >= 32x32


def at_least(image, size):
  """Nearest-neighbour upscale by an integer factor to at least `size`."""
  factor = -(-size // image.shape[0])
  return np.repeat(np.repeat(image, factor, 0), factor, 1)


def run_demo(
    configs,
    workdir,
    *,
    names=("base", "sr1"),
    num_eval: int = 48,
    num_steps: int = 24,
    sampler: str = "dpmpp_2m",
    sr_num_steps: int = 12,
    sr_sampler: str = "ddim",
    settings: Sequence[Setting] = DEFAULT_SETTINGS,
    time_grid: str | None = None,
) -> dict:
  """Trains the stages, evaluates, writes demo_results.json and a grid."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  train_stages(configs, workdir, names)
  train_seconds = time.perf_counter() - start
  max_objects = int(configs[0].input.get("max_objects", 3))
  scenes = heldout_scenes(num_eval, seed=1234, max_objects=max_objects)
  final_res = configs[-1].input.resolution
  chance, ceiling = scorer_reference(scenes, final_res)
  results, base_results, finals, captions = evaluate(
      [workdir / n for n in names],
      scenes,
      settings,
      workdir / "eval",
      num_steps=num_steps,
      sampler=sampler,
      sr_num_steps=sr_num_steps,
      sr_sampler=sr_sampler,
      time_grid=time_grid,
  )
  wall = time.perf_counter() - start

  cols = min(8, len(scenes))
  rows, labels = [], []
  for s in settings:
    rows += finals[s.label][:cols]
    labels += [f"{s.label}: {c}" for c in captions[:cols]]
  grid = sampling.labelled_grid(rows, labels, columns=cols, cell=96, label_lines=4)
  from PIL import Image  # pylint: disable=import-outside-toplevel

  Image.fromarray(grid).save(workdir / "demo_grid.png")

  record = {
      "accuracy": {k: v["accuracy"] for k, v in results.items()},
      "per_attribute": results,
      "base_stage_accuracy": {k: v["accuracy"] for k, v in base_results.items()},
      "base_stage_per_attribute": base_results,
      "chance": chance,
      "ground_truth": ceiling,
      "wall_seconds": wall,
      "train_seconds": train_seconds,
      "num_eval_captions": len(scenes),
      "eval_split": "heldout",
      "resolution": final_res,
      "base_sampling": {"sampler": sampler, "num_steps": num_steps, "time_grid": time_grid},
      "sr_sampling": {
          "sampler": sr_sampler,
          "num_steps": sr_num_steps,
          "guidance_scale": 1.0,
          "aug_level": 0.0,
          "time_grid": time_grid,
      },
      "stages": {
          n: {
              "model": f"{c.model.name}/{c.model.variant}",
              "steps": int(c.total_steps),
              "batch_size": int(c.batch_size),
          }
          for n, c in zip(names, configs)
      },
      "grid": "demo_grid.png",
  }
  (workdir / "demo_results.json").write_text(json.dumps(record, indent=2))
  return record


def format_table(record) -> str:
  base = record.get("base_stage_accuracy", {})
  lines = [f"{'setting':<22} cascade  base stage", "-" * 41]
  for label, acc in record["accuracy"].items():
    b = f"{base[label]:.3f}" if label in base else "-"
    lines.append(f"{label:<22} {acc:.3f}    {b}")
  lines.append(f"{'chance (unrelated)':<22} {record['chance']:.3f}")
  lines.append(f"{'ground-truth renders':<22} {record['ground_truth']:.3f}")
  return "\n".join(lines)
