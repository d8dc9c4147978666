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
# XLA:CPU's concurrency-optimized scheduler can order one device's in-process all-reduce
# after work the other device waits on: the rendezvous then times out after 40 s and aborts
# the process (seen on 2 virtual devices in the shapes base and prior train steps, 2026-12).
# Off, the same runs finish, at the same train img/s (ebase32: 171 vs 146 with it on).
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def set_cpu_devices(batch_sizes: Sequence[int], requested: int = -1) -> int:
  """Sets XLA_FLAGS for `requested` virtual CPU devices (-1: `cpu_device_count` of this
  machine's cores), with SCHEDULER_FLAG where there are several. Call it before JAX starts
  its backends (the first device query), not after. Returns the count asked for, 0 where
  nothing was set (XLA_FLAGS already sets it)."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if DEVICES_FLAG in xla_flags:
    return 0
  n = int(requested)
  if n < 0:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = cpu_device_count(batch_sizes, cores or 1)
  if n > 1:
    scheduler = "" if SCHEDULER_FLAG.split("=")[0] in xla_flags else f" {SCHEDULER_FLAG}"
    os.environ["XLA_FLAGS"] = f"{xla_flags} {DEVICES_FLAG}={n}{scheduler}".strip()
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


HELDOUT_SEED = 1234  # the held-out draw every report uses
VALIDATION_SEED = 4321  # the validation draw (training pairs) settings are chosen on


def heldout_scenes(num: int, seed: int = HELDOUT_SEED, max_objects: int = 1):
  rng = np.random.default_rng(seed)
  return [shapes.sample_scene(rng, "heldout", max_objects=max_objects) for _ in range(num)]


def validation_scenes(num: int, seed: int = VALIDATION_SEED, max_objects: int = 1):
  """Scenes of training colour/shape pairs (not training images: a separate draw) on which
  the demo and the guidance study choose their settings, so the held-out draw is reported
  once, untuned."""
  rng = np.random.default_rng(seed)
  return [shapes.sample_scene(rng, "train", max_objects=max_objects) for _ in range(num)]


def choose(validation: dict) -> str:
  """The setting with the best validation accuracy (ties: the first listed)."""
  best = max(v["accuracy"] for v in validation.values())
  return next(k for k, v in validation.items() if v["accuracy"] == best)


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
    draw: str = "",
):
  """Per setting: cascade images for the scenes' captions and their scores (with each
  image's background noise, `shapes_score.background_noise`). Samples are cached per
  setting, sampler settings (`time_grid`: every stage's; None: the samplers' defaults) and
  `draw` (a tag of the scenes: "" for the held-out draw)."""
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
        + f"__{sampler}{num_steps}_{sr_sampler}{sr_num_steps}_{time_grid or grids}"
        + f"{draw}.npz"
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
    scores = shapes_score.mean_scores(
        [
            dict(shapes.score(img, sc), background_noise=shapes_score.background_noise(img, sc))
            for img, sc in zip(images, scenes)
        ]
    )
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


def pretrain_text_encoder(workdir: pathlib.Path, steps: int = 0) -> tuple[pathlib.Path, dict]:
  """The embedded encoder pretrained on text alone (`encoder_pretrain`; `steps` 0: its
  default), in `workdir/text_encoder`: trained on the first run, reused after."""
  from imagen_jax import encoder_pretrain  # pylint: disable=import-outside-toplevel

  out = workdir / "text_encoder"
  start = time.perf_counter()
  logging.info("demo: text encoder, pretrained on shapes-world text alone, in %s", out)
  kw = {"steps": int(steps)} if steps else {}
  metrics = encoder_pretrain.pretrain_encoder(out, encoder_pretrain.PretrainConfig(**kw))
  logging.info("demo: text encoder ready in %.0fs", time.perf_counter() - start)
  return out, metrics


def use_text_encoder(configs: Sequence, directory: pathlib.Path, max_length: int) -> None:
  """Points every stage config at the encoder in `directory` (in place)."""
  for c in configs:
    c.text.encoder = str(directory)
    c.text.max_length = int(max_length)


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
    pretrained_encoder: bool = False,
    encoder_steps: int = 0,
    encoder_max_length: int = 32,
) -> dict:
  """Trains the stages (after pretraining their text encoder on text alone, with
  `pretrained_encoder`, which points every config at it), chooses the setting on the
  validation draw, evaluates the held-out draw, writes demo_results.json, the grid and
  the plot."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from imagen_jax import demo_figures  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  encoder = {"name": str(configs[0].text.encoder), "pretrained": False}
  if pretrained_encoder:
    directory, metrics = pretrain_text_encoder(workdir, encoder_steps)
    use_text_encoder(configs, directory, encoder_max_length)
    after = metrics["after"]["heldout_split"]
    encoder = {
        "name": str(directory),
        "pretrained": True,
        "masked_word_accuracy": {
            "colour": after["colour_accuracy"],
            "shape": after["shape_accuracy"],
            "all": after["accuracy"],
        },
        "pretrain_seconds": metrics.get("total_seconds"),
    }
  train_stages(configs, workdir, names)
  train_seconds = time.perf_counter() - start
  max_objects = int(configs[0].input.get("max_objects", 3))
  scenes = heldout_scenes(num_eval, max_objects=max_objects)
  final_res = configs[-1].input.resolution
  chance, ceiling = scorer_reference(scenes, final_res)
  how = dict(
      num_steps=num_steps,
      sampler=sampler,
      sr_num_steps=sr_num_steps,
      sr_sampler=sr_sampler,
      time_grid=time_grid,
  )
  stage_dirs = [workdir / n for n in names]
  validation, _, _, _ = evaluate(
      stage_dirs,
      validation_scenes(num_eval, max_objects=max_objects),
      settings,
      workdir / "eval",
      draw="_validation",
      **how,
  )
  chosen = choose({k: v for k, v in validation.items()})
  results, base_results, finals, captions = evaluate(
      stage_dirs, scenes, settings, workdir / "eval", **how
  )
  wall = time.perf_counter() - start

  record = {
      "accuracy": {k: v["accuracy"] for k, v in results.items()},
      "per_attribute": results,
      "chosen_setting": chosen,
      "chosen": results[chosen],
      "selection": "the setting with the best accuracy on a validation draw of "
      f"{num_eval} training-pair captions (seed {VALIDATION_SEED}); held-out reported once",
      "validation_accuracy": {k: v["accuracy"] for k, v in validation.items()},
      "validation_per_attribute": validation,
      "base_stage_accuracy": {k: v["accuracy"] for k, v in base_results.items()},
      "base_stage_per_attribute": base_results,
      "chance": chance,
      "ground_truth": ceiling,
      "wall_seconds": wall,
      "train_seconds": train_seconds,
      "num_eval_captions": len(scenes),
      "eval_split": "heldout",
      "resolution": final_res,
      "background_noise": "mean |pixel - background| (0-255) outside the objects' boxes "
      "(shapes_score.background_noise); 0 for a render",
      "text_encoder": encoder,
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
              "resolution": int(c.input.resolution),
              "steps": int(c.total_steps),
              "batch_size": int(c.batch_size),
          }
          for n, c in zip(names, configs)
      },
      "grid": "demo_grid.png",
      "plot": "demo_plot.png",
  }
  Image.fromarray(demo_figures.grid(finals, captions)).save(workdir / "demo_grid.png")
  plot = demo_figures.plot(record, dict(zip(names, stage_dirs)))
  Image.fromarray(plot).save(workdir / "demo_plot.png")
  (workdir / "demo_results.json").write_text(json.dumps(record, indent=2))
  return record


def format_table(record) -> str:
  """Per setting: validation and held-out accuracy, the held-out attributes and the
  background noise; the chosen setting starred."""
  cols = ("colour", "shape", "size", "place", "count", "all_correct")
  head = f"{'setting':<20} {'val.':>6} {'held-out':>8} " + " ".join(f"{c[:7]:>7}" for c in cols)
  lines = [head + "  bg noise", "-" * (len(head) + 10)]
  val = record.get("validation_accuracy", {})
  for label, scores in record["per_attribute"].items():
    star = "*" if label == record.get("chosen_setting") else " "
    v = f"{val[label]:.3f}" if label in val else "-"
    attrs = " ".join(f"{scores.get(c, float('nan')):>7.3f}" for c in cols)
    noise = scores.get("background_noise", float("nan"))
    lines.append(f"{star}{label:<19} {v:>6} {scores['accuracy']:>8.3f} {attrs}  {noise:8.1f}")
  lines.append(f" {'chance (unrelated)':<19} {'':>6} {record['chance']:>8.3f}")
  lines.append(f" {'ground-truth renders':<19} {'':>6} {record['ground_truth']:>8.3f}")
  lines.append(" * chosen on the validation draw")
  return "\n".join(lines)
