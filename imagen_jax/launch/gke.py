"""A Kubernetes JobSet that runs scripts/train.py on GKE TPU slices (the path of xpk and
maxdiffusion at scale): `kubectl apply -f manifest.yaml` on a cluster with JobSet installed
and one TPU node pool per slice.

The manifest, field by field:
  apiVersion jobset.x-k8s.io/v1alpha2, kind JobSet   the JobSet controller's API.
  metadata.annotations
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
                        each slice's Job gets a node pool of its own (one pool is one slice).
  spec.failurePolicy.maxRestarts  how often the whole JobSet is recreated after a pod fails;
                        the trainer resumes from its last checkpoint in --workdir.
  spec.network.enableDNSHostnames: true   a headless service named after the JobSet: pod j
                        of slice i is reachable at <jobset>-slice-<i>-<j>.<jobset>.
  spec.replicatedJobs[0] (name `slice`), replicas = number of slices; its Job:
    parallelism = completions = hosts per slice   one pod per TPU VM of the slice.
    completionMode: Indexed   each pod has its completion index, from which GKE sets
                        TPU_WORKER_ID and TPU_WORKER_HOSTNAMES (what JAX reads on GKE).
    backoffLimit: 0     a failed pod fails its Job (and the JobSet restarts everything:
                        the other workers cannot continue without it).
  pod template:
    nodeSelector cloud.google.com/gke-tpu-accelerator (tpu-v5p-slice, ...) and
                 cloud.google.com/gke-tpu-topology (2x2x4, ...)   the node pool's TPU slice.
    hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet   the host's NICs for the
                        data-centre network between slices, cluster DNS still resolving.
    restartPolicy: Never   restarts belong to the JobSet.
    terminationGracePeriodSeconds   time between SIGTERM (preemption, `kubectl delete`) and
                        SIGKILL; the trainer saves a checkpoint in it.
    container: `image` (the checkout with its requirements and jax[tpu] installed, at
               `working_dir`), `command` = train_command.train_argv (the same command a TPU
               VM worker runs), resources.limits google.com/tpu = chips per host,
               ports 8471 (TPU runtime), 8080 (Megascale, between slices), 8482 (JAX's
               coordinator on TPU).
    env, only with several slices (libtpu's Megascale joins them; JAX numbers the processes
        slice by slice from the same variables):
        MEGASCALE_COORDINATOR_ADDRESS   the first pod's DNS name, <jobset>-slice-0-0.<jobset>
        MEGASCALE_NUM_SLICES            the number of slices
        MEGASCALE_SLICE_ID              the pod's annotation jobset.sigs.k8s.io/job-index
                                        (downward API): which slice it belongs to.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import yaml

from imagen_jax.launch import accelerators

API_VERSION = "jobset.x-k8s.io/v1alpha2"
REPLICATED_JOB = "slice"
TPU_RESOURCE = "google.com/tpu"
PORTS = (8471, 8080, 8482)
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def jobset(
    *,
    name: str,
    image: str,
    accelerator_type: str,
    command: Sequence[str],
    num_slices: int = 1,
    topology: str | None = None,
    max_restarts: int = 0,
    working_dir: str | None = None,
    termination_grace_s: int = 300,
) -> dict[str, Any]:
  """The JobSet manifest (a dict) running `command` on every host of `num_slices` slices."""
  shape = accelerators.slice_shape(accelerator_type, topology)
  if not _DNS_LABEL.fullmatch(name):
    raise ValueError(
        f"JobSet name {name!r} must be a DNS label: lower-case letters, digits "
        "and '-', starting with a letter (e.g. base64-paper)."
    )
  last_pod = f"{name}-{REPLICATED_JOB}-{num_slices - 1}-{shape.hosts - 1}"
  if len(last_pod) > 63:
    raise ValueError(
        f"JobSet name {name!r} is too long: pod hostname {last_pod!r} exceeds 63 characters."
    )
  if num_slices < 1:
    raise ValueError(f"num_slices must be >= 1, got {num_slices}.")
  if not image:
    raise ValueError("The JobSet needs a container image (--image).")
  if not command:
    raise ValueError("The JobSet needs a command.")
  container: dict[str, Any] = {
      "name": "train",
      "image": image,
      "command": list(command),
      "ports": [{"containerPort": p} for p in PORTS],
      "resources": {"limits": {TPU_RESOURCE: shape.chips_per_host}},
  }
  if working_dir:
    container["workingDir"] = working_dir
  if num_slices > 1:
    container["env"] = [
        {"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": f"{name}-{REPLICATED_JOB}-0-0.{name}"},
        {"name": "MEGASCALE_NUM_SLICES", "value": str(num_slices)},
        {
            "name": "MEGASCALE_SLICE_ID",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}
            },
        },
    ]
  pod_spec = {
      "restartPolicy": "Never",
      "hostNetwork": True,
      "dnsPolicy": "ClusterFirstWithHostNet",
      "terminationGracePeriodSeconds": termination_grace_s,
      "nodeSelector": {
          "cloud.google.com/gke-tpu-accelerator": shape.gke_accelerator,
          "cloud.google.com/gke-tpu-topology": shape.topology,
      },
      "containers": [container],
  }
  return {
      "apiVersion": API_VERSION,
      "kind": "JobSet",
      "metadata": {
          "name": name,
          "annotations": {
              "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
          },
      },
      "spec": {
          "failurePolicy": {"maxRestarts": max_restarts},
          "network": {"enableDNSHostnames": True},
          "replicatedJobs": [
              {
                  "name": REPLICATED_JOB,
                  "replicas": num_slices,
                  "template": {
                      "spec": {
                          "parallelism": shape.hosts,
                          "completions": shape.hosts,
                          "backoffLimit": 0,
                          "completionMode": "Indexed",
                          "template": {"spec": pod_spec},
                      }
                  },
              }
          ],
      },
  }


def to_yaml(manifest: dict[str, Any]) -> str:
  return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=100)


def jobset_name(job: str) -> str:
  """A DNS-label JobSet name from a job name (`lr=0.0003,b` -> `lr-0-0003-b`)."""
  name = re.sub(r"[^a-z0-9]+", "-", job.lower()).strip("-")
  name = name if name[:1].isalpha() else f"train-{name}".rstrip("-")
  return name[:40].rstrip("-")
