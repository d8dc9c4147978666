r"""Train / sampling / input throughput of one stage, optionally beside imagen-pytorch.

  python scripts/benchmark.py --config configs/base64.py:variant=tiny,data=shapes \
      --json /tmp/bench.json [--peer imagen-pytorch --peer_python .venv-peer/bin/python]

Ours (imagen_jax.train.benchmark): the trainer's jitted, sharded train step on the devices
present (median step time, img/s, TFLOP/s per device and MFU with FLOPs from XLA's cost
analysis as the trainer logs them, peak device memory where the backend reports it), sampling
img/s over --sample_steps steps without and with guidance, and the input pipeline's img/s.

The peer (`--peer imagen-pytorch`) runs first, in a separate process with --peer_python (an
environment from requirements-bench.txt), on the same job: hyperparameters translated by
imagen_jax.train.peer_spec, same batch, resolution, precision and optimizer, text embeddings
passed directly. The JSON holds both sides and the ratios ours / theirs (`ratio_*`).
BENCHMARKS.md records the figures and the commands that made them.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file (path[:arg]).",
                                          lock_config=True)
_JSON = flags.DEFINE_string("json", None, "Where to write the figures (JSON).")
_BATCH = flags.DEFINE_integer("batch", 0, "Global train batch (0: config.batch_size).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per figure (the median is reported).")
_INNER = flags.DEFINE_integer("inner", 5, "Train steps per timing.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 16, "Images per sampling call.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 32, "Sampler steps (ancestral DDPM).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 5.0, "Guidance weight of the guided run.")
_INPUT_SECONDS = flags.DEFINE_float("input_seconds", 5.0, "Input pipeline timing window.")
_ONLY = flags.DEFINE_list("only", ["train", "sample", "input"],
                          "Which of train, sample, input to measure on our side (empty: the "
                          "peer alone). The peer samples only if `sample` is here or this is "
                          "empty.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "Also trace --profile_steps train steps into this directory "
    "(jax.profiler, with a Perfetto trace) and print where their time goes.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Train steps traced by --profile.")
_PEER = flags.DEFINE_enum("peer", "none", ["none", "imagen-pytorch"], "Peer to run beside us.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", sys.executable,
                                   "Python of the peer's environment (requirements-bench.txt).")
_PEER_DEVICE = flags.DEFINE_string("peer_device", "auto", "auto | cpu | cuda")
_PEER_THREADS = flags.DEFINE_integer("peer_threads", 0, "torch CPU threads (0: torch default).")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout", 1800, "Seconds before the peer is stopped (figures it wrote are kept).")
flags.mark_flags_as_required(["config", "json"])

_PARTS = ("train", "sample", "input")
_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                            "benchmarks", "peer_imagen_pytorch.py")


def _run_peer(spec: dict) -> dict:
  """The peer's figures, or {"error": why} (a failed peer must not lose our figures).

  A peer stopped by --peer_timeout after it wrote its train figures keeps them, with the
  error beside them.
  """
  with tempfile.TemporaryDirectory() as tmp:
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "peer.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f, indent=2)
    cmd = [_PEER_PYTHON.value, os.path.normpath(_PEER_SCRIPT), "--spec", spec_path,
           "--out", out_path, "--device", _PEER_DEVICE.value,
           "--threads", str(_PEER_THREADS.value)]
    start = time.time()
    failure = None
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PEER_TIMEOUT.value,
                            check=False)
      if proc.returncode != 0:
        failure = {"error": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-4000:]}
    except subprocess.TimeoutExpired:
      failure = {"error": f"stopped by --peer_timeout={_PEER_TIMEOUT.value}s"}
    except OSError as e:
      failure = {"error": f"{type(e).__name__}: {e}"}
    if not os.path.exists(out_path):
      return {**(failure or {"error": "the peer wrote no figures"}), "command": cmd}
    with open(out_path) as f:
      result = json.load(f)
    result["wall_seconds"] = time.time() - start
    if failure:
      result.update(failure, command=cmd)
    return result


def _ratio(a, b):
  return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _ratios(ours: dict, peer: dict) -> dict:
  train, ptrain = ours.get("train", {}), peer
  sample, psample = ours.get("sample", {}), peer.get("sampling", {})
  out = {
      "ratio_train_img_per_s": _ratio(train.get("img_per_s"), ptrain.get("img_per_s")),
      "ratio_params": _ratio(train.get("params"), ptrain.get("params")),
      "ratio_flops_per_image": _ratio(train.get("flops_per_image"),
                                      ptrain.get("flops_per_image")),
  }
  for name in ("unguided", "guided"):
    out[f"ratio_sample_{name}_img_per_s"] = _ratio(sample.get(name, {}).get("img_per_s"),
                                                   psample.get(name, {}).get("img_per_s"))
  return out


def _fmt(value, spec="{:.3g}"):
  if value is None or value == "n/a":
    return "n/a"
  return spec.format(value) if isinstance(value, (int, float)) else str(value)


def _table(result: dict) -> str:
  ours, peer = result["ours"], result.get("peer") or {}
  t, s, i = ours.get("train", {}), ours.get("sample", {}), ours.get("input", {})
  ps = peer.get("sampling", {})
  rows = [
      ("params", t.get("params"), peer.get("params"), result.get("ratio_params")),
      ("train img/s", t.get("img_per_s"), peer.get("img_per_s"),
       result.get("ratio_train_img_per_s")),
      ("train step ms", t.get("step_seconds") and 1e3 * t["step_seconds"],
       peer.get("step_seconds") and 1e3 * peer["step_seconds"], None),
      ("GFLOP / image (train)", t.get("flops_per_image") and t["flops_per_image"] / 1e9,
       peer.get("flops_per_image") and peer["flops_per_image"] / 1e9,
       result.get("ratio_flops_per_image")),
      ("TFLOP/s per device", t.get("tflops_per_device"), None, None),
      ("MFU", t.get("mfu"), None, None),
      ("peak device MiB", t.get("peak_device_memory_bytes")
       and t["peak_device_memory_bytes"] / 2**20,
       peer.get("peak_device_memory_bytes") and peer["peak_device_memory_bytes"] / 2**20, None),
      ("sample img/s unguided", s.get("unguided", {}).get("img_per_s"),
       ps.get("unguided", {}).get("img_per_s"), result.get("ratio_sample_unguided_img_per_s")),
      ("sample img/s guided", s.get("guided", {}).get("img_per_s"),
       ps.get("guided", {}).get("img_per_s"), result.get("ratio_sample_guided_img_per_s")),
      ("guided / unguided step", s.get("guided_over_unguided_step"),
       ps.get("guided_over_unguided_step"), None),
      ("input pipeline img/s", i.get("img_per_s"), None, None),
      ("state init s (+compile)", t.get("init_seconds"), None, None),
      ("train step compile s", t.get("compile_seconds"), None, None),
  ]
  head = f"{'':24s} {'imagen_jax':>12s} {'imagen-pytorch':>15s} {'ours/theirs':>12s}"
  lines = [head] + [f"{n:24s} {_fmt(a):>12s} {_fmt(b):>15s} {_fmt(r, '{:.2f}x'):>12s}"
                    for n, a, b, r in rows]
  if i.get("img_per_s") and t.get("img_per_s"):
    lines.append(f"input pipeline / train step img/s: {i['img_per_s'] / t['img_per_s']:.1f}x")
  for side, res in (("ours", ours), ("peer", peer)):
    for key, val in res.items():
      if isinstance(val, dict) and "error" in val:
        lines.append(f"{side} {key}: {val['error']}")
  if "error" in peer:
    lines.append(f"peer: {peer['error']}\n{peer.get('stderr_tail', '')}")
  return "\n".join(lines)


def _write(result: dict, ours: dict, peer: dict | None) -> None:
  result["ours"] = ours
  if peer is not None:
    result["peer"] = peer
    result.update(_ratios(ours, peer))
  path = os.path.abspath(_JSON.value)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2, default=str)
  os.replace(path + ".tmp", path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = sorted(set(_ONLY.value) - set(_PARTS))
  if unknown:
    raise app.UsageError(f"--only {unknown}: expected some of {list(_PARTS)}")
  if _PROFILE.value:  # before any figure is measured, not after
    try:
      os.makedirs(_PROFILE.value, exist_ok=True)
    except OSError as e:
      raise app.UsageError(f"--profile {_PROFILE.value!r}: cannot create it ({e})") from e
    if not os.access(_PROFILE.value, os.W_OK):
      raise app.UsageError(f"--profile {_PROFILE.value!r}: not writable")
  config = _CONFIG.value
  batch = _BATCH.value or int(config.batch_size)
  result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(),
            "command": " ".join(sys.argv), "batch_size": batch}
  peer = None
  if _PEER.value != "none":  # first, before JAX takes the accelerator's memory
    from imagen_jax.train import peer_spec  # pylint: disable=import-outside-toplevel
    spec = peer_spec.spec(config, batch_size=batch, sample_batch_size=_SAMPLE_BATCH.value,
                          sample_steps=_SAMPLE_STEPS.value, guidance_scale=_GUIDANCE.value,
                          repeats=_REPEATS.value, inner=_INNER.value,
                          sample=not _ONLY.value or "sample" in _ONLY.value)
    print(f"running {_PEER.value} with {_PEER_PYTHON.value} ...", flush=True)
    peer = _run_peer(spec)
    peer["spec"] = spec
    _write(result, {}, peer)  # kept even if our side is stopped (a timeout) before a figure

  import jax  # pylint: disable=import-outside-toplevel
  result.update(xla_flags=os.environ.get("XLA_FLAGS", ""), jax=jax.__version__)
  if not _ONLY.value:  # the peer alone: leave the accelerator untouched by JAX
    _write(result, {}, peer)
    print(_table(result))
    print(f"wrote {_JSON.value}")
    return
  from imagen_jax.train import benchmark  # pylint: disable=import-outside-toplevel
  result.update(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                devices=jax.device_count())
  ours = {}
  jobs = {
      "train": lambda: benchmark.train_step(config, batch_size=batch, repeats=_REPEATS.value,
                                            inner=_INNER.value, profile_dir=_PROFILE.value,
                                            profile_steps=_PROFILE_STEPS.value),
      "sample": lambda: benchmark.sampling(config, batch_size=_SAMPLE_BATCH.value,
                                           num_steps=_SAMPLE_STEPS.value,
                                           guidance_scale=_GUIDANCE.value,
                                           repeats=max(1, _REPEATS.value // 2)),
      "input": lambda: benchmark.input_pipeline(config, batch_size=batch,
                                                seconds=_INPUT_SECONDS.value),
  }
  for name in _PARTS:
    if name not in _ONLY.value:
      continue
    print(f"measuring {name} ...", flush=True)
    try:
      ours[name] = jobs[name]()
    except Exception as e:  # pylint: disable=broad-except  # keep the other figures
      if name == "train":
        _write(result, ours, peer)
        raise
      ours[name] = {"error": f"{type(e).__name__}: {e}"}
    _write(result, ours, peer)  # after each part, so a run stopped later keeps these
  _write(result, ours, peer)
  print(f"{config.model.name}/{config.model.variant} batch {batch} on "
        f"{result['devices']} x {result['device_kind']} (jax {result['jax']})")
  print(_table(result))
  if "profile" in ours.get("train", {}):
    from imagen_jax.train import trace_summary  # pylint: disable=import-outside-toplevel
    print(f"profile of the train step ({_PROFILE.value}):")
    print(trace_summary.format_summary(ours["train"]["profile"]))
  print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
