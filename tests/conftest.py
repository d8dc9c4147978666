"""Test set-up: 8 virtual CPU devices, set before JAX is imported anywhere, and one JAX
persistent compilation cache for the session.

Many tests build the same tiny stage again (a new jitted function each time, so JAX's
in-memory cache misses) and several run scripts in subprocesses; an XLA executable
compiled once is then reused from a fresh directory that lives as long as the session
(the environment variable reaches the subprocesses too). Set JAX_COMPILATION_CACHE_DIR to
use another directory, or to an empty string to compile everything afresh.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="imagen_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE


def pytest_unconfigure(config):  # noqa: ARG001 (pytest hook signature)
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# -- A real GCS API server (fake-gcs-server) for gs:// tests -----------------------------------
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """One fake-gcs-server for the session (filesystem backend under a temp dir)."""
  from imagen_jax.storage import emulator  # pylint: disable=import-outside-toplevel

  server = emulator.GcsEmulator(tmp_path_factory.mktemp("gcs") / "root").start()
  yield server
  server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch):
  """A fresh bucket, `gs://<name>`; the standard emulator variables are set in os.environ
  (so subprocesses get them too) for the test's duration."""
  for key, value in gcs_emulator.env.items():
    monkeypatch.setenv(key, value)
  return gcs_emulator.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
