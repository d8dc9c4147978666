"""Launching training on Cloud TPU: gcloud commands for TPU VM slices (`tpu_vm`), a JobSet
manifest for GKE (`gke`), the accelerator table both use (`accelerators`) and the one train
command every path runs (`train_command`). Pure functions building argv lists and dicts; no
JAX. scripts/launch_tpu.py is their command line."""
