"""Launching training on Cloud TPU: gcloud commands for TPU VM slices (`tpu_vm`), a JobSet
manifest for GKE (`gke`), the accelerator table both use (`accelerators`), the one train
command every path runs (`train_command`) and the launcher's actions (`actions`); sweeps of
a config's `sweep(add, arg)` (`sweep`) and the table of their results (`sweep_summary`).
Functions building argv lists and dicts, and running them; no JAX (only `sweep.expand`
imports the models, to validate each run's config). scripts/launch_tpu.py and
scripts/sweep.py are their command lines."""
