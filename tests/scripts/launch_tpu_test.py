"""scripts/launch_tpu.py and imagen_jax.launch: the exact gcloud commands (dry run), the argv a
fake `gcloud` on PATH receives, the remote commands run for real by bash (quoting, per-worker
logs, the venv's python), queued resources, ssh options and the GKE JobSet manifest."""

import dataclasses
import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import pytest
import yaml

from imagen_jax.launch import accelerators
from imagen_jax.launch import actions
from imagen_jax.launch import gke
from imagen_jax.launch import tpu_vm
from imagen_jax.launch import train_command

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, str(ROOT / "scripts" / "launch_tpu.py")]

TPU = ["--tpu", "pod-1", "--zone", "us-central2-b"]
TRAIN = [
    "--config",
    "configs/base64.py:variant=paper",
    "--config.optim.lr=3e-4",
    "--config.text.encoder=/mnt/my t5",
    "--workdir",
    "gs://bucket/base64",
]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone", "us-central2-b"]
HOSTILE = "gs://b/my run $(rm -rf ~) `id` \"dq\" 'sq' ; echo pwned"


def _launch(args, env=None, cwd=None):
  return subprocess.run(
      LAUNCH + args, capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=60
  )


def test_dry_run_prints_every_command_exactly():
  out = _launch(
      ["run", *TPU, "--create", "--accelerator_type", "v4-32", "--setup", "--dry_run", *TRAIN]
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0] == (
      "gcloud compute tpus tpu-vm create pod-1 --zone us-central2-b "
      "--accelerator-type v4-32 --version tpu-ubuntu2204-base"
  )
  assert lines[1].startswith("tar -czf /tmp/imagen_jax_code.tar.gz --exclude=.git ")
  assert lines[1].endswith(f"-C {ROOT} .")
  assert lines[2] == (
      "gcloud compute tpus tpu-vm scp /tmp/imagen_jax_code.tar.gz "
      "pod-1:imagen_jax_code.tar.gz --zone us-central2-b --worker=all"
  )
  assert lines[3] == (
      "gcloud compute tpus tpu-vm ssh pod-1 --zone us-central2-b --worker=all --command "
      '\'mkdir -p "$HOME"/imagen_jax && find "$HOME"/imagen_jax -mindepth 1 -maxdepth 1 '
      '! -name .venv -exec rm -rf {} + && tar -xzf "$HOME"/imagen_jax_code.tar.gz '
      '-C "$HOME"/imagen_jax\''
  )
  install = shlex.split(lines[4])
  assert install[:10] == SSH + ["--worker=all", "--command"] and len(install) == 11
  assert (
      "python3 -m venv .venv && .venv/bin/python -m pip install -U pip && "
      ".venv/bin/python -m pip install -r requirements.txt -e . 'jax[tpu]' -f "
      f"{tpu_vm.LIBTPU_RELEASES}"
  ) in install[10]
  train = shlex.split(lines[5])
  assert train[:10] == SSH + ["--worker=all", "--command"] and len(train) == 11
  remote = train[10]
  assert (
      "nohup env IMAGEN_JAX_DISTRIBUTED=1 .venv/bin/python scripts/train.py "
      "--config=configs/base64.py:variant=paper --config.optim.lr=3e-4 "
      "'--config.text.encoder=/mnt/my t5' --workdir=gs://bucket/base64 >>"
  ) in remote
  assert '"$HOME"/imagen_jax_logs/base64."${TPU_WORKER_ID:-$(hostname)}".log' in remote
  assert len(lines) == 6


@pytest.mark.parametrize(
    "args,expected",
    [
        (["stop"], "gcloud compute tpus tpu-vm stop pod-1 --zone us-central2-b --project proj"),
        (
            ["delete"],
            "gcloud compute tpus tpu-vm delete pod-1 --zone us-central2-b --project proj "
            "--quiet",
        ),
        (
            ["delete", "--queued_resource", "qr-1"],
            "gcloud compute tpus queued-resources delete qr-1 --zone us-central2-b --project proj "
            "--quiet --force",
        ),
    ],
)
def test_stop_and_delete(args, expected):
  out = _launch([*args, *TPU, "--project", "proj", "--dry_run"])
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == expected


def test_create_versions_and_errors():
  t = tpu_vm.Target("p", "z")
  assert tpu_vm.create_cmd(t, "v5litepod-16")[-1] == "v2-alpha-tpuv5-lite"
  assert tpu_vm.create_cmd(t, "v5p-64", spot=True)[-2:] == ["v2-alpha-tpuv5", "--spot"]
  assert tpu_vm.create_cmd(t, "v6e-8")[-1] == "v2-alpha-tpuv6e"
  with pytest.raises(ValueError, match=r"'v9-8'.*--version"):
    tpu_vm.create_cmd(t, "v9-8")
  missing = _launch(["run", *TPU, "--dry_run", "--config", "x.py"])
  assert missing.returncode != 0 and "--workdir" in missing.stderr
  typo = _launch(["run", *TPU, "--dry_run", *TRAIN, "--confg.optim.lr=1"])
  assert typo.returncode != 0 and "confg.optim.lr" in typo.stderr
  bare = _launch(["run", *TPU, "--dry_run", *TRAIN, "--config.optim.lr"])
  assert bare.returncode != 0 and "--config.optim.lr" in bare.stderr
  assert "first argument is the action" in _launch([*TPU, "--dry_run"]).stderr
  assert (
      "--best_effort needs --queued_resource"
      in _launch(
          ["create", *TPU, "--accelerator_type", "v4-8", "--best_effort", "--dry_run"]
      ).stderr
  )


def test_queued_resource_create_waits_until_active():
  out = _launch(
      [
          "create",
          *TPU,
          "--accelerator_type",
          "v5p-64",
          "--queued_resource",
          "qr-1",
          "--best_effort",
          "--dry_run",
      ]
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines() == [
      "gcloud compute tpus queued-resources create qr-1 --zone us-central2-b --node-id pod-1 "
      "--accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5 --best-effort",
      "gcloud compute tpus queued-resources describe qr-1 --zone us-central2-b "
      "'--format=value(state.state)'",
  ]


def test_wait_active_polls_and_fails_clearly():
  def fake_run(states):
    it = iter(states)
    return lambda cmd, **kw: types.SimpleNamespace(returncode=0, stdout=next(it) + "\n", stderr="")

  step = tpu_vm.WaitActive(tpu_vm.Target("pod-1", "z"), "qr-1", timeout_s=0, poll_s=5)
  sleeps = []
  tpu_vm.wait_active(
      step, run=fake_run(["ACCEPTED", "WAITING_FOR_RESOURCES", "ACTIVE"]), sleep=sleeps.append
  )
  assert sleeps == [5, 5]
  with pytest.raises(tpu_vm.LaunchError, match="'qr-1' is FAILED"):
    tpu_vm.wait_active(step, run=fake_run(["PROVISIONING", "FAILED"]), sleep=lambda s: None)
  clock = iter([0.0, 10.0, 20.0])
  with pytest.raises(tpu_vm.LaunchError, match="still WAITING_FOR_RESOURCES after 15 s"):
    tpu_vm.wait_active(
        tpu_vm.WaitActive(step.target, "qr-1", timeout_s=15, poll_s=1),
        run=fake_run(["WAITING_FOR_RESOURCES"] * 3),
        sleep=lambda s: None,
        clock=lambda: next(clock),
    )


def test_ssh_options_on_every_ssh_and_scp():
  out = _launch(
      ["run", *TPU, "--setup", "--internal_ip", "--tunnel_through_iap", "--dry_run", *TRAIN]
  )
  assert out.returncode == 0, out.stderr
  gcloud = [shlex.split(l) for l in out.stdout.splitlines() if l.startswith("gcloud")]
  assert [c[4] for c in gcloud] == ["scp", "ssh", "ssh", "ssh"]
  for argv in gcloud:
    assert "--internal-ip" in argv and "--tunnel-through-iap" in argv
  logs = tpu_vm.logs_cmd(tpu_vm.Target("p", "z", internal_ip=True), "j", "out")
  assert logs[4] == "scp" and "--internal-ip" in logs and "--tunnel-through-iap" not in logs


def _fake_gcloud(tmp_path, body="print('fake gcloud: worker output')\n"):
  """A `gcloud` that records its argv (one JSON list per line), then runs `body`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  record = tmp_path / "gcloud_calls.jsonl"
  script = bin_dir / "gcloud"
  script.write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"with open({str(record)!r}, 'a') as f:\n"
      "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n" + body
  )
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, record


def _calls(record):
  return [json.loads(line) for line in record.read_text().splitlines()]


def test_queued_resource_wait_runs_against_a_fake_gcloud(tmp_path):
  states = tmp_path / "states"
  states.write_text("WAITING_FOR_RESOURCES\nPROVISIONING\nACTIVE\n")
  env, record = _fake_gcloud(
      tmp_path,
      (
          "if 'describe' in sys.argv:\n"
          f"  lines = open({str(states)!r}).read().split()\n"
          f"  open({str(states)!r}, 'w').write('\\n'.join(lines[1:]))\n"
          "  print(lines[0])\n"
      ),
  )
  out = _launch(
      [
          "create",
          *TPU,
          "--accelerator_type",
          "v4-8",
          "--queued_resource",
          "qr-1",
          "--spot",
          "--poll_seconds",
          "0",
      ],
      env=env,
      cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr
  calls = _calls(record)
  assert calls[0][:5] == ["compute", "tpus", "queued-resources", "create", "qr-1"]
  assert calls[0][-1] == "--spot"
  assert [c[3] for c in calls[1:]] == ["describe"] * 3
  assert "qr-1: PROVISIONING" in out.stderr and "qr-1: ACTIVE" in out.stderr
  states.write_text("FAILED\n")
  failed = _launch(["wait", *TPU, "--queued_resource", "qr-1"], env=env, cwd=tmp_path)
  assert failed.returncode != 0 and "'qr-1' is FAILED" in failed.stderr


def _worker_home(tmp_path, name="home"):
  """A worker's home with the checkout and a venv python that prints its argv as JSON."""
  home = tmp_path / name
  venv_bin = home / "imagen_jax" / ".venv" / "bin"
  (home / "imagen_jax" / "scripts").mkdir(parents=True)
  venv_bin.mkdir(parents=True)
  python = venv_bin / "python"
  python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  python.chmod(python.stat().st_mode | stat.S_IEXEC)
  return home


def _as_worker(remote, home, cwd, **env):
  """Runs a remote command as the stand-in gcloud would: bash, HOME and cwd the worker's."""
  return subprocess.run(
      ["bash", "-c", remote],
      env=dict(os.environ, HOME=str(home), **env),
      cwd=cwd,
      timeout=60,
      capture_output=True,
      text=True,
  )


def test_fake_gcloud_receives_worker_all_zone_and_quoted_command(tmp_path):
  env, record = _fake_gcloud(tmp_path)
  out = _launch(
      ["run", *TPU, "--job", "b64", "--local_log_dir", str(tmp_path / "logs"), *TRAIN],
      env=env,
      cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr
  calls = _calls(record)
  assert len(calls) == 1
  argv = calls[0]
  assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod-1"]
  assert argv[argv.index("--zone") + 1] == "us-central2-b"
  assert "--worker=all" in argv
  remote = argv[argv.index("--command") + 1]
  assert shlex.quote("--config.text.encoder=/mnt/my t5") in remote
  # The launcher keeps a local copy of what the workers printed.
  assert "fake gcloud: worker output" in (tmp_path / "logs" / "b64.log").read_text()

  # The remote command, run by bash as worker 3 would be: the venv's python gets the train
  # flags intact, the log is per worker, the pid file is written, and `kill` finds it.
  home = _worker_home(tmp_path)
  ran = _as_worker(remote, home, tmp_path, TPU_WORKER_ID="3")
  assert ran.returncode == 0, ran.stderr
  log = home / "imagen_jax_logs" / "b64.3.log"
  start, printed = log.read_text().splitlines()
  assert start == "==== imagen_jax launch: job b64 starts ===="
  assert json.loads(printed) == [
      "scripts/train.py",
      "--config=configs/base64.py:variant=paper",
      "--config.optim.lr=3e-4",
      "--config.text.encoder=/mnt/my t5",
      "--workdir=gs://bucket/base64",
  ]
  assert (home / "imagen_jax_logs" / "b64.pid").read_text().strip().isdigit()
  # A relaunch (after a preemption) appends: the first run's log stays, and what the
  # launcher follows (`tail`) is the new run's lines only.
  again = _as_worker(
      remote.replace("&& tail", "&& echo FROM=$from && tail"), home, tmp_path, TPU_WORKER_ID="3"
  )
  lines = log.read_text().splitlines()
  assert len(lines) == 4 and lines[:2] == [start, printed] and lines[2] == start
  assert "FROM=3" in again.stdout and again.stdout.count("scripts/train.py") == 1
  kill = tpu_vm.kill_cmd(tpu_vm.Target("pod-1", "z"), "b64")
  assert _as_worker(kill[-1], home, tmp_path).returncode == 0
  # Without TPU_WORKER_ID (a real TPU VM's shell), the log is named after the host.
  env_no_id = {k: v for k, v in os.environ.items() if k != "TPU_WORKER_ID"}
  subprocess.run(
      ["bash", "-c", remote],
      env=dict(env_no_id, HOME=str(home)),
      cwd=tmp_path,
      timeout=60,
      check=True,
      capture_output=True,
  )
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  assert (home / "imagen_jax_logs" / f"b64.{host}.log").is_file()


def test_copy_replaces_the_code_and_keeps_the_workers_venv(tmp_path):
  repo = tmp_path / "repo"
  (repo / "scripts").mkdir(parents=True)
  (repo / "scripts" / "train.py").write_text("new\n")
  (repo / ".venv").mkdir()  # the local venv stays here
  home = _worker_home(tmp_path)
  (home / "imagen_jax" / "stale.py").write_text("old\n")
  pack, scp, unpack = tpu_vm.copy_cmds(
      tpu_vm.Target("p", "z"), repo, tarball=str(tmp_path / "code.tar.gz")
  )
  subprocess.run(pack, check=True, timeout=60)
  assert scp[5:7] == [str(tmp_path / "code.tar.gz"), f"p:{tpu_vm.TARBALL}"]
  (home / tpu_vm.TARBALL).write_bytes((tmp_path / "code.tar.gz").read_bytes())  # the scp
  ran = _as_worker(unpack[-1], home, tmp_path)
  assert ran.returncode == 0, ran.stderr
  code = home / "imagen_jax"
  assert (code / "scripts" / "train.py").read_text() == "new\n"
  assert not (code / "stale.py").exists()
  assert (code / ".venv" / "bin" / "python").is_file()


def test_hostile_arguments_survive_every_remote_command(tmp_path):
  target = tpu_vm.Target("pod-1", "z")
  flags = train_command.train_flags(
      "configs/x.py:a=1",
      HOSTILE,
      [f"--config.text.encoder={HOSTILE}"],
      ["--num_processes=2", "--coordinator_address=127.0.0.1:1"],
  )
  env = [f"MY_VAR={HOSTILE}"]
  # A hostile job name is refused (it names remote files); every other value is quoted.
  with pytest.raises(ValueError, match="a job name is"):
    tpu_vm.train_cmd(target, flags, job="job $(touch pwned) 'q'", env=env)
  job = "job-1.seed=2"
  home = _worker_home(tmp_path)
  for worker in ("0", "1"):
    run = tpu_vm.train_cmd(
        target, flags, job=job, env=env, detach=True, process_id_env="TPU_WORKER_ID"
    )
    ran = _as_worker(run[-1], home, tmp_path, TPU_WORKER_ID=worker)
    assert ran.returncode == 0, ran.stderr
  for worker in ("0", "1"):
    log = home / "imagen_jax_logs" / f"{job}.{worker}.log"
    for _ in range(100):  # the job is detached: wait for its output below the start line
      if log.is_file() and len(log.read_text().splitlines()) >= 2:
        break
      subprocess.run(["sleep", "0.05"], check=True)
    assert json.loads(log.read_text().splitlines()[-1]) == [
        "scripts/train.py",
        *flags,
        f"--process_id={worker}",
    ]
  assert not (tmp_path / "pwned").exists() and not (home / "pwned").exists()
  kill = tpu_vm.kill_cmd(target, job)
  assert _as_worker(kill[-1], home, tmp_path).returncode == 0
  # Every remote command splits back into words that hold the hostile values whole.
  hostile_python = f"/opt/{HOSTILE}/python3"
  remotes = [
      tpu_vm.install_cmd(target, hostile_python, HOSTILE)[-1],
      tpu_vm.copy_cmds(target, f"/src/{HOSTILE}")[2][-1],
      tpu_vm.train_cmd(target, flags, job=job, env=env)[-1],
      kill[-1],
  ]
  for remote in remotes:
    shlex.split(remote)  # well-formed quoting
  assert hostile_python in shlex.split(remotes[0]) and HOSTILE in shlex.split(remotes[0])
  train_words = shlex.split(remotes[2])
  assert all(f in train_words for f in flags) and env[0] in train_words
  assert tpu_vm.copy_cmds(target, f"/src/{HOSTILE}")[0][-2] == f"/src/{HOSTILE}"
  with pytest.raises(ValueError, match="not a shell variable"):
    tpu_vm.train_cmd(target, flags, job="j", process_id_env="A; rm")
  with pytest.raises(ValueError, match="KEY=VALUE"):
    train_command.train_argv(flags, env=["not an assignment"])
  # A worker without the variable fails loudly rather than running as process 0.
  missing = tpu_vm.train_cmd(target, flags, job="j2", detach=True, process_id_env="NO_SUCH")
  ran = _as_worker(missing[-1], home, tmp_path)  # bash reports it before any redirection
  assert "NO_SUCH" in ran.stderr
  assert list((home / "imagen_jax_logs").glob("j2.*.log"))[0].read_text().splitlines() == [
      "==== imagen_jax launch: job j2 starts ===="
  ]  # the start line only: nothing ran


def test_train_flags_pass_through(tmp_path):
  out = _launch(
      [
          "run",
          *TPU,
          "--dry_run",
          "--detach",
          *TRAIN,
          "--train_flag=--num_processes=2",
          "--train_flag=--coordinator_address=10.0.0.2:1234",
          "--process_id_env=TPU_WORKER_ID",
          "--env",
          "XLA_FLAGS=--xla_dump_to=/tmp/d",
      ]
  )
  assert out.returncode == 0, out.stderr
  remote = shlex.split(out.stdout.strip())[-1]
  assert (
      "env IMAGEN_JAX_DISTRIBUTED=1 XLA_FLAGS=--xla_dump_to=/tmp/d .venv/bin/python "
      "scripts/train.py"
  ) in remote
  assert (
      "--workdir=gs://bucket/base64 --num_processes=2 "
      '--coordinator_address=10.0.0.2:1234 --process_id="${TPU_WORKER_ID:?}"'
  ) in remote
  bad = _launch(["run", *TPU, "--dry_run", *TRAIN, "--train_flag=num_processes=2"])
  assert bad.returncode != 0 and "'num_processes=2'" in bad.stderr


def test_failed_gcloud_fails_the_launcher(tmp_path):
  env, _ = _fake_gcloud(tmp_path)
  (tmp_path / "bin" / "gcloud").write_text("#!/bin/sh\nexit 3\n")
  out = _launch(["delete", *TPU], env=env, cwd=tmp_path)
  assert out.returncode != 0 and "exit status 3" in out.stderr


def test_distributed_env_matches_multihost():
  from imagen_jax.parallel import multihost  # pylint: disable=import-outside-toplevel

  assert train_command.DISTRIBUTED_ENV == multihost.DISTRIBUTED_ENV


# ------------------------------------------------------------------ accelerators, GKE
@pytest.mark.parametrize(
    "accel,topology,chips,hosts,per_host,label",
    [
        ("v4-8", "2x2x1", 4, 1, 4, "tpu-v4-podslice"),
        ("v4-32", "2x2x4", 16, 4, 4, "tpu-v4-podslice"),
        ("v5p-32", "2x2x4", 16, 4, 4, "tpu-v5p-slice"),
        ("v5p-256", "4x4x8", 128, 32, 4, "tpu-v5p-slice"),
        ("v5litepod-8", "2x4", 8, 1, 8, "tpu-v5-lite-podslice"),
        ("v5e-16", "4x4", 16, 4, 4, "tpu-v5-lite-podslice"),
        ("v6e-1", "1x1", 1, 1, 1, "tpu-v6e-slice"),
        ("v6e-256", "16x16", 256, 64, 4, "tpu-v6e-slice"),
    ],
)
def test_slice_shapes(accel, topology, chips, hosts, per_host, label):
  shape = accelerators.slice_shape(accel)
  assert (
      shape.topology,
      shape.chips,
      shape.hosts,
      shape.chips_per_host,
      shape.gke_accelerator,
  ) == (topology, chips, hosts, per_host, label)


def test_slice_shape_errors_name_the_bad_value():
  with pytest.raises(ValueError, match="'v7x-8'"):
    accelerators.slice_shape("v7x-8")
  with pytest.raises(ValueError, match="'tpu-v4'"):
    accelerators.slice_shape("tpu-v4")
  with pytest.raises(ValueError, match="'v4-9'.*TensorCores"):
    accelerators.slice_shape("v4-9")
  with pytest.raises(ValueError, match="No default GKE topology for 'v4-24'"):
    accelerators.slice_shape("v4-24")
  assert accelerators.slice_shape("v4-24", "2x2x3").hosts == 3
  with pytest.raises(ValueError, match="'2x4x1' has 8 chips; 'v5p-32' has 16"):
    accelerators.slice_shape("v5p-32", "2x4x1")  # dims fine, chips not
  with pytest.raises(ValueError, match="'4x4' for 'v5p-32' must be 3"):
    accelerators.slice_shape("v5p-32", "4x4")


def test_gke_manifest_fields(tmp_path):
  out_file = tmp_path / "jobset.yaml"
  out = _launch(
      [
          "manifest",
          "--accelerator_type",
          "v5p-32",
          "--num_slices",
          "2",
          "--image",
          "us-docker.pkg.dev/p/imagen/train:1",
          *TRAIN,
          "--train_flag=--config.optim.lr=1e-4",
          "--env",
          "FOO=bar baz",
          "--manifest_out",
          str(out_file),
      ]
  )
  assert out.returncode == 0, out.stderr
  m = yaml.safe_load(out_file.read_text())
  assert m["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and m["kind"] == "JobSet"
  name = m["metadata"]["name"]
  assert name == "base64"
  assert (
      m["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"]
      == "cloud.google.com/gke-nodepool"
  )
  assert m["spec"]["network"]["enableDNSHostnames"] is True
  assert m["spec"]["failurePolicy"]["maxRestarts"] == 3
  (rjob,) = m["spec"]["replicatedJobs"]
  assert rjob["replicas"] == 2
  job = rjob["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 4
  assert job["backoffLimit"] == 0 and job["completionMode"] == "Indexed"
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {
      "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
      "cloud.google.com/gke-tpu-topology": "2x2x4",
  }
  assert pod["restartPolicy"] == "Never"
  (container,) = pod["containers"]
  assert container["image"] == "us-docker.pkg.dev/p/imagen/train:1"
  assert container["resources"]["limits"] == {"google.com/tpu": 4}
  assert container["workingDir"] == "/imagen_jax"
  # The same train command as a TPU VM worker's, with the image's python.
  flags = train_command.train_flags(
      "configs/base64.py:variant=paper",
      "gs://bucket/base64",
      ["--config.optim.lr=3e-4", "--config.text.encoder=/mnt/my t5"],
      ["--config.optim.lr=1e-4"],
  )
  assert container["command"] == train_command.train_argv(flags, env=["FOO=bar baz"])
  vm_remote = tpu_vm.train_cmd(tpu_vm.Target("p", "z"), flags, job="j", env=["FOO=bar baz"])[-1]
  script = container["command"].index("scripts/train.py")
  assert container["command"][script - 1] == "python3"
  assert shlex.join(container["command"][script:]) in vm_remote
  env = {e["name"]: e for e in container["env"]}
  assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == f"{name}-slice-0-0.{name}"
  assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
  assert (
      env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
      == "metadata.annotations['jobset.sigs.k8s.io/job-index']"
  )


def test_gke_single_slice_and_errors():
  m = gke.jobset(name="b64", image="img", accelerator_type="v6e-16", command=["true"])
  job = m["spec"]["replicatedJobs"][0]["template"]["spec"]
  container = job["template"]["spec"]["containers"][0]
  assert m["spec"]["replicatedJobs"][0]["replicas"] == 1 and job["parallelism"] == 4
  assert "env" not in container  # one slice: GKE's TPU_WORKER_* variables suffice
  assert yaml.safe_load(gke.to_yaml(m)) == m
  with pytest.raises(ValueError, match="'Base_64'"):
    gke.jobset(name="Base_64", image="img", accelerator_type="v6e-16", command=["true"])
  with pytest.raises(ValueError, match="'v9-16'"):
    gke.jobset(name="b", image="img", accelerator_type="v9-16", command=["true"])
  with pytest.raises(ValueError, match="too long"):
    gke.jobset(name="b" * 60, image="img", accelerator_type="v6e-16", command=["true"])
  assert gke.jobset_name("lr=0.0003,Cond_Drop") == "lr-0-0003-cond-drop"
  assert gke.jobset_name("3rd run") == "train-3rd-run"
  missing = _launch(["manifest", "--accelerator_type", "v5p-32", *TRAIN])
  assert missing.returncode != 0 and "--image" in missing.stderr


def test_options_are_the_scripts_flags():
  """launch_tpu.py reads actions.Options from its flags by name: one field per flag."""
  xml = subprocess.run(LAUNCH + ["--helpxml"], capture_output=True, text=True, timeout=60)
  names = {
      f.findtext("name")
      for f in ET.fromstring(xml.stdout).iter("flag")
      if f.findtext("file", "").endswith("launch_tpu.py")
  }
  assert names == {f.name for f in dataclasses.fields(actions.Options)}


def test_actions_without_the_command_line():
  opts = actions.Options(tpu="pod-1", zone="us-central2-b", project="proj")
  assert actions.steps("stop", [], opts) == [
      tpu_vm.stop_cmd(tpu_vm.Target("pod-1", "us-central2-b", "proj"))
  ]
  assert actions.split_args(["run", "--config.optim.lr=1"]) == ("run", ["--config.optim.lr=1"])
  with pytest.raises(actions.UsageError, match="first argument is the action"):
    actions.split_args([])
  with pytest.raises(actions.UsageError, match="only run and manifest"):
    actions.split_args(["stop", "--config.optim.lr=1"])
  with pytest.raises(actions.UsageError, match="--job NAME"):
    actions.steps("logs", [], opts)
  with pytest.raises(actions.UsageError, match="--tpu NAME and --zone ZONE"):
    actions.launch("stop", [], actions.Options(dry_run=True))


@pytest.mark.parametrize("job", ["a/b", "../up", "my job", "x$(id)", "-rf", "a'b"])
def test_job_names_are_checked_before_any_command(job):
  for action in (["run", *TRAIN], ["logs"], ["kill"]):
    out = _launch([action[0], *TPU, "--job", job, "--dry_run", *action[1:]])
    assert out.returncode != 0, (action, out.stdout)
    assert f"--job={job!r}" in out.stderr, out.stderr[-2000:]
    assert "gcloud" not in out.stdout
  assert train_command.check_job_name("base64-v5p.run_2,seed=1") == "base64-v5p.run_2,seed=1"
