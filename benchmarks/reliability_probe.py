r"""Reliability probes of issue #19: kills, bad command-line inputs, shell injection, bad data.

  python benchmarks/reliability_probe.py --out benchmarks/results/reliability/probe.json \
      [--only kills,inputs,injection,data] [--repo DIR] [--timeout 150]

kills: SIGKILL/SIGTERM the toy trainer (tests/train/toy_run.py) at each KILL_CASES moment,
restart until a run completes, compare its final state with an uninterrupted run's (a step
committed before a kill and gone after, or a restart resuming before the newest committed
step, is data lost). inputs: scripts/train.py with each BAD_INPUTS case: exit status, time,
value named, internal traceback last, hung or trained. injection: PAYLOADS through the
launch_tpu.py and sweep.py dry runs; each printed remote command is split with shlex and run
by bash in a sandbox whose `.venv/bin/python` records its argv; canary files tell what ran.
data: DATA_CASES read by the library's readers in a subprocess (hung, peak RSS, counted skip
or clear error), then MIXED through scripts/prepare_data.py and the trainer. Cases and
checks: benchmarks/reliability_cases.py. Children: JAX_PLATFORMS=cpu, 8 host devices.
"""

import argparse
import datetime
import json
import os
import pathlib
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


import reliability_cases as cases

CONFIG = "configs/shapes.py:stage=base,runlocal"
_START = re.compile(r"Start at step (\d+) \(")
_PIPES = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
_PIPES.update(text=True, errors="replace", start_new_session=True)


class Proc:
  """A child in its own session; a thread reads its merged output line by line."""

  def __init__(self, cmd, env, cwd):
    self.t0, self.lines, self.q = time.monotonic(), [], queue.Queue()
    self.rc, self.hung, self.peak_mb = None, False, None
    self.p = subprocess.Popen(cmd, env=env, cwd=cwd, **_PIPES)
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.p.stdout:
      self.lines.append(line)
      self.q.put(line)
    self.q.put(None)

  def wait_for(self, trigger, workdir, timeout):
    """The line matching `trigger` (or "file:NAME" appearing); None if the child ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if trigger.startswith("file:") and (workdir / trigger[5:]).exists():
        return trigger
      try:
        line = self.q.get(timeout=0.05)
      except queue.Empty:
        continue
      if line is None:
        return None
      if not trigger.startswith("file:") and re.search(trigger, line):
        return line.strip()[-160:]
    return None

  def finish(self, timeout):
    """Exit status (and peak RSS, from wait4); past `timeout` its process group is killed."""
    deadline = time.monotonic() + timeout
    while True:
      pid, status, usage = os.wait4(self.p.pid, os.WNOHANG)
      if pid:
        self.rc = self.p.returncode = os.waitstatus_to_exitcode(status)
        self.peak_mb = usage.ru_maxrss / 1024
        break
      if time.monotonic() > deadline:
        self.hung, deadline = True, float("inf")
        os.killpg(self.p.pid, signal.SIGKILL)
      time.sleep(0.05)
    self.seconds = round(time.monotonic() - self.t0, 1)
    time.sleep(0.2)  # the reader drains the pipe
    return self.rc

  @property
  def text(self):
    return "".join(self.lines)

  def start_step(self):
    m = _START.search(self.text)
    return int(m.group(1)) if m else None


def _tail(text, n=6):
  return [line[:300] for line in text.strip().splitlines()[-n:]]


def _run(args, cmd):
  # Bytes: text mode would turn a payload's \r\n into \n.
  proc = subprocess.run(cmd, cwd=args.repo, env=args.env, capture_output=True)
  proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode(errors="replace")
  return proc


# ------------------------------------------------------------------------------------ kills
def _toy(args, wd, *extra):
  cmd = [sys.executable, str(args.repo / "tests/train/toy_run.py"), "--workdir", str(wd)]
  return Proc(cmd + ["--overrides", json.dumps(cases.KILL_BASE), *extra], args.env, args.repo)


def kill_case(args, case, ref):
  wd, out = args.tmp / "kills" / case["name"], args.tmp / "kills" / f"{case['name']}.npz"
  launches, kills = [], []
  if case.get("prep"):
    p = _toy(args, wd, "--stop_at", str(case["prep"]))
    launches.append(dict(kind="prep", rc=p.finish(300), start=p.start_step()))
  if case.get("torn_lock"):
    (wd / "trainer.lock").write_text("")
  for sig, trigger in case["kills"]:
    p = _toy(args, wd, *(["--hang_commit_step", str(case["hang"])] if "hang" in case else []))
    hit = p.wait_for(trigger, wd, 240)
    k = dict(signal=sig, at_s=round(time.monotonic() - p.t0, 2), trigger_seen=hit)
    k["committed_before"] = cases.committed(wd)
    if hit is not None:
      os.kill(p.p.pid, signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
    k["rc"] = p.finish(120)
    k["committed_after"] = cases.committed(wd)
    k["tmp_left"] = [q.name for q in (wd / "checkpoints").glob("*orbax-checkpoint-tmp*")]
    pre = re.search(r"Preempted at step (\d+)", p.text)
    k["preempted_at"], k["launch"] = int(pre.group(1)) if pre else None, len(launches)
    launches.append(dict(kind=sig, rc=p.rc, start=p.start_step()))
    kills.append(k)
  for _ in range(4):  # restarts until one completes
    p = _toy(args, wd, "--out", str(out))
    done = p.finish(300) == 0 and "TOY_RUN_DONE" in p.text
    launches.append(dict(kind="restart", rc=p.rc, start=p.start_step()))
    if done:
      break
    launches[-1]["tail"] = _tail(p.text)
  for k in kills:
    later = [x["start"] for x in launches[k["launch"] + 1 :] if x["start"] is not None]
    k["resumed_from"] = later[0] if later else None
    before, after = k["committed_before"], k["committed_after"]
    newest = sorted(set(before) | set(after))[-cases.KILL_BASE["checkpoint.keep"] :]
    k["lost"] = [s for s in before if s not in after and s in newest]  # not retention's
    if after and (k["resumed_from"] or 0) < max(after):
      k["lost"].append(f"resumed at {k['resumed_from']}, newest committed {max(after)}")
    if k["signal"] == "TERM":  # saves the current step, exits 0, the restart continues there
      saved = k["preempted_at"] in after and k["resumed_from"] == k["preempted_at"]
      k["term_ok"] = k["rc"] == 0 and saved
  final = dict(done=done, restarts=sum(x["kind"] == "restart" for x in launches))
  final.update(cases.compare_states(ref, out))
  lost = any(k["lost"] for k in kills)
  ok = done and final["identical"] and not lost
  ok = ok and all(k.get("term_ok", True) and k["trigger_seen"] for k in kills)
  r = dict(name=case["name"], when=case["when"], survived=ok, data_lost=lost, final=final)
  return dict(r, kills=kills, launches=launches)


def probe_kills(args):
  ref = args.tmp / "kills" / "reference.npz"
  p = _toy(args, args.tmp / "kills" / "reference", "--out", str(ref))
  if p.finish(300) != 0:
    raise SystemExit("The uninterrupted toy run failed:\n" + "\n".join(_tail(p.text, 30)))
  results = []
  for case in cases.KILL_CASES:
    r = kill_case(args, case, ref)
    results.append(r)
    f = r["final"]
    print(f"[kills] {r['name']:18s} survived={r['survived']} lost={r['data_lost']} {f}")
  return results


# ----------------------------------------------------------------------------- bad inputs
def probe_inputs(args):
  scratch, ro = args.tmp / "inputs_scratch", args.tmp / "inputs_ro"
  scratch.mkdir(parents=True)
  ro.mkdir()
  (scratch / "a_file").write_text("not a directory")
  mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]
  mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
  if not mounted:
    ro.chmod(0o555)  # root writes there anyway: the case then reports the run going on
  fmt, results = dict(tmp=str(scratch), ro=str(ro)), []
  try:
    for name, raw, expect in cases.BAD_INPUTS:
      flags = dict(config=CONFIG, workdir=str(args.tmp / "inputs" / name))
      extra = []
      for a in (a.format(**fmt) for a in raw):
        key, _, value = a.partition("=")
        if key in flags:
          flags[key] = value
        else:
          extra.append(a)
      cmd = [sys.executable, "scripts/train.py"] + [f"--{k}={v}" for k, v in flags.items()]
      p = Proc(cmd + extra, args.env, args.repo)
      p.finish(args.timeout)
      r = dict(name=name, args=raw, expect=expect, rc=p.rc, seconds=p.seconds, hung=p.hung)
      r.update(cases.classify(p.text, expect.format(**fmt)), tail=_tail(p.text, 4))
      r["reached_compile"] = "Compiled the train step" in p.text
      if p.hung:
        r["outcome"] = "trained (timeout)" if "Start at step" in p.text else "hung"
      elif p.rc == 0:
        r["outcome"] = "accepted (exit 0)"
      elif r["internal_traceback"]:
        r["outcome"] = "internal traceback"
      else:
        r["outcome"] = "clear" if r["names_value"] else "unclear"
      r["fast"] = r["outcome"] == "clear" and not r["reached_compile"]
      results.append(r)
      print(f"[inputs] {name:24s} rc={p.rc} {p.seconds:6.1f}s {r['outcome']}")
  finally:
    if mounted:
      subprocess.run(["umount", str(ro)], check=False)
  return results


# ------------------------------------------------------------------------------ injection
def _launcher_run(args, p):
  cfg, wd = f"configs/shapes.py:stage=base{p}", f"gs://bucket/run{p}"
  ov, flag = f"--config.input.path={p}", f"--probe_flag={p}"
  cmd = [sys.executable, "scripts/launch_tpu.py", "run", "--dry_run", f"--tpu=tpu{p}", "--zone=z"]
  cmd += [f"--config={cfg}", f"--workdir={wd}", "--job=probe", f"--env=A={p}"]
  proc = _run(args, cmd + [f"--train_flag={flag}", ov])
  want = ["scripts/train.py", f"--config={cfg}", ov, f"--workdir={wd}", flag]
  r = dict(rc=proc.returncode, error=_tail(proc.stderr, 1))
  if proc.returncode == 0:
    toks, remotes = cases.remotes(proc.stdout)
    rtoks = shlex.split(remotes[0])
    r["literal"] = all(w in rtoks for w in want[1:] + [f"A={p}"]) and toks[5] == f"tpu{p}"
    got = cases.sandbox_run(remotes[0], args.tmp / "sandboxes")
    r["arrived"] = got == [{"argv": want, "A": p}]
    if not r["arrived"]:
      r["got"] = got
  return r


def probe_injection(args):
  canaries = args.tmp / "canaries"
  for d in (canaries, args.tmp / "sandboxes", args.tmp / "injection"):
    d.mkdir(parents=True)
  payloads = [t.format(c=canaries / f"PWNED{i}") for i, t in enumerate(cases.PAYLOADS)]
  launch = [sys.executable, "scripts/launch_tpu.py", "--dry_run", "--tpu=t", "--zone=z"]
  results = []
  for p in payloads:
    r = dict(payload=p, run=_launcher_run(args, p), refusals={})
    for what, extra in (
        ("run --job", ["run", f"--job=j{p}", "--config=c.py", "--workdir=gs://b/w"]),
        ("logs --job", ["logs", f"--job=j{p}"]),
        ("run --process_id_env", ["run", f"--process_id_env=V{p}", "--config=c", "--workdir=w"]),
    ):
      proc = _run(args, launch + extra)
      r["refusals"][what] = dict(rc=proc.returncode, error=_tail(proc.stderr, 1))
      r["refusals"][what]["refused"] = proc.returncode != 0 and "Traceback" not in proc.stderr
    man = [sys.executable, "scripts/launch_tpu.py", "manifest", "--accelerator_type=v5p-32"]
    man += ["--image=i", f"--config=c.py{p}", f"--workdir=gs://b/w{p}", f"--env=A={p}"]
    argv = cases.yaml_argv(_run(args, man).stdout)
    r["manifest_literal"] = f"--workdir=gs://b/w{p}" in argv and f"A={p}" in argv
    results.append(r)
  cfg = args.tmp / "injection" / "sweep_cfg.py"
  shapes = str(args.repo / "configs" / "shapes.py")
  cfg.write_text(cases.SWEEP_CONFIG.format(shapes=shapes, payloads=payloads))
  sweep = [sys.executable, "scripts/sweep.py", f"--config={cfg}"]
  printed = _run(args, sweep + [f"--workdir={args.tmp}/sweep", "--mode=print"])
  tpu = _run(args, sweep + ["--workdir=gs://b/s", "--mode=tpu", "--tpu=t", "--zone=z", "--dry_run"])
  ptoks = shlex.split(printed.stdout)
  box, rems = args.tmp / "sandboxes", cases.remotes(tpu.stdout)[1]
  arrived = [rec["argv"] for rem in rems for rec in cases.sandbox_run(rem, box)]
  for r, p in zip(results, payloads):
    ov = f"--config.input.path={p}"
    r["sweep_print_literal"] = ov in ptoks
    r["sweep_tpu_arrived"] = sum(ov in a for a in arrived) == 1
    checks = [v["refused"] for v in r["refusals"].values()] + [r["run"].get("literal")]
    checks += [r["run"].get("arrived"), r["manifest_literal"], ov in ptoks, r["sweep_tpu_arrived"]]
    r["ok"] = all(checks)
  executed, ok = sorted(x.name for x in canaries.iterdir()), sum(r["ok"] for r in results)
  print(f"[injection] {len(payloads)} payloads, {ok} literal or refused; ran: {executed}")
  sweep_rc = dict(print=printed.returncode, tpu=tpu.returncode)
  errors = _tail(printed.stderr + tpu.stderr, 4) if any(sweep_rc.values()) else []
  return dict(payloads=results, canaries_created=executed, sweep_rc=sweep_rc, errors=errors)


# ----------------------------------------------------------------------------------- data
def probe_data(args):
  results = []
  for name, want, expect in cases.DATA_CASES:
    cfg = cases.build_data_case(name, args.tmp / "data" / name)
    p = Proc([sys.executable, "-c", cases.READ_SOURCE, json.dumps(cfg)], args.env, args.repo)
    p.finish(90)
    m = re.search(r"^RESULT (.*)$", p.text, re.M)
    r = dict(name=name, want=want, hung=p.hung, rc=p.rc, **(json.loads(m.group(1)) if m else {}))
    said = expect in (r.get("error") or p.text)
    if want == "error":
      r["ok"] = "error" in r and said
    else:
      r["ok"] = bool(r.get("captions")) and "error" not in r and (want == "decode" or said)
    if not r["ok"]:
      r["tail"] = _tail(p.text)
    results.append(r)
    growth = f"{r.get('growth_mb', 0):.0f} MB"
    print(f"[data] {name:18s} ok={r['ok']} skipped={r.get('skipped')} +{growth} {r.get('error')}")
  mixed = args.tmp / "data" / "mixed"
  for name in cases.MIXED:
    cases.build_data_case(name, mixed)
  prep = [sys.executable, "scripts/prepare_data.py", "--source=folder", f"--path={mixed}/imgs"]
  prep += ["--name=probe_mixed", f"--output_dir={mixed}/tfds", "--num_workers=2"]
  train = [sys.executable, "scripts/train.py", f"--config={CONFIG}", f"--workdir={mixed}/wd"]
  train += ["--config.input.dataset=folder", f"--config.input.path={mixed}/imgs"]
  runs = {}
  for what, cmd, timeout in (("prepare_data", prep, 120), ("train", train, 480)):
    p = Proc(cmd, args.env, args.repo)
    p.finish(timeout)
    runs[what] = dict(rc=p.rc, hung=p.hung, seconds=p.seconds, peak_rss_mb=round(p.peak_mb or 0))
    runs[what]["tail"] = _tail(p.text, 3)
    print(f"[data] {what} on the mixed folder: {runs[what]}")
  final = mixed / "wd" / "final_metrics.json"
  if final.exists():
    runs["train"]["final_metrics"] = json.loads(final.read_text())
  return dict(cases=results, mixed=list(cases.MIXED), runs=runs)


# ----------------------------------------------------------------------------------- main
def summarize(res):
  """The figures: one row per count."""
  rows, n = [], lambda rs, f: sum(1 for r in rs if f(r))
  if "kills" in res:
    k = res["kills"]
    rows.append(
        ("kill cases survived (bit-identical)", f"{n(k, lambda c: c['survived'])}/{len(k)}")
    )
    signals, lost = sum(len(c["kills"]) for c in k), n(k, lambda c: c["data_lost"])
    rows.append(("signals sent / cases losing data", f"{signals} / {lost}"))
  if "inputs" in res:
    b = res["inputs"]
    rows.append(("bad inputs tried", len(b)))
    rows.append(("failed fast naming the value", n(b, lambda r: r["fast"])))
    rows.append(("internal traceback last", n(b, lambda r: r["internal_traceback"])))
    rows.append(("failed, value not named", n(b, lambda r: r["outcome"] == "unclear")))
    hung = n(b, lambda r: r["outcome"] == "hung")
    ran = n(b, lambda r: r["outcome"].startswith(("trained", "accepted")))
    rows.append(("hung / trained instead of failing", f"{hung} / {ran}"))
  if "injection" in res:
    i = res["injection"]["payloads"]
    rows.append(
        ("injection payloads / literal or refused", f"{len(i)} / {n(i, lambda r: r['ok'])}")
    )
    rows.append(("payloads executed (canaries)", len(res["injection"]["canaries_created"])))
  if "data" in res:
    d = res["data"]["cases"]
    ok, hung = n(d, lambda r: r["ok"]), n(d, lambda r: r["hung"])
    rows.append(("bad data cases / handled / hung", f"{len(d)} / {ok} / {hung}"))
    for what, r in res["data"]["runs"].items():
      rows.append(
          (f"mixed bad folder: {what}", f"rc {r['rc']}, {r['seconds']} s, hung {r['hung']}")
      )
  width = max(len(a) for a, _ in rows)
  return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="JSON file of every case.")
  ap.add_argument("--only", default="kills,inputs,injection,data")
  ap.add_argument("--repo", default=str(pathlib.Path(__file__).resolve().parents[1]))
  ap.add_argument("--timeout", type=float, default=150, help="Seconds per bad-input run.")
  ap.add_argument("--keep_tmp", action="store_true")
  args = ap.parse_args()
  sys.stdout.reconfigure(line_buffering=True)
  args.repo, args.tmp = pathlib.Path(args.repo).resolve(), pathlib.Path(tempfile.mkdtemp("_rp"))
  args.env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  args.env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  args.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.repo), os.getenv("PYTHONPATH")]))
  git = _run(args, ["git", "rev-parse", "HEAD"])
  res = dict(date=datetime.date.today().isoformat(), host=socket.gethostname(), cpus=os.cpu_count())
  res.update(command=shlex.join(["python", *sys.argv]), commit=git.stdout.strip() or None)
  probes = dict(kills=probe_kills, inputs=probe_inputs, injection=probe_injection, data=probe_data)
  try:
    for name in args.only.split(","):
      t0 = time.monotonic()
      res[name] = probes[name](args)
      res.setdefault("seconds", {})[name] = round(time.monotonic() - t0)
  finally:
    if not args.keep_tmp:
      shutil.rmtree(args.tmp, ignore_errors=True)
  res["summary"] = summarize(res)
  print(res["summary"])
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
  main()
