"""The cases of benchmarks/reliability_probe.py (issue #19) and how each outcome is read:
when to kill the toy trainer, the bad command-line inputs of the real trainer, the
shell-injection payloads, the bad-data fixtures, the child programs; then the checks
(committed steps, bit-identical states, what an error output says, remote commands)."""

import json
import os
import pathlib
import re
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image

# ---------------------------------------------------------------- kills (toy trainer)
# Every case trains `KILL_BASE` in a fresh workdir. `prep`: an uninterrupted run with
# --stop_at N first (a workdir with checkpoints). `kills`: one (signal, trigger) per launch;
# a trigger is a regex on the merged stdout/stderr, or "file:NAME" (a file appearing in the
# workdir; `hang` runs toy_run with --hang_commit_step). Then restarts until one completes.
KILL_BASE = {"total_steps": 300, "checkpoint.every_steps": 50, "checkpoint.keep": 3}
KILL_BASE["log_every_steps"] = 1
_STEP = r"\]\s+{}/300 "  # a console line: the step has run


def _k(name, when, *kills, **opts):
  return dict(name=name, when=when, kills=list(kills), **opts)


_SAVE = r"Checkpoint for step {} started"
KILL_CASES = [
    _k("imports", "first log line (imports)", ("KILL", r".")),
    _k("compile_fresh", "compiling the step, fresh run", ("KILL", r"Start at step 0 \(from")),
    _k("mid_train", "step 37 of 300", ("KILL", _STEP.format(37))),
    _k("save_blocking", "in step 100's blocking save", ("KILL", r"Saving checkpoint at step 100$")),
    _k("save_started", "right after step 150's save started", ("KILL", _SAVE.format(150))),
    _k("commit_rename", "renaming step 200's items", ("KILL", r"Renaming \S+/200\.orbax-ch")),
    _k("commit_hung", "step 250's commit held", ("KILL", "file:HANGING"), hang=250),
    _k("first_commit_done", "right after step 50 committed", ("KILL", r"tmp dir\) to \S+/50`")),
    _k("gc_old_step", "deleting an old step (keep=3)", ("KILL", r"attempting deletion of step")),
    _k("final_step", "after step 300/300 (final save)", ("KILL", _STEP.format(300))),
    _k("restore", "restoring step 150 at startup", ("KILL", r"Restoring checkpoint "), prep=150),
    _k("compile_resumed", "compiling, resumed at 150", ("KILL", r"step 150 \(resumed"), prep=150),
    _k("twice", "step 120, then restoring", ("KILL", _STEP.format(120)), ("KILL", r"Restoring ")),
    _k("sigterm", "SIGTERM at step 130", ("TERM", _STEP.format(130))),
    _k("sigterm_in_save", "SIGTERM as step 100's save started", ("TERM", _SAVE.format(100))),
    # What a SIGKILL between the lock's O_EXCL create and its write leaves (synthetic: the
    # window is microseconds): an empty trainer.lock in a workdir with checkpoints.
    _k("torn_lock", "empty trainer.lock left (synthetic)", prep=150, torn_lock=True),
]

# ---------------------------------------------------------------- bad command-line inputs
# (name, extra train.py args, substring the last lines must hold). `{w}` is the case's
# workdir, `{tmp}` a scratch directory; "config=" replaces the --config value.
_M, _F = "--config.parallel.mesh=", "--config.input.dataset=folder"
_C = ["--coordinator_address=127.0.0.1:1", "--num_processes=2"]
BAD_INPUTS = [
    ("typo_leaf", ["--config.optim.lrr=1"], "lrr"),
    ("typo_top", ["--config.totl_steps=5"], "totl_steps"),
    ("typo_group", ["--config.optimm.lr=1"], "optimm"),
    ("type_int", ["--config.batch_size=abc"], "abc"),
    ("type_float", ["--config.optim.lr=fast"], "fast"),
    ("type_bool", ["--config.checkpoint.async_save=maybe"], "maybe"),
    ("type_tuple", [_M + "data"], "data"),
    ("batch_negative", ["--config.batch_size=-8"], "batch_size=-8"),
    ("batch_zero", ["--config.batch_size=0"], "batch_size=0"),
    ("batch_indivisible", ["--config.batch_size=12"], "12"),
    ("eps_zero", ["--config.optim.eps=0"], "eps=0"),
    ("eps_negative", ["--config.optim.eps=-1e-8"], "eps=-1e-08"),
    ("lr_inf", ["--config.optim.lr=inf"], "lr=inf"),
    ("lr_nan", ["--config.optim.lr=nan"], "lr=nan"),
    ("lr_1e39", ["--config.optim.lr=1e39"], "lr=1e+39"),
    ("lr_negative", ["--config.optim.lr=-0.001"], "lr=-0.001"),
    ("lr_zero", ["--config.optim.lr=0"], "lr=0"),
    ("nonfinite_typo", ["--config.nonfinite=skp"], "skp"),
    ("max_skips_negative", ["--config.nonfinite_max_skips=-1"], "nonfinite_max_skips=-1"),
    ("mesh_too_big", ["--config.batch_size=16", _M + "(('data',16),('fsdp',1))"], "16"),
    ("mesh_indivisible", [_M + "(('data',3),('fsdp',1))"], "3"),
    ("mesh_two_auto", [_M + "(('data',-1),('fsdp',-1))"], "-1"),
    ("mesh_zero", [_M + "(('data',0),('fsdp',1))"], "size 0"),
    ("mesh_unknown_axis", [_M + "(('dta',-1),('fsdp',1))"], "dta"),
    ("parallel_mode", ["--config.parallel.mode=bogus"], "bogus"),
    ("model_name", ["--config.model.name=unet9000"], "unet9000"),
    ("model_variant", ["--config.model.variant=huge"], "huge"),
    ("model_override", ["--config.model.overrides.chanels=3"], "chanels"),
    ("sampler", ["--config.sampling.sampler=ddim2"], "ddim2"),
    ("schedule", ["--config.diffusion.schedule=cosin"], "cosin"),
    ("prediction", ["--config.diffusion.prediction=x1"], "x1"),
    ("loss_weighting", ["--config.diffusion.loss_weighting=snr9"], "snr9"),
    ("threshold", ["--config.sampling.threshold=dynamc"], "dynamc"),
    ("optimizer", ["--config.optim.name=sgdd"], "sgdd"),
    ("decay", ["--config.optim.decay=cosinee"], "cosinee"),
    ("ema_decay", ["--config.ema.decay=1.5"], "decay=1.5"),
    ("cond_drop", ["--config.input.cond_drop_prob=2"], "cond_drop_prob=2"),
    ("resolution", ["--config.input.resolution=32"], "resolution=32"),
    ("total_steps_zero", ["--config.total_steps=0"], "total_steps=0"),
    ("log_every_zero", ["--config.log_every_steps=0"], "log_every_steps=0"),
    ("aug_range", ["--config.diffusion.aug_range=(0.5, 0.1)"], "aug_range"),
    ("log_snr", ["--config.diffusion.log_snr_min=30"], "log_snr_min=30"),
    ("max_objects", ["--config.input.max_objects=5"], "max_objects=5"),
    ("max_decoded_zero", ["--config.input.max_decoded_mb=0"], "max_decoded_mb=0"),
    ("bad_caption_policy", ["--config.input.bad_caption=maybe"], "maybe"),
    ("text_len_zero", ["--config.text.max_length=0"], "max_length=0"),
    ("sample_steps_zero", ["--config.sampling.num_steps=0"], "num_steps=0"),
    ("keep_zero", ["--config.checkpoint.keep=0"], "keep=0"),
    ("config_arg_value", ["config=configs/shapes.py:stage=bse,runlocal"], "bse"),
    ("config_arg_key", ["config=configs/shapes.py:stag=base,runlocal"], "stag"),
    ("config_missing", ["config=configs/nope.py:stage=base"], "nope.py"),
    ("config_is_dir", ["config=configs"], "configs"),
    ("unknown_flag", ["--wrkdir=/tmp/x"], "wrkdir"),
    ("positional_arg", ["extra_arg"], "extra_arg"),
    ("workdir_readonly", ["workdir={ro}/wd"], "{ro}/wd"),
    ("workdir_is_file", ["workdir={tmp}/a_file"], "a_file"),
    ("workdir_under_file", ["workdir={tmp}/a_file/wd"], "a_file/wd"),
    ("workdir_proc", ["workdir=/proc/imagen_wd"], "/proc/imagen_wd"),
    ("peer_never_joins", _C + ["--process_id=0", "--connect_timeout_s=5"], "127.0.0.1:1"),
    ("coordinator_unreachable", _C + ["--process_id=1", "--connect_timeout_s=5"], "127.0.0.1:1"),
    ("process_id_range", _C + ["--process_id=5"], "process_id 5"),
    ("coordinator_alone", _C[:1], "num_processes"),
    ("folder_missing", [_F, "--config.input.path=/nonexistent/imgs"], "/nonexistent/imgs"),
    ("folder_no_path", [_F], "input.path"),
    ("folder_empty", [_F, "--config.input.path={tmp}"], "{tmp}"),
    ("dataset_unknown", ["--config.input.dataset=imagenett"], "imagenett"),
    ("tfds_unprepared", ["--config.input.dataset=tfds:coco_captions"], "coco_captions"),
    ("tfds_unknown", ["--config.input.dataset=tfds:no_such_ds"], "no_such_ds"),
    ("encoder_missing", ["--config.text.encoder=/nonexistent/t5"], "/nonexistent/t5"),
    ("init_from_missing", ["--config.init_from=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    ("resume_from_missing", ["--config.resume_from=/nonexistent/ckpt"], "/nonexistent/ckpt"),
]

# ---------------------------------------------------------------- shell-injection payloads
# `{c}` is a canary path; a payload that runs creates it.
PAYLOADS = [
    "; touch {c}",
    "$(touch {c})",
    "`touch {c}`",
    "' ; touch {c} ; '",
    '" ; touch {c} ; "',
    "x\ntouch {c}",
    "x\r\ntouch {c}",
    "x && touch {c}",
    "x || touch {c}",
    "x | tee {c}",
    "x > {c}",
    "x & touch {c} &",
    "*",
    "{c}*/../*",
    "\u2019; touch {c}; \u2018",
    "\u201c$(touch {c})\u201d",
    "${{IFS}}touch${{IFS}}{c}",
    "x\\'; touch {c}; echo \\'",
    "~/x $HOME !! #",
    "--workdir=/tmp/elsewhere",
    "x'\"'\"'; touch {c}; '",
    "$'\\x3b' touch {c}",
]

# ---------------------------------------------------------------- bad data


def write_png(path, side, bit_depth, row: bytes) -> int:
  """A grayscale `side`x`side` PNG of copies of `row`, streamed (zlib level 9)."""
  comp = zlib.compressobj(9)
  idat = b"".join(comp.compress(b"\x00" + row) for _ in range(side)) + comp.flush()

  def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

  ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, 0, 0, 0, 0)
  data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
  pathlib.Path(path).write_bytes(data)
  return len(data)


def _good(root, name, caption=None):
  root.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (20, 20), (200, 30, 30)).save(root / name)
  (root / name).with_suffix(".txt").write_text(caption or f"good {name}")


def build_data_case(name: str, tmp: pathlib.Path) -> dict:
  """Writes case `name` under `tmp`; returns its input config."""
  root = tmp / "imgs"
  _good(root, "a.png")
  cfg = {"dataset": "folder", "path": str(root)}
  if name == "fifo_png":
    os.mkfifo(root / "x.png")
    (root / "x.txt").write_text("a fifo")
  elif name == "fifo_caption":
    _good(root, "b.png")
    (root / "b.txt").unlink()
    os.mkfifo(root / "b.txt")
  elif name == "socket_png":
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "s.png"))  # the socket file stays after close
    sock.close()
  elif name == "symlink_dev_zero":
    os.symlink("/dev/zero", root / "z.png")
  elif name == "dir_named_png":
    (root / "d.png").mkdir()
  elif name == "zlib_bomb":
    write_png(root / "bomb.png", 12000, 8, bytes(12000))
  elif name == "png16":
    ramp = np.linspace(0, 65535, 6000).astype(">u2").tobytes()
    write_png(root / "big16.png", 6000, 16, ramp)
  elif name == "truncated_png":
    _good(root, "t.png")
    data = (root / "t.png").read_bytes()
    (root / "t.png").write_bytes(data[: len(data) // 2])
  elif name == "empty_png":
    (root / "e.png").write_bytes(b"")
  elif name in ("bad_utf8", "bad_utf8_error"):
    _good(root, "b.png")
    (root / "b.txt").write_bytes(b"caf\xe9 latin-1, not UTF-8\n")
    cfg["bad_caption"] = "skip" if name == "bad_utf8" else "error"
  elif name == "jsonl_broken":
    man = tmp / "m.jsonl"
    lines = [json.dumps({"image": "a.png", "caption": "ok"})] * 2 + ['{"image": "a.png", ']
    man.write_text("\n".join(lines) + "\n")
    cfg["manifest"] = str(man)
  elif name == "coco_dotdot":
    _good(tmp / "outside", "secret.png")
    files = ["a.png", "../outside/secret.png", str(tmp / "outside" / "secret.png")]
    ann = tmp / "captions.json"
    images = [{"id": i, "file_name": f} for i, f in enumerate(files)]
    anns = [{"image_id": i, "caption": f"c{i}"} for i in range(3)]
    ann.write_text(json.dumps({"images": images, "annotations": anns}))
    cfg = {"dataset": "coco_json", "path": str(root), "annotations": str(ann)}
  elif name == "mostly_bad":  # 2 good records of 7, read for 200 examples (epochs repeat)
    _good(root, "c.png")
    for i in range(5):
      (root / f"bad{i}.png").write_bytes(b"not a png")
    cfg.update(num_epochs=None, shuffle=True, probe_examples=200)
  elif name == "good":  # for MIXED: most records good
    for i in range(10):
      _good(root, f"g{i}.png")
  elif name == "all_bad":
    (root / "a.png").write_bytes(b"not a png")
  else:
    raise ValueError(name)
  for f in root.iterdir():  # every bad image has its caption: the image is what is bad
    if f.suffix == ".png" and not os.path.lexists(f.with_suffix(".txt")):
      f.with_suffix(".txt").write_text(f"caption of {f.name}")
  return cfg


# (name, what a good outcome is: "skip" (counted, run goes on), "error" (naming `expect`),
# "decode" (read fine), expected substring in the output or error).
DATA_CASES = [
    ("fifo_png", "skip", "x.png"),
    ("fifo_caption", "skip", "b.txt"),
    ("socket_png", "skip", "s.png"),
    ("symlink_dev_zero", "skip", "z.png"),
    ("dir_named_png", "skip", ""),
    ("zlib_bomb", "skip", "bomb.png"),
    ("png16", "decode", ""),
    ("truncated_png", "skip", "t.png"),
    ("empty_png", "skip", "e.png"),
    ("bad_utf8", "skip", "b.txt"),
    ("bad_utf8_error", "error", "b.txt"),
    ("jsonl_broken", "error", "m.jsonl:3"),
    ("coco_dotdot", "skip", "outside"),
    ("mostly_bad", "skip", ""),
    ("all_bad", "error", "a.png"),
]
# The folder every bad file goes into for the prepare_data.py and trainer runs.
MIXED = ("good", "fifo_png", "symlink_dev_zero", "zlib_bomb", "truncated_png", "bad_utf8", "png16")

# ---------------------------------------------------------------- child programs
# Reads one data case's input config (argv[1], JSON) to the end with the library's reader;
# prints RESULT {captions, skipped | error, seconds, growth_mb (peak RSS growth), peak_mb}.
READ_SOURCE = """
import itertools, json, sys, time
from imagen_jax.data import input_pipeline
cfg = json.loads(sys.argv[1])
limit = cfg.pop("probe_examples", None)
def peak():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
r, t0, before = {}, time.time(), peak()
try:
  it = input_pipeline.create_input_iterator({"num_epochs": 1, "shuffle": False, "num_workers": 2,
      **cfg}, global_batch_size=1, resolution=16, seed=0, process_index=0,
      process_count=1, devices_per_process=1)
  got = [str(b["caption"][0]) for b in itertools.islice(it, limit)]
  r.update(examples=len(got), captions=got[:4])
  r["skipped"] = it.num_skipped
except Exception as e:
  r["error"] = f"{type(e).__name__}: {e}"
r.update(seconds=time.time() - t0, growth_mb=peak() - before, peak_mb=peak())
print("RESULT", json.dumps(r), flush=True)
"""

# The sandbox worker's `~/imagen_jax/.venv/bin/python`: records its argv and $A.
FAKE_PYTHON = """#!{py}
import json, os, sys
with open(os.path.join(os.environ["HOME"], "argv.jsonl"), "a") as f:
  f.write(json.dumps({{"argv": sys.argv[1:], "A": os.environ.get("A")}}) + "\\n")
"""

# A config file whose sweep() sets config.input.path (unused by the shapes data) to each
# payload: the payloads reach sweep.py as override values.
SWEEP_CONFIG = """import importlib.util
_s = importlib.util.spec_from_file_location("shapes_cfg", {shapes!r})
_m = importlib.util.module_from_spec(_s)
_s.loader.exec_module(_m)
PAYLOADS = {payloads!r}

def get_config(arg=None):
  return _m.get_config("stage=base,runlocal")

def sweep(add, arg=None):
  for p in PAYLOADS:
    add(**{{"input.path": p}})
"""


# ---------------------------------------------------------------- checks
# Exceptions that are the project's clear errors when their message names the value.
CLEAR = {"ConfigError", "ValueError", "UsageError", "PermissionError", "ConnectionError"}
CLEAR |= {"FileNotFoundError", "NotADirectoryError", "WorkdirLocked", "SystemExit"}
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Locked|Halted|Interrupt))(?::|$)")


def committed(wd):
  """The committed (renamed, digit-named) checkpoint steps of workdir `wd`."""
  d = wd / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def compare_states(a_path, b_path):
  """Whether two final states (toy_run --out) are bit-identical, and their max |diff|."""
  if not b_path.exists():
    return dict(identical=False, max_abs_diff=None)
  a, b = np.load(a_path), np.load(b_path)
  if sorted(a.files) != sorted(b.files):
    return dict(identical=False, max_abs_diff=None, keys_differ=True)
  diff = max(float(np.max(np.abs(a[k] - b[k].astype(np.float64)), initial=0)) for k in a.files)
  same = all(np.array_equal(a[k], b[k]) for k in a.files)
  return dict(identical=same, max_abs_diff=diff, arrays=len(a.files))


def classify(text, expect):
  """What a failed run printed: do its last lines name `expect`; is a traceback the last
  thing (its exception within the last 3 lines), of which type; is that an internal one
  (not one of the project's CLEAR types)."""
  lines = text.rstrip().splitlines()
  names = expect in "\n".join(lines[-12:])
  tb = max((i for i, x in enumerate(lines) if x.startswith("Traceback (")), default=-1)
  at = max((i for i in range(tb + 1, len(lines)) if tb >= 0 and _EXC.match(lines[i])), default=-1)
  exc = _EXC.match(lines[at]).group(1).rsplit(".", 1)[-1] if at >= 0 else None
  last = at >= 0 and at >= len(lines) - 3
  internal = last and exc not in CLEAR
  return dict(names_value=names, traceback_last=last, exception=exc, internal_traceback=internal)


def remotes(stdout):
  """Printed gcloud commands, split with shlex -> (tokens, every `--command` value)."""
  toks = shlex.split(stdout)
  return toks, [toks[i + 1] for i, t in enumerate(toks[:-1]) if t == "--command"]


def yaml_argv(text):
  """The container command (the list holding scripts/train.py) of a JobSet YAML."""
  import yaml  # pylint: disable=import-outside-toplevel

  def lists(node):
    if isinstance(node, list) and "scripts/train.py" in node:
      yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
      yield from lists(child)

  try:
    return next(lists(yaml.safe_load(text)), [])
  except yaml.YAMLError:
    return []


def sandbox_run(remote, root):
  """Runs a remote `--command` with bash in a fresh HOME under `root` (a stand-in worker:
  `~/imagen_jax/.venv/bin/python` is FAKE_PYTHON); returns the argv records it made."""
  home = pathlib.Path(tempfile.mkdtemp(dir=root))
  py = home / "imagen_jax" / ".venv" / "bin" / "python"
  py.parent.mkdir(parents=True)
  py.write_text(FAKE_PYTHON.format(py=sys.executable))
  py.chmod(0o755)
  env = {"HOME": str(home), "PATH": os.environ["PATH"], "TPU_WORKER_ID": "0"}
  subprocess.run(["bash", "-c", remote], cwd=home, env=env, capture_output=True, timeout=30)
  log = home / "argv.jsonl"
  return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
