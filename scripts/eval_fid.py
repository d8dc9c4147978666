r"""FID of a trained cascade on COCO (Imagen's FID-30K protocol by default).

  python scripts/eval_fid.py --workdir_base /ckpt/base64 --workdir_sr256 /ckpt/sr256 \
      --coco_annotations /data/coco/annotations/captions_val2014.json \
      --coco_images /data/coco/val2014 --output_dir /tmp/fid30k \
      --guidance_scale 1.35,8 --guidance_sweep 1,1.35,2,3

30,000 captions are drawn from COCO 2014 val without replacement with `--seed`; the cascade
samples them at the per-stage settings; samples and the drawn val images are resized to
256x256 and compared with the FID Inception (pytorch-fid weights, a local or gs:// file; see
docs/evaluation.md). Generation is sharded over hosts (`--num_processes`...) and resumable:
rerun the same command after an interruption and finished shards are kept. The result is
`<output_dir>/fid.json` (and `fid_vs_guidance.{json,md}` for a sweep). `--output_dir`,
`--reference_cache_dir` and `--inception_weights` may be gs:// paths.

Zero-shot: the protocol assumes the model never saw COCO. A stage whose saved config trained
on COCO (`input.dataset` tfds:coco_captions or coco_json, or a COCO annotations/path) is
logged as a warning and marked in fid.json (`"trained_on_coco": true`).

Per-stage settings take one value (all stages) or a comma-separated list, one per stage.
`--guidance_sweep` overrides the *base* stage's guidance scale with each value in turn.
"""
import dataclasses
import json

from absl import app
from absl import flags
from absl import logging

_BASE = flags.DEFINE_string("workdir_base", None, "Base stage workdir.")
_SR256 = flags.DEFINE_string("workdir_sr256", None, "First SR stage workdir.")
_SR1024 = flags.DEFINE_string("workdir_sr1024", None, "Second SR stage workdir.")
_ANN = flags.DEFINE_string("coco_annotations", None, "captions_val2014.json.")
_IMAGES = flags.DEFINE_string("coco_images", None, "The val2014/ image folder.")
_TFDS = flags.DEFINE_string("tfds_name", None, "Use TFDS (e.g. coco_captions) instead.")
_TFDS_SPLIT = flags.DEFINE_string("tfds_split", "val+restval+test",
                                  "TFDS split; coco_captions' val+restval+test = COCO 2014 val.")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
_NUM = flags.DEFINE_integer("num_samples", 30_000, "Captions drawn (without replacement).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the caption draw and of sampling.")
_RES = flags.DEFINE_integer("resolution", 256, "Both sides are resized to this first.")
_SHARD = flags.DEFINE_integer("shard_size", 250, "Captions per resumable shard.")
_OUT = flags.DEFINE_string("output_dir", None, "Run directory (resumable).", required=True)
_CACHE = flags.DEFINE_string("reference_cache_dir", None,
                             "Where reference statistics are cached (default: "
                             "<output_dir>/reference_cache).")
_WEIGHTS = flags.DEFINE_string("inception_weights", None,
                               "pytorch-fid .pth or converted .npz (default: "
                               "~/.cache/imagen_jax/pt_inception-2015-12-05-6726825d.{npz,pth}); "
                               "'random:SEED' = random weights, for tests only (not FID).")
_INC_BATCH = flags.DEFINE_integer("inception_batch_size", 64, "Inception batch (per host).")
_INC_DTYPE = flags.DEFINE_enum("inception_dtype", "float32", ["float32", "bfloat16"],
                               "Inception compute dtype (features are float32).")
_INC_SIZE = flags.DEFINE_integer("inception_image_size", 299,
                                 "Inception input size; anything but 299 is for tests only.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Sampler batch size.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", None, "T5 directory (local or gs://) or built-in name instead of the "
    "one saved in the stages' configs (width checked against every stage).")
_SAVE_IMAGES = flags.DEFINE_bool("save_images", False, "Keep the 256px samples in the shards.")
_SWEEP = flags.DEFINE_string("guidance_sweep", None, "Base guidance scales, e.g. 1,1.35,2,3.")
_PER_STAGE = {
    "sampler": flags.DEFINE_string("sampler", None, "ddpm|ddim|dpmpp_2m"),
    "num_steps": flags.DEFINE_string("num_steps", None, "Sampler steps."),
    "guidance_scale": flags.DEFINE_string("guidance_scale", None, "CFG scale (1 = none)."),
    "threshold": flags.DEFINE_string("threshold", None, "none|static|dynamic"),
    "percentile": flags.DEFINE_string("percentile", None, "Dynamic threshold percentile."),
    "aug_level": flags.DEFINE_string("aug_level", None, "SR low-res noise augmentation level."),
}
_TYPES = {"sampler": str, "threshold": str, "num_steps": int}
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-process: process count.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-process: this process.")


def _per_stage(name, num_stages):
  raw = _PER_STAGE[name].value
  if raw is None:
    return [None] * num_stages
  values = [_TYPES.get(name, float)(v) for v in raw.split(",")]
  if len(values) == 1:
    values *= num_stages
  if len(values) != num_stages:
    raise app.UsageError(f"--{name}={raw!r} has {len(values)} values for {num_stages} stages")
  return values


def _extractor():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from imagen_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
  kw = dict(batch_size=_INC_BATCH.value, image_size=_INC_SIZE.value,
            dtype=jnp.bfloat16 if _INC_DTYPE.value == "bfloat16" else jnp.float32)
  w = _WEIGHTS.value
  if w and w.startswith("random:"):
    logging.warning("random Inception weights: the numbers are NOT FID values (tests only)")
    return inception.FeatureExtractor.random(int(w.split(":", 1)[1]), **kw)
  return inception.FeatureExtractor.from_weights(w, **kw)


def _table(results):
  lines = ["| base guidance w | FID |", "|---|---|"]
  lines += [f"| {r['settings']['base_guidance_scale']:g} | {r['fid']:.3f} |" for r in results]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  from imagen_jax.parallel import multihost  # pylint: disable=import-outside-toplevel
  multihost.initialize(_COORD.value, _NPROC.value, _PID.value)
  import jax  # pylint: disable=import-outside-toplevel
  from imagen_jax import sampling  # pylint: disable=import-outside-toplevel
  from imagen_jax.evaluation import coco_fid  # pylint: disable=import-outside-toplevel
  from imagen_jax.storage import paths  # pylint: disable=import-outside-toplevel

  workdirs = [w for w in (_BASE.value, _SR256.value, _SR1024.value) if w]
  if not workdirs:
    raise app.UsageError("give at least --workdir_base")
  sweep = [float(v) for v in _SWEEP.value.split(",")] if _SWEEP.value else None
  # Fail on data and weights before loading stages or compiling anything.
  source = coco_fid.open_source(_ANN.value, _IMAGES.value, _TFDS.value, _TFDS_SPLIT.value,
                                _TFDS_DIR.value)
  extractor = _extractor()
  protocol = coco_fid.Protocol(num_samples=_NUM.value, seed=_SEED.value,
                               resolution=_RES.value, shard_size=_SHARD.value)
  harness = coco_fid.CocoFid(source, extractor, _OUT.value, protocol,
                             cache_dir=_CACHE.value, process_index=jax.process_index(),
                             process_count=jax.process_count())
  harness.draw()  # validates num_samples against the source before loading stages

  stages = [sampling.load_stage(w) for w in workdirs]
  coco_trained = {s.workdir: why for s in stages if (why := coco_fid.coco_training(s.config))}
  for workdir, why in coco_trained.items():
    logging.warning("stage %s was trained on COCO (%s): zero-shot COCO FID assumes the model "
                    "never saw COCO; this FID is not comparable to Imagen's", workdir, why)
  per = {k: _per_stage(k, len(stages)) for k in _PER_STAGE}
  settings = [sampling.StageSettings.from_config(s.config.sampling,
                                                 **{k: per[k][i] for k in per})
              for i, s in enumerate(stages)]
  # Each host samples its own shards on its own devices.
  sampler = sampling.CascadeSampler(stages, settings, batch_size=_BATCH.value,
                                    devices=jax.local_devices(),
                                    text_encoder=_TEXT_ENCODER.value)
  runs = [(None, settings)] if sweep is None else [
      (w, [dataclasses.replace(settings[0], guidance_scale=w)] + settings[1:]) for w in sweep]
  results = []
  for w, run_settings in runs:
    name = "default" if w is None else f"base_w{w:g}"

    def sample_fn(captions, rng_seed, run_settings=run_settings):
      return sampler.sample(captions, rng_seed, settings=run_settings, progress=False)[-1]

    record = {"stages": [{"workdir": s.workdir, "checkpoint_step": s.step,
                          "model": f"{s.config.model.name}/{s.config.model.variant}",
                          **dataclasses.asdict(st)} for s, st in zip(stages, run_settings)],
              "base_guidance_scale": run_settings[0].guidance_scale,
              "trained_on_coco": bool(coco_trained)}
    result = harness.evaluate(sample_fn, name, record, save_images=_SAVE_IMAGES.value)
    if result is not None:
      results.append(result)
      print(f"{name}: FID-{result['counts']['samples']} = {result['fid']:.4f} "
            f"({result['counts']['shards_reused']} shards reused)")
  if jax.process_index() == 0:
    out = {"runs": results, "trained_on_coco": bool(coco_trained),
           "stages_trained_on_coco": coco_trained}
    if sweep is not None:
      table = [{"base_guidance_scale": r["settings"]["base_guidance_scale"], "fid": r["fid"]}
               for r in results]
      out["fid_vs_guidance"] = table
      coco_fid.write_json(coco_fid.join(_OUT.value, "fid_vs_guidance.json"), table)
      paths.write_atomic(coco_fid.join(_OUT.value, "fid_vs_guidance.md"), _table(results))
    coco_fid.write_json(coco_fid.join(_OUT.value, "fid.json"), out)
    print(json.dumps({"output": coco_fid.join(_OUT.value, "fid.json"),
                      "fid": {r["name"]: r["fid"] for r in results},
                      "trained_on_coco": bool(coco_trained)}))


if __name__ == "__main__":
  app.run(main)
