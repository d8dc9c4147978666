"""scripts/launch_tpu.py: the exact gcloud commands (dry run), the argv a fake `gcloud` on
PATH receives, and the remote command run for real by bash (quoting, per-worker logs)."""
import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, str(ROOT / "scripts" / "launch_tpu.py")]
sys.path.insert(0, str(ROOT / "scripts"))
import launch_tpu  # noqa: E402  pylint: disable=wrong-import-position

TPU = ["--tpu", "pod-1", "--zone", "us-central2-b"]
TRAIN = ["--config", "configs/base64.py:variant=paper", "--config.optim.lr=3e-4",
         "--config.text.encoder=/mnt/my t5", "--workdir", "gs://bucket/base64"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone", "us-central2-b"]


def _launch(args, env=None, cwd=None):
  return subprocess.run(LAUNCH + args, capture_output=True, text=True, env=env,
                        cwd=cwd or ROOT, timeout=60)


def test_dry_run_prints_every_command_exactly(tmp_path):
  out = _launch(["run", *TPU, "--create", "--accelerator_type", "v4-32", "--setup",
                 "--dry_run", *TRAIN])
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0] == ("gcloud compute tpus tpu-vm create pod-1 --zone us-central2-b "
                      "--accelerator-type v4-32 --version tpu-ubuntu2204-base")
  assert lines[1].startswith("tar -czf /tmp/imagen_jax_code.tar.gz --exclude=.git ")
  assert lines[1].endswith(f"-C {ROOT} .")
  assert lines[2] == ("gcloud compute tpus tpu-vm scp /tmp/imagen_jax_code.tar.gz "
                      "pod-1:imagen_jax_code.tar.gz --zone us-central2-b --worker=all")
  assert lines[3] == (
      "gcloud compute tpus tpu-vm ssh pod-1 --zone us-central2-b --worker=all --command "
      "'rm -rf imagen_jax && mkdir -p imagen_jax && tar -xzf imagen_jax_code.tar.gz "
      "-C imagen_jax'")
  install = shlex.split(lines[4])
  assert install[:9] == SSH + ["--worker=all"]
  assert "pip install -r requirements.txt 'jax[tpu]'" in install[-1]
  train = shlex.split(lines[5])
  assert train[:10] == SSH + ["--worker=all", "--command"] and len(train) == 11
  remote = train[10]
  assert ("python3 scripts/train.py --config=configs/base64.py:variant=paper "
          "--config.optim.lr=3e-4 '--config.text.encoder=/mnt/my t5' "
          "--workdir=gs://bucket/base64") in remote
  assert '"$HOME"/imagen_jax_logs/base64.$(hostname).log' in remote
  assert len(lines) == 6


@pytest.mark.parametrize("action,expected", [
    ("stop", "gcloud compute tpus tpu-vm stop pod-1 --zone us-central2-b --project proj"),
    ("delete", "gcloud compute tpus tpu-vm delete pod-1 --zone us-central2-b --project proj "
               "--quiet"),
])
def test_stop_and_delete(action, expected):
  out = _launch([action, *TPU, "--project", "proj", "--dry_run"])
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == expected


def test_create_versions_and_errors():
  t = launch_tpu.Target("p", "z")
  assert launch_tpu.create_cmd(t, "v5litepod-16")[-1] == "v2-alpha-tpuv5-lite"
  assert launch_tpu.create_cmd(t, "v5p-64", spot=True)[-2:] == ["v2-alpha-tpuv5", "--spot"]
  with pytest.raises(ValueError, match="--version"):
    launch_tpu.create_cmd(t, "v9-8")
  assert _launch(["run", *TPU, "--dry_run", "--config", "x.py"]).returncode != 0
  bad = _launch(["run", *TPU, "--dry_run", *TRAIN, "--confg.optim.lr=1"])
  assert bad.returncode != 0 and "--confg.optim.lr=1" in bad.stderr


def _fake_gcloud(tmp_path):
  """A `gcloud` that records its argv (one JSON list per line) and exits 0."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "gcloud_calls.jsonl"
  script = bin_dir / "gcloud"
  script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"with open({str(record)!r}, 'a') as f:\n"
                    "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "print('fake gcloud: worker output')\n")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, record


def test_fake_gcloud_receives_worker_all_zone_and_quoted_command(tmp_path):
  env, record = _fake_gcloud(tmp_path)
  out = _launch(["run", *TPU, "--job", "b64", "--log_dir", str(tmp_path / "logs"), *TRAIN],
                env=env, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  calls = [json.loads(line) for line in record.read_text().splitlines()]
  assert len(calls) == 1
  argv = calls[0]
  assert argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
  assert argv[4] == "pod-1"
  assert argv[argv.index("--zone") + 1] == "us-central2-b"
  assert "--worker=all" in argv
  remote = argv[argv.index("--command") + 1]
  assert shlex.quote("--config=configs/base64.py:variant=paper") in remote
  assert shlex.quote("--config.text.encoder=/mnt/my t5") in remote
  assert shlex.quote("--workdir=gs://bucket/base64") in remote
  # The launcher keeps a local copy of what the workers printed.
  assert "fake gcloud: worker output" in (tmp_path / "logs" / "b64.log").read_text()

  # The remote command, run by bash as a worker would: the train flags arrive intact,
  # the log is per worker (hostname), the pid file is written, and `kill` finds it.
  home = tmp_path / "home"
  (home / "imagen_jax" / "scripts").mkdir(parents=True)
  (home / "bin").mkdir()
  fake_python = home / "bin" / "python3"
  fake_python.write_text(f"#!{sys.executable}\nimport json, sys\n"
                         "print(json.dumps(sys.argv[1:]))\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
  worker_env = dict(os.environ, HOME=str(home), PATH=f"{home / 'bin'}{os.pathsep}"
                    f"{os.environ['PATH']}")
  subprocess.run(["bash", "-c", remote], check=True, env=worker_env, cwd=tmp_path,
                 timeout=60, capture_output=True)
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  log = home / "imagen_jax_logs" / f"b64.{host}.log"
  assert json.loads(log.read_text()) == [
      "scripts/train.py", "--config=configs/base64.py:variant=paper",
      "--config.optim.lr=3e-4", "--config.text.encoder=/mnt/my t5",
      "--workdir=gs://bucket/base64"]
  assert (home / "imagen_jax_logs" / "b64.pid").read_text().strip().isdigit()
  kill = launch_tpu.kill_cmd(launch_tpu.Target("pod-1", "z"), "b64")
  subprocess.run(["bash", "-c", kill[-1]], check=True, env=worker_env, cwd=tmp_path,
                 timeout=30)


def test_failed_gcloud_fails_the_launcher(tmp_path):
  env, _ = _fake_gcloud(tmp_path)
  (tmp_path / "bin" / "gcloud").write_text("#!/bin/sh\nexit 3\n")
  out = _launch(["delete", *TPU], env=env, cwd=tmp_path)
  assert out.returncode != 0 and "exit status 3" in out.stderr
