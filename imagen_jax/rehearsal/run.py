"""The pod workflow, rehearsed on one machine with real parts (scripts/rehearse_pod.py).

Phases, each a run of the project's own commands as a user on a pod would type them, against
a real GCS API server (fake-gcs-server on 127.0.0.1, reached only through the standard
client variables):

  world           the downloads, made locally (COCO-format train/val with a truncated and a
                  missing image; a Hugging Face T5 + SentencePiece; Inception .pth), the T5
                  and Inception files copied to the bucket
  prepare_data    scripts/prepare_data.py: COCO json -> TFDS ArrayRecord on gs://, train split
                  by two processes at once (--num_shards 2), val by one
  text_cache      scripts/precompute_text_embeddings.py from the base stage's config, two
                  processes at once, T5 read from gs://, cache written to gs://
  train_base      scripts/launch_tpu.py copy + run --detach with a stand-in gcloud
                  (imagen_jax.rehearsal.gcloud_stand_in): N worker processes, jax.distributed,
                  data, cache and workdir on gs://; SIGTERM to every worker (launch_tpu.py
                  kill) once training runs; each must exit 0 after saving
  preempt_resume  the same run command again: it must resume from the saved step and finish
  train_sr        the 64->256 stage, the same way, to the end
  sample          scripts/sample.py from the two gs:// workdirs, outputs to gs://
  fid             scripts/eval_fid.py on the prepared val split, Inception weights from gs://,
                  result on gs://

Writes `OUT/rehearsal.json` ({"storage", "processes", "resumed_from_step", "fid",
"phases": {name: {"ok", "seconds", ...}}}) and returns it. A failed phase records its error
and the phases that need it are marked not run.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable

from imagen_jax.rehearsal import gcloud_stand_in
from imagen_jax.rehearsal import world
from imagen_jax.storage import emulator as emulator_lib
from imagen_jax.storage import paths

REPO = pathlib.Path(__file__).resolve().parents[2]
BUCKET = "imagen-rehearsal"
DATASET = "coco_rehearsal"
PHASES = (
    "world",
    "prepare_data",
    "text_cache",
    "train_base",
    "preempt_resume",
    "train_sr",
    "sample",
    "fid",
)
BASE_CONFIG = "configs/base64.py:variant=tiny"
SR_CONFIG = "configs/sr256.py:variant=tiny"


class PhaseError(RuntimeError):
  pass


class Rehearsal:
  """One rehearsal in `out` (a fresh local folder); see the module docstring."""

  def __init__(
      self,
      out: str | os.PathLike,
      *,
      num_workers: int = 2,
      devices_per_worker: int = 2,
      base_steps: int = 12,
      sr_steps: int = 6,
      log: Callable[[str], None] = print,
  ):
    self.out = pathlib.Path(out).resolve()
    self.num_workers, self.devices = int(num_workers), int(devices_per_worker)
    self.base_steps, self.sr_steps = int(base_steps), int(sr_steps)
    self.log = log
    self.bucket = f"gs://{BUCKET}"
    self.result: dict[str, Any] = {
        "storage": self.bucket,
        "processes": self.num_workers,
        "resumed_from_step": None,
        "fid": None,
        "phases": {},
    }
    self.gcs = None
    self.env: dict[str, str] = {}

  # -- plumbing ------------------------------------------------------------------------

  def _run(
      self, argv: list[str], name: str, *, timeout: float = 600, env: dict | None = None
  ) -> str:
    """Runs a command to completion; its output goes to OUT/logs/<name>.log."""
    log_path = self.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    self.log(f"$ {shlex.join(argv)}")
    with open(log_path, "w", encoding="utf-8") as f:
      proc = subprocess.run(
          argv,
          cwd=REPO,
          env=env or self.env,
          stdout=f,
          stderr=subprocess.STDOUT,
          timeout=timeout,
          check=False,
      )
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
      raise PhaseError(
          f"{argv[1] if len(argv) > 1 else argv[0]} exited with "
          f"{proc.returncode}; see {log_path}:\n{text[-2500:]}"
      )
    return text

  def _parallel(self, argvs: list[list[str]], name: str, timeout: float = 600) -> list[str]:
    """Runs commands at once (as several hosts would); all must succeed."""
    procs, files = [], []
    for i, argv in enumerate(argvs):
      path = self.out / "logs" / f"{name}.{i}.log"
      path.parent.mkdir(parents=True, exist_ok=True)
      self.log(f"$ {shlex.join(argv)} &")
      f = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
      files.append((f, path))
      procs.append(
          subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
      )
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
      try:
        codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        p.kill()
        codes.append(p.wait())
    texts = []
    for (f, path), code in zip(files, codes):
      f.close()
      texts.append(path.read_text(encoding="utf-8", errors="replace"))
      if code != 0:
        raise PhaseError(f"{name}: a process exited with {code}; see {path}:\n{texts[-1][-2500:]}")
    return texts

  def _script(self, name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / name), *args]

  def phase(self, name: str, fn: Callable[[], dict | None], needs: tuple[str, ...] = ()):
    record: dict[str, Any] = {"ok": False, "seconds": 0.0}
    self.result["phases"][name] = record
    failed = [n for n in needs if not self.result["phases"].get(n, {}).get("ok")]
    if failed:
      record["error"] = f"not run: needs {', '.join(failed)}"
      self.log(f"== {name}: {record['error']}")
      return
    self.log(f"== {name}")
    start = time.monotonic()
    try:
      record.update(fn() or {})
      record["ok"] = True
    except Exception as e:  # pylint: disable=broad-except  # recorded, the rest go on
      record["error"] = f"{type(e).__name__}: {e}"
      self.log(f"!! {name} failed: {record['error'][-3000:]}")
    record["seconds"] = round(time.monotonic() - start, 1)
    self._write()

  def _write(self) -> None:
    (self.out / "rehearsal.json").write_text(json.dumps(self.result, indent=2))

  # -- the run -------------------------------------------------------------------------

  def run(self) -> dict:
    self.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    self.gcs = emulator_lib.GcsEmulator(self.out / "gcs").start()
    saved = {k: os.environ.get(k) for k in self.gcs.env}
    os.environ.update(self.gcs.env)  # this process reads the bucket too
    try:
      self.env = self._child_env()
      self.gcs.create_bucket(BUCKET)
      self.phase("world", self.make_world)
      self.phase("prepare_data", self.prepare_data, ("world",))
      self.phase("text_cache", self.text_cache, ("prepare_data",))
      self.phase("train_base", self.train_base, ("text_cache",))
      self.phase("preempt_resume", self.preempt_resume, ("train_base",))
      self.phase("train_sr", self.train_sr, ("text_cache",))
      self.phase("sample", self.sample, ("preempt_resume", "train_sr"))
      self.phase("fid", self.fid, ("preempt_resume", "train_sr"))
    finally:
      self.gcs.stop()
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
    self.result["seconds"] = round(time.monotonic() - start, 1)
    self.result["ok"] = all(self.result["phases"].get(p, {}).get("ok") for p in PHASES)
    self._write()
    return self.result

  def _child_env(self) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "PYTHONPATH")
    }
    env.update(self.gcs.env)
    env.update(
        JAX_PLATFORMS="cpu",
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={self.devices}",
        JAX_COMPILATION_CACHE_DIR=str(self.out / "xla_cache"),
        IMAGEN_JAX_CACHE=str(self.out / "local_cache"),
        PYTHONPATH=str(REPO),
    )
    return env

  # -- phases --------------------------------------------------------------------------

  def make_world(self) -> dict:
    down = self.out / "downloads"
    self.train_ann, self.train_images = world.write_coco(
        down / "coco", "train", 48, corrupt=1, missing=1, seed=0
    )
    self.val_ann, self.val_images = world.write_coco(down / "coco", "val", 24, seed=1)
    t5_local = world.write_t5(
        down / "t5-rehearsal", world.captions_of(self.train_ann) + world.captions_of(self.val_ann)
    )
    inception_local = world.write_inception_pth(down / "pt_inception-rehearsal.pth")
    self.t5 = f"{self.bucket}/models/t5-rehearsal"
    self.inception = f"{self.bucket}/models/pt_inception-rehearsal.pth"
    for name in sorted(os.listdir(t5_local)):  # as `gcloud storage cp -r` would
      paths.path(f"{self.t5}/{name}").write_bytes(pathlib.Path(t5_local, name).read_bytes())
    paths.path(self.inception).write_bytes(pathlib.Path(inception_local).read_bytes())
    return {
        "t5": self.t5,
        "inception": self.inception,
        "coco_train_images": 48,
        "coco_val_images": 24,
    }

  def prepare_data(self) -> dict:
    self.tfds_dir = f"{self.bucket}/tfds"
    common = ["--source=coco_json", f"--name={DATASET}", f"--output_dir={self.tfds_dir}"]
    train = [
        self._script(
            "prepare_data.py",
            *common,
            f"--annotations={self.train_ann}",
            f"--images={self.train_images}",
            "--split=train",
            "--num_shards=2",
            f"--shard_index={i}",
        )
        for i in range(2)
    ]
    texts = self._parallel(train, "prepare_train")
    val = self._run(
        self._script(
            "prepare_data.py",
            *common,
            f"--annotations={self.val_ann}",
            f"--images={self.val_images}",
            "--split=validation",
        ),
        "prepare_val",
    )
    counts = _prepare_counts("\n".join(texts))
    if counts["written"] != 46 or counts["skipped"] != 2:
      raise PhaseError(
          f"expected 46 train images written and 2 skipped (one truncated, one "
          f"missing), the two processes printed {counts}"
      )
    val_counts = _prepare_counts(val)
    if val_counts["written"] != 24:
      raise PhaseError(f"expected 24 val images, got {val_counts}")
    return {
        "dataset": f"tfds:{DATASET}",
        "data_dir": self.tfds_dir,
        "train": counts,
        "validation": val_counts,
    }

  def _stage_overrides(self, workdir: str | None = None) -> list[str]:
    out = [
        f"--config.input.dataset=tfds:{DATASET}",
        f"--config.input.data_dir={self.tfds_dir}",
        f"--config.text.encoder={self.t5}",
        f"--config.text.cache_dir={self.cache_dir}",
        "--config.input.num_workers=1",
    ]
    return out + ([f"--workdir={workdir}"] if workdir else [])

  def text_cache(self) -> dict:
    self.cache_dir = f"{self.bucket}/t5_cache"
    argvs = [
        self._script(
            "precompute_text_embeddings.py",
            f"--config={BASE_CONFIG}",
            *self._stage_overrides(),
            "--num_shards=2",
            f"--shard_index={i}",
            "--batch_size=32",
        )
        for i in range(2)
    ]
    texts = self._parallel(argvs, "text_cache")
    compact = self._run(
        self._script(
            "precompute_text_embeddings.py",
            f"--config={BASE_CONFIG}",
            *self._stage_overrides(),
            "--compact",
        ),
        "text_cache_compact",
    )
    return {
        "cache_dir": self.cache_dir,
        "printed": [t.strip().splitlines()[-1] for t in texts + [compact]],
    }

  # -- training through the launcher ----------------------------------------------------

  def _launcher(self, *args: str) -> list[str]:
    return self._script("launch_tpu.py", *args, "--tpu=rehearsal-pod", "--zone=local-a")

  def _setup_workers(self) -> None:
    """`launch_tpu.py copy` for real; then, in place of `install` (pip's index is offline),
    each worker's ~/imagen_jax/.venv/bin/python runs this interpreter and records its exit
    status (a real TPU VM's launcher sees none)."""
    self.workers = self.out / "workers"
    bin_dir = self.out / "bin"
    gcloud_stand_in.install(bin_dir)
    self.launch_env = dict(self.env)
    self.launch_env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}",
            gcloud_stand_in.ROOT_ENV: str(self.workers),
            gcloud_stand_in.COUNT_ENV: str(self.num_workers),
            gcloud_stand_in.WORKER_ENV: json.dumps({"PYTHONPATH": "{home}/imagen_jax"}),
        }
    )
    self._run(self._launcher("copy", f"--repo={REPO}"), "launch_copy", env=self.launch_env)
    for i in range(self.num_workers):
      venv_bin = gcloud_stand_in.worker_home(self.workers, i) / "imagen_jax" / ".venv" / "bin"
      venv_bin.mkdir(parents=True, exist_ok=True)
      wrapper = venv_bin / "python"
      wrapper.write_text(_PYTHON_WRAPPER.format(python=shlex.quote(sys.executable)))
      wrapper.chmod(0o755)

  def _train_args(
      self, config: str, workdir: str, job: str, steps: int, extra: tuple[str, ...] = ()
  ) -> list[str]:
    port = emulator_lib.free_port()
    return [
        f"--config={config}",
        f"--workdir={workdir}",
        f"--job={job}",
        f"--local_log_dir={self.out / 'logs' / 'tpu'}",
        f"--config.total_steps={steps}",
        "--config.batch_size=8",
        "--config.log_every_steps=1",
        "--config.checkpoint.every_steps=4",
        "--config.sampling.num_steps=4",
        *self._stage_overrides(),
        *extra,
        f"--train_flag=--coordinator_address=127.0.0.1:{port}",
        f"--train_flag=--num_processes={self.num_workers}",
        # Two workers compiling at once on two cores can starve their heartbeats past
        # JAX's 100 s (seen once in CI: both declared dead mid-compile).
        "--train_flag=--heartbeat_timeout_s=900",
        "--process_id_env=TPU_WORKER_ID",
    ]

  def _exit_codes(self) -> list[list[int]]:
    out = []
    for i in range(self.num_workers):
      f = gcloud_stand_in.worker_home(self.workers, i) / "train_exit_codes"
      out.append([int(x) for x in f.read_text().split()] if f.exists() else [])
    return out

  def _worker_log(self, job: str, i: int) -> str:
    f = gcloud_stand_in.worker_home(self.workers, i) / "imagen_jax_logs" / f"{job}.{i}.log"
    return f.read_text(errors="replace") if f.exists() else ""

  def train_base(self) -> dict:
    self._setup_workers()
    self.base_workdir = f"{self.bucket}/runs/base64"
    args = self._train_args(BASE_CONFIG, self.base_workdir, "base64", self.base_steps)
    self._base_args = args
    self._run(self._launcher("run", "--detach", *args), "launch_base", env=self.launch_env)
    deadline = time.monotonic() + 420
    while not re.search(r"\] +[1-9]\d*/\d+ loss", self._worker_log("base64", 0)):
      if any(self._exit_codes()):
        raise PhaseError(
            "a worker exited before training ran:\n" + self._worker_log("base64", 0)[-3000:]
        )
      if time.monotonic() > deadline:
        raise PhaseError(
            "training did not start within 420 s:\n" + self._worker_log("base64", 0)[-3000:]
        )
      time.sleep(1.0)
    self._run(self._launcher("kill", "--job=base64"), "launch_kill", env=self.launch_env)
    deadline = time.monotonic() + 300
    while not all(self._exit_codes()):
      if time.monotonic() > deadline:
        raise PhaseError(f"workers still running 300 s after SIGTERM: {self._exit_codes()}")
      time.sleep(1.0)
    codes = self._exit_codes()
    logs = [self._worker_log("base64", i) for i in range(self.num_workers)]
    if any(c != [0] for c in codes):
      raise PhaseError(f"after SIGTERM the workers exited with {codes}:\n{logs[0][-3000:]}")
    saved = re.findall(r"Preempted at step (\d+): checkpoint saved", logs[0])
    steps = _committed_steps(self.base_workdir)
    if not saved or int(saved[-1]) not in steps:
      raise PhaseError(f"no preemption checkpoint: log says {saved}, bucket has {steps}")
    self.preempted_at = int(saved[-1])
    return {
        "workdir": self.base_workdir,
        "preempted_at_step": self.preempted_at,
        "exit_codes": codes,
        "checkpoints": steps,
    }

  def preempt_resume(self) -> dict:
    self._run(self._launcher("run", *self._base_args), "launch_base_resume", env=self.launch_env)
    log = self._worker_log("base64", 0)
    started = re.findall(r"Start at step (\d+) \(resumed", log)
    codes = self._exit_codes()
    if not started or int(started[-1]) != self.preempted_at:
      raise PhaseError(
          f"expected a resume from step {self.preempted_at}, the log says "
          f"{started}:\n{log[-3000:]}"
      )
    if any(c[-1:] != [0] for c in codes):
      raise PhaseError(f"the resumed workers exited with {codes}:\n{log[-3000:]}")
    final = json.loads(paths.path(f"{self.base_workdir}/final_metrics.json").read_text())
    if final.get("step") != self.base_steps:
      raise PhaseError(f"final_metrics.json: {final}")
    self.result["resumed_from_step"] = int(started[-1])
    return {
        "resumed_from_step": int(started[-1]),
        "final_step": final["step"],
        "final_loss": final.get("loss"),
    }

  def train_sr(self) -> dict:
    if not hasattr(self, "workers"):
      self._setup_workers()
    self.sr_workdir = f"{self.bucket}/runs/sr256"
    args = self._train_args(
        SR_CONFIG, self.sr_workdir, "sr256", self.sr_steps, ("--config.input.crop_size=64",)
    )
    self._run(self._launcher("run", *args), "launch_sr", env=self.launch_env)
    codes = self._exit_codes()
    if any(c[-1:] != [0] for c in codes):
      raise PhaseError(f"SR workers exited with {codes}:\n{self._worker_log('sr256', 0)[-3000:]}")
    final = json.loads(paths.path(f"{self.sr_workdir}/final_metrics.json").read_text())
    return {
        "workdir": self.sr_workdir,
        "final_step": final.get("step"),
        "final_loss": final.get("loss"),
    }

  def sample(self) -> dict:
    outdir = f"{self.bucket}/samples"
    self._run(
        self._script(
            "sample.py",
            f"--workdir_base={self.base_workdir}",
            f"--workdir_sr1={self.sr_workdir}",
            f"--output_dir={outdir}",
            "--prompt=a small red circle on the left",
            "--prompt=a large blue square",
            "--num_samples=2",
            "--num_steps=4",
            "--guidance_scale=3,1",
            "--batch_size=4",
        ),
        "sample",
    )
    record = json.loads(paths.path(f"{outdir}/samples.json").read_text())
    if not paths.path(f"{outdir}/grid.png").exists() or len(record["files"]) != 4:
      raise PhaseError(f"sample.py wrote {record.get('files')} to {outdir}")
    return {"outdir": outdir, "images": len(record["files"])}

  def fid(self) -> dict:
    outdir = f"{self.bucket}/fid"
    self._run(
        self._script(
            "eval_fid.py",
            f"--workdir_base={self.base_workdir}",
            f"--workdir_sr1={self.sr_workdir}",
            f"--tfds_name={DATASET}",
            f"--tfds_data_dir={self.tfds_dir}",
            "--tfds_split=validation",
            "--num_samples=16",
            "--shard_size=8",
            "--resolution=64",
            f"--inception_weights={self.inception}",
            "--inception_image_size=75",
            "--inception_batch_size=8",
            f"--output_dir={outdir}",
            "--num_steps=4",
            "--batch_size=8",
        ),
        "fid",
        timeout=600,
    )
    result = json.loads(paths.path(f"{outdir}/fid.json").read_text())
    runs = result.get("runs") or [{}]
    value = runs[0].get("fid")
    if not isinstance(value, (int, float)) or not value >= 0 or len(runs) != 1:
      raise PhaseError(f"fid.json: {result}")
    counts = runs[0]["counts"]
    if counts["samples"] != 16 or counts["reference"] != 16:
      raise PhaseError(f"FID of {counts} samples/reference images, expected 16 of each")
    self.result["fid"] = float(value)
    return {
        "fid": float(value),
        "output": f"{outdir}/fid.json",
        "samples": counts["samples"],
        "trained_on_coco": result.get("trained_on_coco"),
    }


# The worker's venv python: this interpreter, its exit status appended to ~/train_exit_codes;
# SIGTERM (launch_tpu.py kill) is passed on to it.
_PYTHON_WRAPPER = """#!/usr/bin/env bash
{python} "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
echo "$rc" >> "$HOME/train_exit_codes"
exit "$rc"
"""


def _prepare_counts(text: str) -> dict:
  """Sums the `this run: N written, M skipped` lines prepare_data.py prints."""
  runs = re.findall(r"this run: (\d+) written, (\d+) skipped", text)
  return {"written": sum(int(w) for w, _ in runs), "skipped": sum(int(s) for _, s in runs)}


def _committed_steps(workdir: str) -> list[int]:
  root = paths.path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def table(result: dict) -> str:
  rows = [f"{'phase':<16} {'ok':<4} {'seconds':>8}  detail"]
  for name, r in result["phases"].items():
    detail = r.get("error") or ", ".join(
        f"{k}={v}"
        for k, v in r.items()
        if k not in ("ok", "seconds") and not isinstance(v, (dict, list))
    )
    rows.append(f"{name:<16} {'yes' if r['ok'] else 'NO':<4} {r['seconds']:>8.1f}  {detail[:110]}")
  rows.append(
      f"storage {result['storage']}, {result['processes']} processes, resumed from "
      f"step {result['resumed_from_step']}, FID {result['fid']}, "
      f"{result.get('seconds', 0):.0f} s in all"
  )
  return "\n".join(rows)
