"""Multi-process set-up and small cross-process helpers."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Set by scripts/launch_tpu.py on every worker (as big_vision's BV_JAX_INIT): the
# environment of a TPU VM shell does not always say that it is one worker of a pod
# (libtpu finds that out from the VM's metadata), so the launcher says it.
DISTRIBUTED_ENV = "IMAGEN_JAX_DISTRIBUTED"


_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


def _count(var: str) -> int:
  try:
    return int(os.environ.get(var, "1"))
  except ValueError:
    raise ValueError(f"${var}={os.environ[var]!r} is not a process count.") from None


def detected_cluster() -> str | None:
  """The multi-process cluster this process runs in, where `jax.distributed.initialize()`
  configures itself from the environment (JAX's cluster plugins), else None.

  * "tpu_pod": `IMAGEN_JAX_DISTRIBUTED=1` (set by the TPU launcher: a TPU VM shell does not
    always carry a variable that says it is one worker of a pod; libtpu reads the VM's
    metadata), or GKE's `TPU_WORKER_HOSTNAMES` with several hosts, or Megascale's variables;
  * "slurm": an `srun` step of more than one task (JAX's SlurmCluster reads `SLURM_*`);
  * "openmpi": `mpirun` with more than one rank (`OMPI_MCA_orte_hnp_uri`).
  A single-task SLURM or MPI job is not a cluster: nothing to initialise.
  """
  if os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes"):
    return "tpu_pod"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
    return "tpu_pod"
  if all(v in os.environ for v in _SLURM_VARS) and _count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and _count("OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  return None


def wait_for_coordinator(address: str, timeout_s: float, process_id: int) -> None:
  """Returns once `address` (host:port) accepts a TCP connection; ConnectionError naming it
  after `timeout_s` (JAX would abort the process with a bare DEADLINE_EXCEEDED instead)."""
  host, sep, port = address.rpartition(":")
  if not sep or not port.isdigit():
    raise ValueError(f"--coordinator_address={address!r}; expected HOST:PORT.")
  deadline = time.monotonic() + float(timeout_s)
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConnectionError(
            f"Process {process_id}: the coordinator {address} did not answer within "
            f"{timeout_s:g} s ({type(e).__name__}: {e}). Start process 0 with the same "
            "--coordinator_address, check the host, port and firewall, or allow longer with "
            "--connect_timeout_s."
        ) from None
      time.sleep(0.5)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int | None = None,
    connect_timeout_s: float = 300.0,
) -> bool:
  """Calls `jax.distributed.initialize` when needed; returns whether it did.

  Explicit flags (all three, or none) win; otherwise a cluster JAX configures by itself
  (`detected_cluster`: TPU pod or GKE TPU slice, SLURM, Open MPI) gets
  `jax.distributed.initialize()` with no arguments. Single-process runs do nothing. Must run
  before any other JAX call touches the devices. `heartbeat_timeout_s` (explicit flags only;
  default JAX's 100 s): how long a silent process counts as alive; oversubscribed CPU hosts
  compiling at once can miss heartbeats for longer. `connect_timeout_s` (explicit flags):
  how long processes wait for each other to join; a process other than 0 that cannot reach
  the coordinator in that time gets a ConnectionError naming the address.
  """
  given = [coordinator_address is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError(
        "--coordinator_address, --num_processes and --process_id go together; got "
        f"{coordinator_address!r}, {num_processes!r}, {process_id!r}."
    )
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"process_id {process_id} is not in [0, {num_processes}).")
    if num_processes == 1:
      return False
    extra = (
        {}
        if heartbeat_timeout_s is None
        else {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
    )
    if process_id != 0:
      wait_for_coordinator(coordinator_address, connect_timeout_s, process_id)
    jax.distributed.initialize(
        initialization_timeout=max(1, int(connect_timeout_s)),
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **extra,
    )
    how = "explicit flags"
  else:
    how = detected_cluster()
    if how is None:
      return False
    jax.distributed.initialize()
  logging.info(
      "jax.distributed (%s): process %d of %d, %d local / %d global devices.",
      how,
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return True


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Every process waits here until all have arrived (no-op in a single process).

  A key-value barrier of the distributed runtime, not a device collective: on CPU clusters
  the first collective of a program sets up a gloo context, which times out after 30 s, and
  compile times differ across hosts by more than that (compile-cache hits, busy cores), so
  the loop waits here after compiling, before the first step. `name` must be unique.
  """
  if jax.process_count() == 1:
    return
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: call on all processes)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))


def sum_over_processes(values: list[int]) -> list[int]:
  """Each entry summed over the processes (a collective: call on all processes)."""
  if jax.process_count() == 1:
    return [int(v) for v in values]
  return [
      int(v)
      for v in np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64))).sum(
          axis=0
      )
  ]


def allgather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, as a list indexed by process (a collective)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
  padded = np.zeros((int(np.max(lengths)),), np.uint8)
  padded[: data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [
      json.loads(bytes(row[: int(n)]).decode("utf-8"))
      for row, n in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1))
  ]
