"""A process that cannot reach its coordinator says so, naming the address, within
`--connect_timeout_s` (JAX alone aborts after 300 s with a bare DEADLINE_EXCEEDED)."""

import pathlib
import socket
import subprocess
import sys
import time

import pytest

from imagen_jax.parallel import multihost

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unreachable_coordinator_is_named_within_the_timeout():
  address = f"127.0.0.1:{_free_port()}"
  start = time.monotonic()
  with pytest.raises(
      ConnectionError, match=f"Process 1: the coordinator {address} did not answer within 2 s"
  ):
    multihost.wait_for_coordinator(address, 2, process_id=1)
  assert 2 <= time.monotonic() - start < 10


def test_reachable_coordinator_returns_and_bad_address_is_named():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    multihost.wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", 5, process_id=3)
  with pytest.raises(ValueError, match="coordinator_address='nohost'"):
    multihost.wait_for_coordinator("nohost", 1, process_id=1)


def test_train_script_reports_it_and_exits():
  address = f"127.0.0.1:{_free_port()}"
  start = time.monotonic()
  proc = subprocess.run(
      [
          sys.executable,
          str(REPO / "scripts" / "train.py"),
          "--config",
          str(REPO / "configs" / "shapes.py") + ":stage=base,runlocal",
          "--workdir",
          "/tmp/never-written",
          "--coordinator_address",
          address,
          "--num_processes",
          "2",
          "--process_id",
          "1",
          "--connect_timeout_s",
          "3",
      ],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode != 0
  assert f"the coordinator {address} did not answer within 3 s" in proc.stderr
  assert time.monotonic() - start < 60
