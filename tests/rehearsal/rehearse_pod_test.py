"""scripts/rehearse_pod.py end to end (slow: ~5 minutes on 2 cores; .ci/run runs it once,
offline): every phase of the pod workflow passes against the GCS emulator, with two worker
processes, a SIGTERM mid-run and a resume from the saved step."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rehearsal_passes_every_phase(tmp_path):
  out = tmp_path / "rehearsal"
  proc = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "rehearse_pod.py"), f"--out={out}"],
      capture_output=True,
      text=True,
      timeout=1500,
      check=False,
  )
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
  result = json.loads((out / "rehearsal.json").read_text())
  phases = (
      "prepare_data",
      "text_cache",
      "train_base",
      "train_sr",
      "preempt_resume",
      "sample",
      "fid",
  )
  assert all(result["phases"][p]["ok"] for p in phases), result["phases"]
  assert result["storage"].startswith("gs://") and result["processes"] == 2
  assert result["resumed_from_step"] == result["phases"]["train_base"]["preempted_at_step"] > 0
  assert result["phases"]["train_base"]["exit_codes"] == [[0], [0]]
  assert result["fid"] >= 0
