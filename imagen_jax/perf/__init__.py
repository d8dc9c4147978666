"""Benchmark tooling: what scripts/benchmark.py and benchmarks/ measure, and how it is reported.

Modules (import them directly; this package imports nothing on its own):
  benchmark      timed train step (the trainer's), sampling loops and input pipeline;
  run            one benchmark run: the imagen-pytorch peer in its own process, then ours;
  report         ratios ours / theirs, the printed table, the JSON file;
  peer_spec      a stage config in imagen-pytorch's `Unet` / `Imagen` arguments;
  trace_summary  a `jax.profiler` trace folded by op kind and model scope;
  program_size   StableHLO op counts of a lowered program (benchmarks/hlo_size.py).
"""
