"""Files that must not hang or blow up the input pipeline: FIFOs and sockets named like
images or captions, an image over the decoded-size limit, a read that never returns
(the zlib bomb and 16-bit PNGs themselves: tests/data/preprocess_test.py).

The cases that could hang run in a subprocess with a timeout, so a hang fails the test
instead of the test run."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

from imagen_jax.data import input_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]
_KW = dict(seed=0, process_index=0, process_count=1, devices_per_process=1)


def _run(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
  """`code` in a fresh interpreter; a hang past `timeout` fails the test."""
  try:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"hung for {timeout} s: {(e.stderr or b'')[-2000:]!r}")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def _captioned(path, text="a caption"):
  pathlib.Path(path).with_suffix(".txt").write_text(text)


def test_fifos_and_sockets_are_skipped_and_counted_not_opened(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  for name in ("a.png", "c.png"):
    Image.new("RGB", (12, 10), (200, 20, 20)).save(root / name)
    _captioned(root / name, f"good {name}")
  os.mkfifo(root / "b.png")  # nobody ever writes it: opening it blocks forever
  _captioned(root / "b.png", "fifo")
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  sock.bind(str(root / "s.png"))
  _captioned(root / "s.png", "socket")
  Image.new("RGB", (12, 10)).save(root / "d.png")
  os.mkfifo(root / "d.txt")  # a caption file that is a FIFO
  try:
    proc = _run(
        f"""
      from imagen_jax.data import input_pipeline
      it = input_pipeline.create_input_iterator(
          {{"dataset": "folder", "path": {str(root)!r}, "num_epochs": 1, "num_workers": 2}},
          global_batch_size=1, resolution=8, seed=0, process_index=0, process_count=1,
          devices_per_process=1)
      captions = sorted(str(b["caption"][0]) for b in it)
      print("RESULT", captions, it.num_skipped, it.get_state()["num_skipped"])
    """,
        timeout=60,
    )
  finally:
    sock.close()
  assert "RESULT ['good a.png', 'good c.png'] 3 3" in proc.stdout, proc.stdout
  assert "not a regular file" in proc.stderr, proc.stderr[-3000:]


def test_bomb_in_a_folder_is_skipped_and_counted(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  Image.new("RGB", (12, 10)).save(root / "a.png")
  _captioned(root / "a.png", "good")
  Image.new("L", (3000, 3000)).save(root / "bomb.png")  # 27 MB as RGB: over 16 MB
  _captioned(root / "bomb.png", "bomb")
  it = input_pipeline.create_input_iterator(
      {"dataset": "folder", "path": str(root), "num_epochs": 1, "max_decoded_mb": 16},
      global_batch_size=1,
      resolution=8,
      **_KW,
  )
  assert [str(b["caption"][0]) for b in it] == ["good"]
  assert it.num_skipped == 1


_STALLED_SOURCE = """
import signal, time
from imagen_jax.data import input_pipeline
from imagen_jax.data import preprocess

class Stalled:
  # Reads its records with a plain open(): a FIFO nobody writes stands in for a stalled
  # network file system (the folder sources refuse FIFOs; a stuck NFS read they cannot).
  name = "stalled"
  num_records = 4
  def read(self, index, rng):
    with open({fifo!r}, "rb") as f:
      f.read()
    raise AssertionError("unreachable")

stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # as the trainer does: a flag
it = input_pipeline.InputIterator(Stalled(), preprocess.StagePreprocess(8), batch_size=1,
                                  seed=0, num_workers=2, read_timeout_s={timeout})
t0 = time.monotonic()
try:
  next(it)
except input_pipeline.InputStalledError as e:
  print("STALLED", round(time.monotonic() - t0), e, flush=True)
it.close()
"""


def test_a_read_that_never_returns_is_reported_and_the_process_exits(tmp_path):
  fifo = tmp_path / "stuck"
  os.mkfifo(fifo)
  proc = subprocess.Popen(
      [sys.executable, "-c", _STALLED_SOURCE.format(fifo=str(fifo), timeout=2)],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  time.sleep(1)
  proc.send_signal(signal.SIGTERM)  # sets the flag only; the stuck read must still end
  try:
    out, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"the process did not exit: {out[-1000:]} {err[-2000:]}")
  assert proc.returncode == 0, err[-3000:]
  assert "STALLED" in out and "record" in out and "read_timeout_s=2" in out, out
  assert int(out.split("STALLED")[1].split()[0]) <= 10, out
