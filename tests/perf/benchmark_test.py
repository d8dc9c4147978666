"""imagen_jax.perf.benchmark: timing arithmetic, the synthetic batch, and the measured train
step / sampler on a tiny stage (figures are only checked for consistency, never for speed)."""

import itertools

import jax
import numpy as np
import pytest

from imagen_jax import config_lib
from imagen_jax import pipeline as pipeline_lib
from imagen_jax.perf import benchmark
from imagen_jax.train import flops as flops_lib


def _tiny_config(mode="jit"):
  c = config_lib.stage_defaults()
  c.seed = 0
  c.total_steps = 10
  c.batch_size = 8
  c.model.name = "shapes_base16"
  c.model.variant = "tiny"
  c.model.overrides.text_dim = 16
  c.text.encoder = "byt5-tiny-random"
  c.text.max_length = 6
  c.diffusion.schedule = "cosine"
  c.diffusion.prediction = "eps"
  c.input.dataset = "shapes"
  c.input.resolution = 16
  c.input.num_workers = 0
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.parallel.mode = mode
  c.parallel.mesh = (("data", -1), ("fsdp", 1))
  return c


def test_median_seconds_is_the_median_per_call(monkeypatch):
  # perf_counter readings 0, 3 | 10, 11 | 20, 26: blocks of 3, 1 and 6 s over 2 calls each.
  clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 26.0])
  monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
  calls = itertools.count()
  median, times = benchmark.median_seconds(lambda: next(calls), repeats=3, inner=2)
  assert times == [1.5, 0.5, 3.0]
  assert median == 1.5
  assert next(calls) == 6
  with pytest.raises(ValueError, match="repeats=0"):
    benchmark.median_seconds(lambda: None, repeats=0)


def test_synthetic_batch_matches_the_loss_format():
  c = _tiny_config()
  c.model.name, c.model.overrides.text_dim = "shapes_sr32", 16
  pipe = pipeline_lib.StagePipeline.from_config(c)
  b = benchmark.synthetic_batch(pipe, 64, 6, cond_drop_prob=0.25)
  assert b["image"].shape == (64, 32, 32, 3) and b["lowres"].shape == (64, 16, 16, 3)
  assert b["text_emb"].shape == (64, 6, 16) and b["text_mask"].dtype == bool
  assert -1 <= b["image"].min() and b["image"].max() <= 1
  lengths = b["text_mask"].sum(1)
  assert lengths.min() >= 1 and lengths.max() <= 6
  assert np.all(b["text_mask"] == (np.arange(6)[None] < lengths[:, None]))  # prefix masks
  assert 0 < b["drop_text"].sum() < 64


# Both variants are slow-marked (-m slow; .ci/run runs them once): each compiles the base
# stage's full train step, and the trainer's steps are covered by tests/train and
# tests/parallel/pmap_step_test.py.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_train_step_figures_are_consistent(mode):
  c = _tiny_config(mode)
  out = benchmark.train_step(c, batch_size=8, repeats=2, inner=1, warmup=1)
  pipe = pipeline_lib.StagePipeline.from_config(c)
  params = pipe.init(jax.random.PRNGKey(0), text_len=6)["params"]
  from flax.core import meta  # pylint: disable=import-outside-toplevel

  assert out["params"] == benchmark.count_params(meta.unbox(params))
  assert out["devices"] == 8 and out["mode"] == mode and out["batch_size"] == 8
  assert len(out["step_seconds_all"]) == 2
  assert 0 < out["lower_seconds"] < out["compile_seconds"] and out["init_seconds"] > 0
  assert out["step_seconds"] == pytest.approx(np.median(out["step_seconds_all"]))
  assert out["img_per_s"] == pytest.approx(8 / out["step_seconds"])
  assert np.isfinite(out["loss"]) and out["loss"] > 0
  assert out["flops_per_step_per_device"] > 0
  assert out["flops_per_image"] == pytest.approx(out["flops_per_step_per_device"] * 8 / 8)
  assert out["tflops_per_device"] == pytest.approx(
      out["flops_per_step_per_device"] / out["step_seconds"] / 1e12
  )
  assert out["mfu"] == "n/a"  # no peak for CPUs
  assert out["peak_device_memory_bytes"] is None  # the CPU backend reports none


@pytest.mark.slow
def test_train_step_flops_grow_with_the_batch():
  c = _tiny_config()
  small = benchmark.train_step(c, batch_size=8, repeats=1, inner=1, warmup=0)
  large = benchmark.train_step(c, batch_size=16, repeats=1, inner=1, warmup=0)
  # Same program per example: per-image FLOPs agree, per-device FLOPs double (to within the
  # optimizer's batch-independent share).
  assert large["flops_per_image"] == pytest.approx(small["flops_per_image"], rel=0.1)
  assert large["flops_per_step_per_device"] > 1.8 * small["flops_per_step_per_device"]


# Slow-marked to keep the default run under its 20-minute budget; .ci/run runs the
# benchmark tests' slow tier once.
@pytest.mark.slow
def test_sampling_reports_guided_and_unguided():
  c = _tiny_config()
  out = benchmark.sampling(c, batch_size=2, num_steps=3, guidance_scale=3.0, repeats=1)
  for name in ("unguided", "guided"):
    assert out[name]["step_seconds"] == pytest.approx(out[name]["seconds"] / 3)
    assert out[name]["img_per_s"] == pytest.approx(2 / out[name]["seconds"])
  assert out["guided_over_unguided_step"] == pytest.approx(
      out["guided"]["step_seconds"] / out["unguided"]["step_seconds"]
  )


def test_input_pipeline_counts_images():
  out = benchmark.input_pipeline(_tiny_config(), batch_size=8, seconds=0.3)
  assert out["dataset"] == "shapes" and out["img_per_s"] > 0


def test_bad_mode_and_batch_are_named():
  c = _tiny_config()
  c.parallel.mode = "dp"
  with pytest.raises(ValueError, match="'dp'"):
    benchmark.train_step(c, batch_size=8)
  with pytest.raises(ValueError, match="12 is not divisible by the 8 devices"):
    benchmark.train_step(_tiny_config(), batch_size=12)


def test_mfu_uses_the_peak_table():
  assert flops_lib.throughput(989e12 * 0.5, 1.0, "NVIDIA H100 80GB HBM3")["mfu"] == pytest.approx(
      0.5
  )
