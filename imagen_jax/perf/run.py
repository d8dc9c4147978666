"""One benchmark run of a stage (scripts/benchmark.py): the peer, then our parts, then the table.

The peer (imagen-pytorch) runs first, in a process of its own with its own Python, on the job
`peer_spec.spec` translates from the config, before JAX initialises a backend here (JAX
takes most of an accelerator's memory when it does). Then our parts (`PARTS`, measured by
`perf.benchmark`) run one after another. The JSON (`report.write`) is rewritten after the peer
and after each part, so a run stopped later keeps the figures it had; a failed sampling or
input part is kept as {"error": ...}, a failed train part is written and raised. The peer
alone (`only=()`) leaves the devices untouched by JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from typing import Any

from imagen_jax.perf import report

PARTS = ("train", "sample", "input")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to measure on our side, and where the JSON goes."""

  json_path: str
  batch_size: int = 0  # the global train batch; 0: config.batch_size
  repeats: int = 5  # timings per figure (the median is reported)
  inner: int = 5  # train steps per timing
  sample_batch: int = 16
  sample_steps: int = 32
  guidance_scale: float = 5.0
  input_seconds: float = 5.0
  only: tuple[str, ...] = PARTS  # empty: the peer alone
  profile_dir: str | None = None
  profile_steps: int = 3


@dataclasses.dataclass(frozen=True)
class Peer:
  """How to run the peer: its environment's Python and benchmarks/peer_imagen_pytorch.py."""

  python: str
  script: str
  name: str = "imagen-pytorch"
  device: str = "auto"  # auto | cpu | cuda
  threads: int = 0  # torch CPU threads (0: torch's default)
  timeout: int = 1800  # seconds before it is stopped (figures it wrote are kept)


def check_only(only) -> None:
  unknown = sorted(set(only) - set(PARTS))
  if unknown:
    raise ValueError(f"{unknown}: expected some of {list(PARTS)}")


def prepare_profile_dir(path: str) -> None:
  """Creates the profile directory, so an unusable one fails before any figure is measured."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create it ({e})") from e
  if not os.access(path, os.W_OK):
    raise ValueError("not writable")


def run_peer(spec: dict, peer: Peer) -> dict:
  """The peer's figures, or {"error": why} (a failed peer must not lose our figures).

  A peer stopped by its timeout after it wrote its train figures keeps them, with the error
  beside them.
  """
  with tempfile.TemporaryDirectory() as tmp:
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "peer.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f, indent=2)
    cmd = [
        peer.python,
        os.path.normpath(peer.script),
        "--spec",
        spec_path,
        "--out",
        out_path,
        "--device",
        peer.device,
        "--threads",
        str(peer.threads),
    ]
    start = time.time()
    failure = None
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=peer.timeout, check=False)
      if proc.returncode != 0:
        failure = {"error": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-4000:]}
    except subprocess.TimeoutExpired:
      failure = {"error": f"stopped by --peer_timeout={peer.timeout}s"}
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


def run(config: Any, settings: Settings, peer: Peer | None = None, command: str = "") -> dict:
  """Measures `config`'s stage as `settings` says, beside `peer` if given; prints the table
  and returns the result that is also in `settings.json_path`."""
  s = settings
  batch = s.batch_size or int(config.batch_size)
  result = {
      "date": time.strftime("%Y-%m-%d"),
      "host": platform.node(),
      "command": command,
      "batch_size": batch,
  }
  peer_result = None
  if peer is not None:  # first, before JAX takes the accelerator's memory
    from imagen_jax.perf import peer_spec  # pylint: disable=import-outside-toplevel

    spec = peer_spec.spec(
        config,
        batch_size=batch,
        sample_batch_size=s.sample_batch,
        sample_steps=s.sample_steps,
        guidance_scale=s.guidance_scale,
        repeats=s.repeats,
        inner=s.inner,
        sample=not s.only or "sample" in s.only,
    )
    print(f"running {peer.name} with {peer.python} ...", flush=True)
    peer_result = run_peer(spec, peer)
    peer_result["spec"] = spec
    # Kept even if our side is stopped (a timeout) before a figure.
    report.write(s.json_path, result, {}, peer_result)

  import jax  # pylint: disable=import-outside-toplevel

  result.update(xla_flags=os.environ.get("XLA_FLAGS", ""), jax=jax.__version__)
  if not s.only:  # the peer alone: leave the accelerator untouched by JAX
    report.write(s.json_path, result, {}, peer_result)
    print(report.table(result))
    print(f"wrote {s.json_path}")
    return result
  from imagen_jax.perf import benchmark  # pylint: disable=import-outside-toplevel

  result.update(
      backend=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      devices=jax.device_count(),
  )
  ours = {}
  jobs = {
      "train": lambda: benchmark.train_step(
          config,
          batch_size=batch,
          repeats=s.repeats,
          inner=s.inner,
          profile_dir=s.profile_dir,
          profile_steps=s.profile_steps,
      ),
      "sample": lambda: benchmark.sampling(
          config,
          batch_size=s.sample_batch,
          num_steps=s.sample_steps,
          guidance_scale=s.guidance_scale,
          repeats=max(1, s.repeats // 2),
      ),
      "input": lambda: benchmark.input_pipeline(config, batch_size=batch, seconds=s.input_seconds),
  }
  for name in PARTS:
    if name not in s.only:
      continue
    print(f"measuring {name} ...", flush=True)
    try:
      ours[name] = jobs[name]()
    except Exception as e:  # pylint: disable=broad-except  # keep the other figures
      if name == "train":
        report.write(s.json_path, result, ours, peer_result)
        raise
      ours[name] = {"error": f"{type(e).__name__}: {e}"}
    report.write(s.json_path, result, ours, peer_result)  # a run stopped later keeps these
  report.write(s.json_path, result, ours, peer_result)
  print(
      f"{config.model.name}/{config.model.variant} batch {batch} on "
      f"{result['devices']} x {result['device_kind']} (jax {result['jax']})"
  )
  print(report.table(result))
  if "profile" in ours.get("train", {}):
    from imagen_jax.perf import trace_summary  # pylint: disable=import-outside-toplevel

    print(f"profile of the train step ({s.profile_dir}):")
    print(trace_summary.format_summary(ours["train"]["profile"]))
  print(f"wrote {s.json_path}")
  return result
