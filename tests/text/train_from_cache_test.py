"""Training from a filled embedding cache without the T5 weights, and the errors before
step 1 when the cache does not cover the data (issue #17 part 4)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagen_jax import text
from imagen_jax.train import loop
from imagen_jax.train import stage_task

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/shapes.py:stage=base,runlocal"  # 16px base, text.max_length 80


def _save_tiny_t5(d: pathlib.Path):
  """A 1-layer HF T5 (d_model 64: the shapes base's text_dim) with ByT5's byte tokenizer."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.T5Config(
      vocab_size=384,
      d_model=64,
      d_kv=16,
      d_ff=128,
      num_layers=1,
      num_heads=4,
      feed_forward_proj="gated-gelu",
      dropout_rate=0.0,
      tokenizer_class="ByT5Tokenizer",
  )
  transformers.T5EncoderModel(cfg).eval().save_pretrained(str(d))
  return d


def _folder(d: pathlib.Path, captions):
  d.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, caps in enumerate(captions):
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(d / f"{i:03d}.png")
    (d / f"{i:03d}.txt").write_text("\n".join(caps))
  return d


CAPTIONS = [[f"picture {i}", f"another caption of picture {i}"] for i in range(8)]


def _overrides(encoder, cache, data):
  return [
      f"--config.text.encoder={encoder}",
      f"--config.text.cache_dir={cache}",
      "--config.input.dataset=folder",
      f"--config.input.path={data}",
  ]


def _env():
  return dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TQDM_DISABLE="1",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
  )


def _precompute(*args):
  out = subprocess.run(
      [sys.executable, "scripts/precompute_text_embeddings.py", *args],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def _config(encoder, cache, data, samples=False):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("shapes_cfg", ROOT / "configs/shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("stage=base,runlocal")
  c.text.encoder, c.text.cache_dir = str(encoder), str(cache)
  c.input.dataset, c.input.path = "folder", str(data)
  if samples:  # "picture 3" is cached by the precompute: periodic samples need no encoder
    c.sample_prompts, c.sample_every_steps = ("picture 3",), 3
  return c


@pytest.mark.slow  # ~60-170 s on 2 CPU cores, all of it XLA compiling the trainer
@pytest.mark.parametrize("samples", [False, True], ids=["train", "train_and_sample"])
def test_precompute_from_config_then_train_without_the_encoder(tmp_path, monkeypatch, samples):
  encoder_dir = _save_tiny_t5(tmp_path / "t5")
  data = _folder(tmp_path / "data", CAPTIONS)
  cache_dir = tmp_path / "cache"
  out = _precompute(
      f"--config={CONFIG}",
      *_overrides(encoder_dir, cache_dir, data),
      "--config.sample_prompts=('picture 3',)",
      "--storage_dtype=float32",
  )
  # All captions of every record (2 per image), the sample prompt already among them.
  assert "17 captions, 16 to encode (max_length 80" in out, out
  enc = text.load_text_encoder(encoder_dir, max_length=80)
  cache = text.EmbeddingCache(cache_dir, enc.identity)
  assert cache.max_length == 80  # the stage config's text.max_length, not the encoder's 256
  flat = [c for caps in CAPTIONS for c in caps]
  emb, mask = cache.get_many(flat)
  ref_emb, ref_mask = (np.asarray(a) for a in enc.encode(flat))
  np.testing.assert_array_equal(mask, ref_mask)
  np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)
  assert cache.stats()["generation"] is not None  # one process: compacted

  shutil.rmtree(encoder_dir)  # the encoder is gone; the cache is all the trainer has
  loads = []
  real_load = text.load_text_encoder
  monkeypatch.setattr(
      text, "load_text_encoder", lambda *a, **k: loads.append(a) or real_load(*a, **k)
  )
  workdir = tmp_path / "work"
  loop.train_and_evaluate(_config(encoder_dir, cache_dir, data, samples), str(workdir))
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["step"] == 3 and np.isfinite(final["loss"])
  assert loads == []  # no T5 weights loaded
  if samples:
    assert list((workdir / "samples").glob("step_*.png"))  # prompts from the cache


def test_missing_captions_fail_before_step_1_with_the_fill_command(tmp_path):
  encoder_dir = _save_tiny_t5(tmp_path / "t5")
  data = _folder(tmp_path / "data", CAPTIONS[:6])
  cache_dir = tmp_path / "cache"
  _precompute(f"--config={CONFIG}", *_overrides(encoder_dir, cache_dir, data))
  _folder(data, CAPTIONS)  # two more images (4 new captions) after the precompute
  cmd = [
      sys.executable,
      "scripts/train.py",
      f"--config={CONFIG}",
      *_overrides(encoder_dir, cache_dir, data),
      f"--workdir={tmp_path / 'work'}",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  message = proc.stderr
  assert f"4 of 16 captions are not in the cache at {cache_dir}" in message, message[-3000:]
  fill = message.split("fill it with: ")[1].splitlines()[0]
  assert fill.startswith(f"python scripts/precompute_text_embeddings.py --config={CONFIG} ")
  assert not (tmp_path / "work" / "checkpoints").exists() or not any(
      (tmp_path / "work" / "checkpoints").iterdir()
  )
  # The command it prints fills the cache.
  out = _precompute(*fill.split()[2:])
  assert "4 to encode" in out
  enc = text.load_text_encoder(encoder_dir, max_length=80)
  flat = [c for caps in CAPTIONS for c in caps]
  assert text.EmbeddingCache(cache_dir, enc.identity).missing(flat) == []


def test_no_cache_for_the_encoder_is_named(tmp_path):
  data = _folder(tmp_path / "data", CAPTIONS[:2])
  config = _config(tmp_path / "no-such-t5", tmp_path / "empty-cache", data)
  with pytest.raises(
      ValueError,
      match=r"no-such-t5' is not a directory, and the cache at .*"
      r"empty-cache holds no embeddings recorded for it; fill it with: python "
      r"scripts/precompute_text_embeddings.py",
  ):
    stage_task.open_cache(config)


def test_replaced_encoder_weights_are_not_served_stale_embeddings(tmp_path):
  """The cache was filled from the weights at a path; new weights at the same path have a
  fingerprint with no record: an error, not the old weights' embeddings found by path. Only
  when the directory is gone does the path stand in for it."""
  import torch  # pylint: disable=import-outside-toplevel
  from safetensors.torch import load_file, save_file  # pylint: disable=import-outside-toplevel

  encoder_dir = _save_tiny_t5(tmp_path / "t5")
  data = _folder(tmp_path / "data", CAPTIONS[:2])
  cache = tmp_path / "cache"
  _precompute(f"--config={CONFIG}", *_overrides(encoder_dir, cache, data))
  config = _config(encoder_dir, cache, data)
  _, spec = stage_task.open_cache(config)
  assert spec is not None
  weights = encoder_dir / "model.safetensors"
  tensors = load_file(str(weights))
  save_file(
      {k: v + 0.01 * torch.ones_like(v) for k, v in tensors.items()},
      str(weights),
      metadata={"format": "pt"},
  )  # fine-tuned in place: same names, same size
  with pytest.raises(ValueError, match=r"holds no embeddings of encoder .*fingerprint"):
    stage_task.open_cache(config)
  shutil.rmtree(encoder_dir)
  cache_obj, spec = stage_task.open_cache(config)  # gone: the path's record stands in
  assert spec is None and cache_obj.missing([c for caps in CAPTIONS[:2] for c in caps]) == []
