"""The rehearsal's stand-in gcloud: one process per worker, each with its own home."""

import json
import os
import subprocess

from imagen_jax.rehearsal import gcloud_stand_in


def _gcloud(tmp_path, *args, workers=2):
  bin_dir = tmp_path / "bin"
  gcloud_stand_in.install(bin_dir)
  env = {
      **os.environ,
      "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
      gcloud_stand_in.ROOT_ENV: str(tmp_path / "workers"),
      gcloud_stand_in.COUNT_ENV: str(workers),
      gcloud_stand_in.WORKER_ENV: json.dumps({"MARK": "{home}/mark"}),
  }
  return subprocess.run(
      ["gcloud", *args], env=env, capture_output=True, text=True, timeout=60, check=False
  )


def test_ssh_runs_every_worker_in_its_own_home(tmp_path):
  out = _gcloud(
      tmp_path,
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "pod",
      "--zone",
      "z",
      "--worker=all",
      "--command",
      'echo "$TPU_WORKER_ID" > id && echo "$MARK" && pwd',
  )
  assert out.returncode == 0, out.stderr
  for i in range(2):
    home = gcloud_stand_in.worker_home(tmp_path / "workers", i)
    assert (home / "id").read_text().strip() == str(i)
    assert f"[worker {i}] {home}/mark" in out.stdout
  calls = (tmp_path / "workers" / "gcloud_calls.jsonl").read_text().splitlines()
  assert json.loads(calls[0])[:4] == ["compute", "tpus", "tpu-vm", "ssh"]


def test_a_failing_worker_fails_the_command_and_scp_copies_both_ways(tmp_path):
  out = _gcloud(
      tmp_path,
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "pod",
      "--worker=all",
      "--command",
      '[ "$TPU_WORKER_ID" = 0 ] || exit 3',
  )
  assert out.returncode == 3
  src = tmp_path / "code.tar.gz"
  src.write_bytes(b"tar")
  assert (
      _gcloud(
          tmp_path,
          "compute",
          "tpus",
          "tpu-vm",
          "scp",
          str(src),
          "pod:code.tar.gz",
          "--zone",
          "z",
          "--worker=all",
      ).returncode
      == 0
  )
  for i in range(2):
    home = gcloud_stand_in.worker_home(tmp_path / "workers", i)
    assert (home / "code.tar.gz").read_bytes() == b"tar"
    (home / "logs").mkdir(exist_ok=True)
    (home / "logs" / f"job.{i}.log").write_text(f"log {i}")
  assert (
      _gcloud(
          tmp_path,
          "compute",
          "tpus",
          "tpu-vm",
          "scp",
          "pod:logs/job.*.log",
          str(tmp_path / "back"),
          "--worker=all",
      ).returncode
      == 0
  )
  assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["job.0.log", "job.1.log"]
  bad = _gcloud(
      tmp_path, "compute", "tpus", "tpu-vm", "ssh", "pod", "--worker=5", "--command", "true"
  )
  assert bad.returncode != 0 and "--worker='5'" in bad.stderr
