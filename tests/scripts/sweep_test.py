"""scripts/sweep.py: run names, printed commands (parsed back), a 2-run local sweep, summary."""

import csv
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from imagen_jax.launch import sweep as sweep_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]

SWEEP = [sys.executable, str(ROOT / "scripts" / "sweep.py")]


def _run(args, **kw):
  return subprocess.run(
      SWEEP + args, capture_output=True, text=True, cwd=ROOT, timeout=kw.pop("timeout", 300), **kw
  )


def test_run_names_are_filesystem_safe_and_distinct():
  names = [
      sweep_lib.run_name(o)
      for o in (
          {"optim.lr": 3e-4, "input.cond_drop_prob": 0.1},
          {"optim.lr": 1e-4, "input.cond_drop_prob": 0.1},
          {"diffusion.aug_range": (0.0, 0.5), "diffusion.prediction": "v"},
          {"text.encoder": "/ckpt/t5 xxl", "model.overrides.dtype": "bfloat16"},
          {"a.lr": 1, "b.lr": 2},
          {},
      )
  ]
  assert names[0] == "lr=0.0003,cond_drop_prob=0.1"
  assert names[2] == "aug_range=0-0.5,prediction=v"
  assert names[4] == "a.lr=1,b.lr=2"  # ambiguous leaf names keep the full key
  assert names[5] == "default"
  assert len(set(names)) == len(names)
  for name in names:
    assert re.fullmatch(r"[A-Za-z0-9._=,+-]+", name), name
    assert "/" not in name and not name.startswith(".")
  long = sweep_lib.run_name({"text.encoder": "x" * 500})
  assert len(long) <= 100


def test_unknown_override_key_is_named(tmp_path):
  cfg = tmp_path / "bad.py"
  cfg.write_text(
      "import importlib.util\n"
      f"_s = importlib.util.spec_from_file_location('c', {str(ROOT / 'configs' / 'shapes.py')!r})\n"
      "_m = importlib.util.module_from_spec(_s); _s.loader.exec_module(_m)\n"
      "get_config = _m.get_config\n"
      "def sweep(add, arg=None):\n  add(**{'optim.lrr': 1e-3})\n"
  )
  with pytest.raises(KeyError, match="optim.lrr"):
    sweep_lib.expand(f"{cfg}:runlocal")


def _parse_train_flags(argv, monkeypatch):
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  values(argv)
  return holder.value, values.workdir


@pytest.mark.parametrize(
    "spec", ["configs/base64.py:variant=small", "configs/sr256.py:variant=tiny"]
)
def test_print_mode_2x2_gives_4_distinct_commands(spec, monkeypatch):
  out = _run(["--config", spec, "--workdir", "/tmp/sw eep", "--mode", "print"])
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4 and len(set(lines)) == 4
  argvs = [shlex.split(line) for line in lines]
  workdirs = [a[-1] for a in argvs]
  assert all(w.startswith("--workdir=/tmp/sw eep/") for w in workdirs)
  assert len(set(workdirs)) == 4
  _, runs = sweep_lib.expand(spec)
  for argv, run in zip(argvs, runs):
    assert argv[:3] == ["python", "scripts/train.py", f"--config={spec}"]
    # The printed flags give exactly the config the sweep validated.
    monkeypatch.chdir(ROOT)
    config, workdir = _parse_train_flags(argv[1:], monkeypatch)
    assert config.to_dict() == run["config"].to_dict()
    assert workdir == f"/tmp/sw eep/{run['name']}"


def test_tpu_mode_dry_run_prints_one_ssh_per_run():
  out = _run(
      [
          "--config",
          "configs/sr1024.py:variant=paper",
          "--workdir",
          "gs://b/sw",
          "--mode",
          "tpu",
          "--tpu",
          "pod",
          "--zone",
          "us-central2-b",
          "--dry_run",
      ]
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4
  for line in lines:
    argv = shlex.split(line)
    assert argv[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod",
        "--zone",
        "us-central2-b",
    ]
    assert "--worker=all" in argv
    remote = argv[argv.index("--command") + 1]
    assert "--config=configs/sr1024.py:variant=paper" in remote
    assert "--workdir=gs://b/sw/lr=" in remote


TWO_RUNS = """
import importlib.util
_spec = importlib.util.spec_from_file_location("shapes_cfg", {shapes!r})
_shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shapes)


def get_config(arg=None):
  c = _shapes.get_config(arg)
  c.checkpoint.every_steps = 3  # one save per run, at its last step
  return c

def sweep(add, arg=None):
  # Seeds, not learning rates: both runs then compile the same XLA programs, and the
  # second takes them from the session's compilation cache (tests/conftest.py).
  for seed in (1, 0):
    add(**{{"seed": seed}})

def metrics():
  return ["loss"]
"""


# Slow-marked (two trainings, ~2 min): .ci/run runs the slow tier of this file once.
@pytest.mark.slow
def test_local_sweep_trains_both_skips_finished_and_summarizes(tmp_path, monkeypatch):
  cfg = tmp_path / "two_runs.py"
  cfg.write_text(TWO_RUNS.format(shapes=str(ROOT / "configs" / "shapes.py")))
  workdir = tmp_path / "sweep"
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # faster compiles
  spec = f"{cfg}:stage=base,runlocal"
  out = _run(["--config", spec, "--workdir", str(workdir), "--mode", "local"], timeout=900)
  assert out.returncode == 0, out.stdout + out.stderr
  runs = sorted(p.name for p in workdir.iterdir() if p.is_dir())
  assert runs == ["seed=0", "seed=1"]
  for name in runs:
    final = json.loads((workdir / name / "final_metrics.json").read_text())
    assert final["step"] == 3 and final["loss"] > 0
    info = json.loads((workdir / name / "sweep_run.json").read_text())
    assert info["overrides"] == {"seed": int(name.split("=")[1])}
    assert (workdir / name / "checkpoints" / "3").is_dir()
    assert json.loads((workdir / name / "config.json").read_text())["seed"] == (
        info["overrides"]["seed"]
    )
  losses = {n: json.loads((workdir / n / "final_metrics.json").read_text())["loss"] for n in runs}
  assert losses["seed=0"] != losses["seed=1"]  # the override reached the run

  again = _run(["--config", spec, "--workdir", str(workdir), "--mode", "local"])
  assert again.returncode == 0
  assert again.stdout.count("finished already, skipped") == 2

  summary = _run(["--summarize", str(workdir)])
  assert summary.returncode == 0, summary.stderr
  lines = summary.stdout.splitlines()
  assert lines[0] == "Sorted by loss (ascending):"
  header = lines[1].split()
  assert header[:3] == ["run", "seed", "loss"]
  body = [line.split() for line in lines[3:5]]
  assert sorted(r[0] for r in body) == runs
  losses = [float(r[2]) for r in body]
  assert losses == sorted(losses)
  with open(workdir / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["run"] for r in rows) == runs and all(r["loss"] for r in rows)

  desc = _run(
      [
          "--summarize",
          str(workdir),
          "--sort_by",
          "grad_norm",
          "--order",
          "desc",
          "--csv",
          str(tmp_path / "g.csv"),
      ]
  )
  assert desc.returncode == 0 and "Sorted by grad_norm (descending)" in desc.stdout
  assert (tmp_path / "g.csv").is_file()


def test_summary_of_fabricated_runs(tmp_path):
  """The table and CSV from run directories alone (no training): sort order, unfinished runs."""
  from imagen_jax.launch import sweep_summary  # pylint: disable=import-outside-toplevel

  runs = {
      "lr=0.001": ({"optim.lr": 1e-3}, {"step": 3, "loss": 0.5, "accuracy": 0.9}),
      "lr=0.01": ({"optim.lr": 1e-2}, {"step": 3, "loss": 0.2, "accuracy": 0.7}),
      "lr=0.1": ({"optim.lr": 1e-1}, None),
  }
  for name, (overrides, final) in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "sweep_run.json").write_text(
        json.dumps({"overrides": overrides, "metrics": ["accuracy"]})
    )
    if final is not None:
      (tmp_path / name / "final_metrics.json").write_text(json.dumps(final))
  text = sweep_summary.summarize(str(tmp_path))
  lines = text.splitlines()
  assert lines[0].split() == ["run", "optim.lr", "accuracy", "step"]
  assert [line.split()[0] for line in lines[2:]] == ["lr=0.001", "lr=0.01", "lr=0.1"]
  assert "(unfinished)" in lines[4]
  out = _run(["--summarize", str(tmp_path), "--sort_by", "loss", "--csv", str(tmp_path / "s.csv")])
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("Sorted by loss (ascending):")
  assert [line.split()[0] for line in out.stdout.splitlines()[3:5]] == ["lr=0.01", "lr=0.001"]
  with open(tmp_path / "s.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["lr=0.01", "lr=0.001", "lr=0.1"]
  assert rows[2]["finished"] == "False" and rows[2]["loss"] == ""
