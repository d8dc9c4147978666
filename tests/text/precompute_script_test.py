"""scripts/precompute_text_embeddings.py end to end (subprocess, tiny encoder)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from imagen_jax import text

_REPO = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = _REPO / "scripts" / "precompute_text_embeddings.py"


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, str(_SCRIPT), *args], cwd=_REPO,
                       env=env, check=True, capture_output=True, text=True)
  return out.stdout


def test_precompute_fills_cache_and_rerun_skips(tmp_path):
  captions = ["a red circle", "a blue square", "", "a red circle",
              "three green triangles"]
  src = tmp_path / "captions.jsonl"
  src.write_text("\n".join(json.dumps({"caption": c}) for c in captions))
  cache_dir = tmp_path / "cache"
  out = _run(f"--captions={src}", f"--cache_dir={cache_dir}", "--batch_size=3",
             "--write_every=2")
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
