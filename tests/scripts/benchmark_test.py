"""scripts/benchmark.py end to end on a tiny stage: the JSON contract (DESIGN.md), the peer
protocol (a stand-in peer whose figures are known, so the ratios can be checked exactly), and a
failing peer that must not lose our figures. The real imagen-pytorch side runs where an
environment with it is named by IMAGEN_JAX_PEER_PYTHON (requirements-bench.txt)."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = [
    "--config",
    "configs/shapes.py:stage=base",
    "--batch_size",
    "8",
    "--repeats",
    "1",
    "--inner",
    "1",
    "--sample_batch",
    "2",
    "--sample_steps",
    "2",
    "--input_seconds",
    "0.3",
]
# The same run under the deprecated name of --batch_size (users' scripts keep working).
TINY_OLD_BATCH_FLAG = [("--batch" if a == "--batch_size" else a) for a in TINY]

FAKE_PEER = """#!{python}
import json, sys
args = sys.argv[2:]  # argv[1] is the peer script
spec = json.load(open(args[args.index("--spec") + 1]))
assert spec["unet"]["dim"] == 32 and spec["batch_size"] == 8, spec
if "{mode}" == "fail":
    sys.exit("imagen-pytorch exploded")
json.dump({{"params": 1000, "img_per_s": 2.0, "step_seconds": 4.0, "flops_per_image": 1e9,
           "sampling": {{"unguided": {{"img_per_s": 0.5}}, "guided": {{"img_per_s": 0.25}},
                        "guided_over_unguided_step": 2.0}}}},
          open(args[args.index("--out") + 1], "w"))
if "{mode}" == "hang":  # its figures are written; then it never finishes
    import time
    time.sleep(300)
"""


def _fake_peer(tmp_path, fail=False, mode=None):
  mode = mode or ("fail" if fail else "ok")
  path = tmp_path / f"{mode}_peer"
  path.write_text(FAKE_PEER.format(python=sys.executable, mode=mode))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def _bench(args, tmp_path, env=None, tiny=TINY):
  out = tmp_path / "bench.json"
  env = {**os.environ, **(env or {})}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
  proc = subprocess.run(
      [sys.executable, str(ROOT / "scripts/benchmark.py"), *tiny, *args, "--json", str(out)],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=env,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


# Slow-marked to keep the default run under its 20-minute budget; .ci/run runs the
# benchmark tests' slow tier once.
@pytest.mark.slow
def test_ratios_against_a_peer_with_known_figures(tmp_path):
  result, stdout = _bench(
      ["--peer", "imagen-pytorch", "--peer_python", _fake_peer(tmp_path, fail=False)], tmp_path
  )
  ours = result["ours"]
  assert ours["train"]["img_per_s"] > 0 and ours["input"]["img_per_s"] > 0
  assert result["ratio_train_img_per_s"] == pytest.approx(ours["train"]["img_per_s"] / 2.0)
  assert result["ratio_params"] == pytest.approx(ours["train"]["params"] / 1000)
  assert result["ratio_flops_per_image"] == pytest.approx(ours["train"]["flops_per_image"] / 1e9)
  assert result["ratio_sample_guided_img_per_s"] == pytest.approx(
      ours["sample"]["guided"]["img_per_s"] / 0.25
  )
  assert result["peer"]["spec"]["unet"]["dim"] == 32  # shapes_base16/tiny's channels
  assert "train img/s" in stdout and "ours/theirs" in stdout


@pytest.mark.slow  # as above
def test_a_failing_peer_keeps_our_figures_and_the_profile(tmp_path):
  result, stdout = _bench(
      [
          "--only",
          "train",
          "--peer",
          "imagen-pytorch",
          "--peer_python",
          _fake_peer(tmp_path, fail=True),
          "--profile",
          str(tmp_path / "prof"),
          "--profile_steps",
          "1",
      ],
      tmp_path,
  )
  assert result["ours"]["train"]["img_per_s"] > 0
  profile = result["ours"]["train"]["profile"]
  assert profile["traced_seconds_per_step"] > 0
  assert "conv_general_dilated" in dict(profile["by_primitive"])
  assert "UNet/down_0" in dict(profile["by_scope"])
  assert "profile of the train step" in stdout and "by primitive:" in stdout
  assert "sample" not in result["ours"]
  assert result["peer"]["spec"]["sample"] is False  # the peer skips what we skip
  assert result["peer"]["error"] == "exit status 1"
  assert "imagen-pytorch exploded" in result["peer"]["stderr_tail"]
  assert result["ratio_train_img_per_s"] is None
  assert "imagen-pytorch exploded" in stdout


def test_peer_alone_leaves_the_devices_to_it(tmp_path):
  result, stdout = _bench(
      ["--only=", "--peer", "imagen-pytorch", "--peer_python", _fake_peer(tmp_path, fail=False)],
      tmp_path,
      tiny=TINY_OLD_BATCH_FLAG,
  )  # the fake peer checks the batch is 8
  assert result["batch_size"] == 8
  assert result["ours"] == {} and result["peer"]["img_per_s"] == 2.0
  assert "devices" not in result  # JAX never initialised a backend
  assert result["ratio_train_img_per_s"] is None and "train img/s" in stdout
  assert result["peer"]["spec"]["sample"] is True


def test_a_peer_stopped_by_its_timeout_keeps_the_figures_it_wrote(tmp_path):
  result, stdout = _bench(
      [
          "--only=",
          "--peer",
          "imagen-pytorch",
          "--peer_timeout",
          "5",
          "--peer_python",
          _fake_peer(tmp_path, mode="hang"),
      ],
      tmp_path,
  )
  assert result["peer"]["img_per_s"] == 2.0
  assert result["peer"]["error"] == "stopped by --peer_timeout=5s"
  assert "stopped by --peer_timeout=5s" in stdout


def test_bad_only_value_is_named(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          str(ROOT / "scripts/benchmark.py"),
          *TINY,
          "--only",
          "train,sampel",
          "--json",
          str(tmp_path / "x.json"),
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
  )
  assert proc.returncode != 0 and "sampel" in proc.stderr
  assert not (tmp_path / "x.json").exists()


def test_unusable_profile_dir_is_named_before_measuring(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = subprocess.run(
      [
          sys.executable,
          str(ROOT / "scripts/benchmark.py"),
          *TINY,
          "--profile",
          str(blocker / "prof"),
          "--json",
          str(tmp_path / "x.json"),
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
  )
  assert proc.returncode != 0 and str(blocker / "prof") in proc.stderr
  assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(
    not os.environ.get("IMAGEN_JAX_PEER_PYTHON"),
    reason="no imagen-pytorch environment: set IMAGEN_JAX_PEER_PYTHON to the "
    "python of one made from requirements-bench.txt",
)
def test_real_imagen_pytorch_peer(tmp_path):
  result, _ = _bench(
      [
          "--only",
          "train,sample",
          "--peer",
          "imagen-pytorch",
          "--peer_python",
          os.environ["IMAGEN_JAX_PEER_PYTHON"],
          "--peer_device",
          "cpu",
      ],
      tmp_path,
  )
  peer = result["peer"]
  assert "error" not in peer, peer
  assert peer["peer_version"] == "2.1.0" and peer["precision"] == "fp32"
  assert peer["img_per_s"] > 0 and peer["flops_per_image"] > 0 and peer["params"] > 0
  assert peer["sampling"]["guided"]["img_per_s"] > 0
  # Matched hyperparameters: FLOPs per image within a factor of 2 of ours.
  assert 0.5 < result["ratio_flops_per_image"] < 2.0
