"""Cloud TPU accelerator types: TPU VM software versions and GKE slice shapes.

An accelerator type is `<generation>-<N>`: v4-32, v5litepod-16 (v5e; `v5e-16` is accepted
too), v5p-64, v6e-8. N counts TensorCores on v4 and v5p (two per chip) and chips on v5e and
v6e. On GKE a slice is a node pool of `hosts` VMs with `chips_per_host` chips each, selected
by `cloud.google.com/gke-tpu-accelerator` and `cloud.google.com/gke-tpu-topology`.
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Generation:
  gke_accelerator: str  # the node label cloud.google.com/gke-tpu-accelerator
  runtime_version: str  # default TPU VM software version (gcloud --version)
  cores_per_chip: int  # what N of `<generation>-N` counts per chip
  topologies: dict[int, str]  # chips -> default topology
  single_host_chips: int  # the most chips a single-host slice has (one VM)


_TOPOLOGY_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
_TOPOLOGY_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
GENERATIONS = {
    "v4": Generation("tpu-v4-podslice", "tpu-ubuntu2204-base", 2, _TOPOLOGY_3D, 4),
    "v5litepod": Generation("tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite", 1, _TOPOLOGY_2D, 8),
    "v5p": Generation("tpu-v5p-slice", "v2-alpha-tpuv5", 2, _TOPOLOGY_3D, 4),
    "v6e": Generation("tpu-v6e-slice", "v2-alpha-tpuv6e", 1, _TOPOLOGY_2D, 8),
}
ALIASES = {"v5e": "v5litepod"}
CHIPS_PER_HOST = 4  # every multi-host slice of these generations


@dataclasses.dataclass(frozen=True)
class SliceShape:
  accelerator_type: str
  gke_accelerator: str
  topology: str
  chips: int
  hosts: int
  chips_per_host: int


def _split(accelerator_type: str) -> tuple[str, Generation, int]:
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
  name = ALIASES.get(m.group(1), m.group(1)) if m else None
  if name not in GENERATIONS:
    known = ", ".join(f"{g}-N" for g in [*GENERATIONS, *ALIASES])
    raise ValueError(
        f"Unknown TPU accelerator type {accelerator_type!r}; known: {known} "
        "(e.g. v4-32, v5litepod-16, v5p-64, v6e-8)."
    )
  return name, GENERATIONS[name], int(m.group(2))


def runtime_version(accelerator_type: str) -> str:
  """The default TPU VM software version for `accelerator_type`'s generation."""
  try:
    return _split(accelerator_type)[1].runtime_version
  except ValueError as e:
    raise ValueError(
        f"No default --version for accelerator type {accelerator_type!r}; pass "
        f"--version (known: {', '.join(GENERATIONS)})."
    ) from e


def slice_shape(accelerator_type: str, topology: str | None = None) -> SliceShape:
  """Chips, hosts and GKE topology of one slice; `topology` overrides the default one."""
  name, gen, n = _split(accelerator_type)
  if n % gen.cores_per_chip:
    raise ValueError(
        f"{accelerator_type!r}: {name}-N counts TensorCores, "
        f"{gen.cores_per_chip} per chip; N={n} is not a whole number of chips."
    )
  chips = n // gen.cores_per_chip
  rank = len(next(iter(gen.topologies.values())).split("x"))
  if topology is None:
    if chips not in gen.topologies:
      raise ValueError(
          f"No default GKE topology for {accelerator_type!r} ({chips} chips); "
          f"pass --topology (defaults exist for {sorted(gen.topologies)} chips)."
      )
    topology = gen.topologies[chips]
  dims = topology.split("x")
  if len(dims) != rank or not all(d.isdigit() and int(d) > 0 for d in dims):
    raise ValueError(
        f"Topology {topology!r} for {accelerator_type!r} must be {rank} positive "
        f"integers joined by 'x' (e.g. {gen.topologies[max(gen.topologies)]})."
    )
  if math.prod(int(d) for d in dims) != chips:
    raise ValueError(
        f"Topology {topology!r} has {math.prod(int(d) for d in dims)} chips; "
        f"{accelerator_type!r} has {chips}."
    )
  per_host = chips if chips <= gen.single_host_chips else CHIPS_PER_HOST
  return SliceShape(
      accelerator_type, gen.gke_accelerator, topology, chips, chips // per_host, per_host
  )
