"""scripts/precompute_text_embeddings.py end to end (subprocess, tiny encoder), and the helpers
of imagen_jax.text.precompute."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from imagen_jax import text
from imagen_jax.text import precompute

_REPO = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _REPO / "scripts" / "precompute_text_embeddings.py"


def _run(*args):
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      TQDM_DISABLE="1",
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  out = subprocess.run(
      [sys.executable, str(_SCRIPT), *args],
      cwd=_REPO,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  )
  return out.stdout


def test_precompute_fills_cache_and_rerun_skips(tmp_path):
  captions = ["a red circle", "a blue square", "", "a red circle", "three green triangles"]
  src = tmp_path / "captions.jsonl"
  src.write_text("\n".join(json.dumps({"caption": c}) for c in captions))
  cache_dir = tmp_path / "cache"
  out = _run(f"--captions={src}", f"--cache_dir={cache_dir}", "--batch_size=3", "--write_every=2")
  assert "4 to encode" in out
  enc = text.load_text_encoder("byt5-tiny-random")
  cache = text.EmbeddingCache(cache_dir, enc.identity)
  assert cache.missing(captions) == []
  emb, mask = cache.get_many(captions)
  fresh_emb, fresh_mask = (np.asarray(a) for a in enc.encode(captions))
  np.testing.assert_array_equal(mask, fresh_mask)
  np.testing.assert_allclose(emb, fresh_emb, atol=2e-2, rtol=1e-2)  # bf16
  assert "0 to encode" in _run(f"--captions={src}", f"--cache_dir={cache_dir}")


def test_text_file_input(tmp_path):
  src = tmp_path / "captions.txt"
  src.write_text("one\ntwo\n")
  cache_dir = tmp_path / "cache"
  out = _run(f"--captions={src}", f"--cache_dir={cache_dir}", "--max_length=8")
  assert "2 to encode" in out
  enc = text.load_text_encoder("byt5-tiny-random", max_length=8)
  assert text.EmbeddingCache(cache_dir, enc.identity).missing(["one", "two"]) == []


def test_deprecated_encoder_flag_still_works(tmp_path):
  src = tmp_path / "captions.txt"
  src.write_text("one\n")
  out = _run(f"--captions={src}", f"--cache_dir={tmp_path / 'cache'}", "--encoder=byt5-tiny-random")
  identity = text.load_text_encoder("byt5-tiny-random").identity
  assert f"encoder {identity}: 1 captions, 1 to encode" in out


def test_library_helpers(tmp_path):
  src = tmp_path / "c.jsonl"
  src.write_text('{"text": "a"}\n\n{"text": "b"}\n')
  assert precompute.read_captions(str(src), "text") == ["a", "b"]
  with pytest.raises(KeyError, match="no field 'caption'"):
    precompute.read_captions(str(src), "caption")
  assert precompute.resolve_settings(cache_dir="/c") == ("byt5-tiny-random", None, "/c")
  text_cfg = ml_collections.ConfigDict({"encoder": "t5", "max_length": 64, "cache_dir": "/cfg"})
  assert precompute.resolve_settings(text_cfg, max_length=8) == ("t5", 8, "/cfg")
  assert precompute.resolve_settings(text_cfg, encoder="e", cache_dir="/x") == ("e", 64, "/x")
  with pytest.raises(ValueError, match="--cache_dir"):
    precompute.resolve_settings()
