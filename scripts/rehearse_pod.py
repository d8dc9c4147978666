r"""Rehearses the whole pod workflow on this machine, offline, with real parts.

  python scripts/rehearse_pod.py --out /tmp/rehearsal
  unshare -n bash -c 'ip link set lo up && python scripts/rehearse_pod.py --out /tmp/r'

A GCS API server (fake-gcs-server) on 127.0.0.1 stands in for Cloud Storage and a stand-in
`gcloud` runs each TPU worker as a local process; everything else is the project's own
commands: prepare_data.py, precompute_text_embeddings.py, launch_tpu.py (copy, run, kill,
run again), sample.py, eval_fid.py. Writes OUT/rehearsal.json and prints a table; exits 1
unless every phase passed. The phases: imagen_jax/rehearsal/run.py.
"""

import json
import sys

from absl import app
from absl import flags

from imagen_jax.rehearsal import run as rehearsal

_OUT = flags.DEFINE_string("out", None, "A new local folder for the rehearsal.", required=True)
_WORKERS = flags.DEFINE_integer("num_workers", 2, "TPU workers (local processes).")
_DEVICES = flags.DEFINE_integer("devices_per_worker", 2, "Virtual CPU devices per worker.")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 12, "Base stage steps.")
_SR_STEPS = flags.DEFINE_integer("sr_steps", 6, "SR stage steps.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = rehearsal.Rehearsal(
      _OUT.value,
      num_workers=_WORKERS.value,
      devices_per_worker=_DEVICES.value,
      base_steps=_BASE_STEPS.value,
      sr_steps=_SR_STEPS.value,
      log=lambda line: print(line, flush=True),
  ).run()
  print(rehearsal.table(result))
  print(json.dumps({"rehearsal": f"{_OUT.value}/rehearsal.json", "ok": result["ok"]}))
  sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
  app.run(main)
