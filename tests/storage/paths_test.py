"""imagen_jax.storage against a real GCS API server (fake-gcs-server), not a mock."""

import json
import subprocess
import sys

import pytest

from imagen_jax.storage import paths


def test_roundtrip_listing_and_local_copy(gcs_bucket, tmp_path):
  root = paths.path(f"{gcs_bucket}/enc")
  (root / "sub").mkdir(parents=True, exist_ok=True)
  (root / "config.json").write_text('{"d": 4}')
  (root / "sub" / "w.bin").write_bytes(b"\x00\x01" * 1000)
  copy = paths.local_copy(f"{gcs_bucket}/enc", cache_dir=tmp_path / "c")
  assert json.loads((copy / "config.json").read_text()) == {"d": 4}
  assert (copy / "sub" / "w.bin").read_bytes() == b"\x00\x01" * 1000
  # Unchanged remote: the same copy; changed size: copied again.
  mtime = (copy / "config.json").stat().st_mtime_ns
  assert paths.local_copy(f"{gcs_bucket}/enc", cache_dir=tmp_path / "c") == copy
  assert (copy / "config.json").stat().st_mtime_ns == mtime
  (root / "config.json").write_text('{"d": 8, "e": 1}')
  again = paths.local_copy(f"{gcs_bucket}/enc", cache_dir=tmp_path / "c")
  assert json.loads((again / "config.json").read_text()) == {"d": 8, "e": 1}
  one = paths.local_copy(f"{gcs_bucket}/enc/sub/w.bin", cache_dir=tmp_path / "c")
  assert one.is_file() and one.stat().st_size == 2000


def test_missing_remote_is_named(gcs_bucket, tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    paths.local_copy(f"{gcs_bucket}/nothing-here", cache_dir=tmp_path)


def test_local_paths_pass_through(tmp_path):
  assert paths.local_copy(tmp_path) == tmp_path
  assert not paths.is_remote(tmp_path) and paths.is_remote("gs://b/x")
  paths.write_atomic(tmp_path / "a" / "f.txt", "x")
  assert (tmp_path / "a" / "f.txt").read_text() == "x"
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]


def test_gcsfs_even_with_tensorflow_installed(gcs_bucket):
  """A fresh process with TensorFlow importable reaches the emulator through gcsfs: without
  `prefer_gcsfs`, etils picks tf.io.gfile, which ignores STORAGE_EMULATOR_HOST."""
  pytest.importorskip("tensorflow")
  code = (
      "from imagen_jax.storage import paths; p = paths.path(%r); "
      "p.write_text('ok'); print(p.read_text())" % f"{gcs_bucket}/probe.txt"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
  )
  assert out.stdout.strip() == "ok"


def test_same_size_new_content_is_copied_again(gcs_bucket, tmp_path):
  """Retrained weights keep their byte size: the object version, not the size, says so."""
  f = paths.path(f"{gcs_bucket}/w/model.bin")
  f.parent.mkdir(parents=True, exist_ok=True)
  f.write_bytes(b"A" * 64)
  first = paths.local_copy(f"{gcs_bucket}/w", cache_dir=tmp_path)
  assert (first / "model.bin").read_bytes() == b"A" * 64
  f.write_bytes(b"B" * 64)
  again = paths.local_copy(f"{gcs_bucket}/w", cache_dir=tmp_path)
  assert (again / "model.bin").read_bytes() == b"B" * 64


def test_concurrent_copies_on_one_host(gcs_bucket, tmp_path):
  """Processes of one host copying the same folder at once each get it whole (a lock)."""
  for i in range(4):
    paths.path(f"{gcs_bucket}/enc/part{i}.bin").write_bytes(bytes([i]) * 200_000)
  code = (
      "import sys; from imagen_jax.storage import paths; "
      "d = paths.local_copy(sys.argv[1], cache_dir=sys.argv[2]); "
      "print(sorted((p.name, p.stat().st_size) for p in d.iterdir()))"
  )
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", code, f"{gcs_bucket}/enc", str(tmp_path)],
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for _ in range(3)
  ]
  outs = [p.communicate(timeout=120) for p in procs]
  want = str(sorted((f"part{i}.bin", 200_000) for i in range(4)))
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.strip() == want
