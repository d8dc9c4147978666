"""`--text_encoder` on scripts/sample.py (a gs:// Hugging Face T5) and CascadeSampler's width check."""

import json
import pathlib
import subprocess
import sys

import pytest

from imagen_jax import sampling
from imagen_jax.storage import paths

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _save_t5(d, d_model):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.T5Config(
      vocab_size=384,
      d_model=d_model,
      d_kv=8,
      d_ff=64,
      num_layers=1,
      num_heads=4,
      feed_forward_proj="gated-gelu",
      dropout_rate=0.0,
      tokenizer_class="ByT5Tokenizer",
  )
  transformers.T5EncoderModel(cfg).eval().save_pretrained(str(d))
  return d


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location(
      "cascade_test", ROOT / "tests/sampling/cascade_test.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module._make_workdir(
      tmp_path_factory.mktemp("stage") / "base",  # pylint: disable=protected-access
      "stage=base,runlocal",
      1,
  )


def test_sample_script_reads_the_encoder_from_gcs(base_workdir, gcs_bucket, tmp_path):
  local = _save_t5(tmp_path / "t5", 64)
  remote = paths.path(f"{gcs_bucket}/models/t5")
  remote.mkdir(parents=True, exist_ok=True)
  for f in local.iterdir():
    (remote / f.name).write_bytes(f.read_bytes())
  out = tmp_path / "out"
  cmd = [
      sys.executable,
      str(ROOT / "scripts/sample.py"),
      f"--workdir_base={base_workdir}",
      "--prompt=a red circle",
      "--num_steps=2",
      "--sampler=ddim",
      f"--text_encoder={gcs_bucket}/models/t5",
      f"--outdir={out}",
  ]
  env = dict(
      __import__("os").environ,
      IMAGEN_JAX_CACHE=str(tmp_path / "xdg"),
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
  )
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(next(out.glob("*.json")).read_text())
  assert record["text_encoder"] == f"{gcs_bucket}/models/t5"
  # The weights came from the bucket: a local copy of it was made under IMAGEN_JAX_CACHE.
  copies = list((tmp_path / "xdg" / "remote").glob("*-t5/model.safetensors"))
  assert copies and copies[0].read_bytes() == (local / "model.safetensors").read_bytes()


def test_text_encoder_width_is_checked_against_each_stage(base_workdir, tmp_path):
  narrow = _save_t5(tmp_path / "t5_32", 32)
  stage = sampling.load_stage(base_workdir)
  with pytest.raises(
      ValueError,
      match=rf"--text_encoder '{narrow}' gives 32-dim embeddings "
      rf"but stage 0 \({base_workdir}\) was trained with text_dim=64",
  ):
    sampling.CascadeSampler([stage], text_encoder=str(narrow))
