r"""How many cores one XLA:CPU convolution uses, beside torch's on the same shapes.

  python benchmarks/cpu_conv_threads.py [--batch 32 --size 32 --channels 64]
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \
      python benchmarks/cpu_conv_threads.py
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/cpu_conv_threads.py

For a 3x3 "SAME" convolution (NHWC), prints GFLOP/s and process CPU time / wall time for the
forward pass, the input gradient and the weight gradient, with the batch split over every
visible JAX device (one device unless XLA_FLAGS adds more); then torch's forward and
forward+backward (channels-last) if torch imports. A CPU/wall ratio near 1 on a multi-core
machine means the kernel runs on one core. BENCHMARKS.md ("Where the CPU time goes") has
the figures of the development machine.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

_DN = ("NHWC", "HWIO", "NHWC")


def _time(fn, *args, calls):
  jax.block_until_ready(fn(*args))
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  wall = (time.perf_counter() - wall) / calls
  return wall, (time.process_time() - cpu) / calls / wall


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--calls", type=int, default=10)
  args = parser.parse_args()
  b, s, c = args.batch, args.size, args.channels
  if b % jax.device_count():
    parser.error(f"--batch {b} must divide over {jax.device_count()} devices")
  flop = 2 * b * s * s * c * c * 9
  mesh = Mesh(np.array(jax.devices()), ("data",))
  split = NamedSharding(mesh, P("data"))
  x = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (b, s, s, c)), split)
  g = jax.device_put(jnp.ones((b, s, s, c)), split)
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, c)) * 0.05

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)

  kernels = {
      "forward": (jax.jit(conv), (x, w)),
      "input grad": (jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]), (x, w, g)),
      "weight grad": (
          jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
          (x, w, g),
      ),
  }
  print(
      f"3x3 conv {b}x{s}x{s}x{c} -> {c}, float32, {os.cpu_count()} cores, "
      f"{jax.device_count()} JAX device(s), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  for name, (fn, fn_args) in kernels.items():
    wall, ratio = _time(fn, *fn_args, calls=args.calls)
    print(
        f"  jax   {name:12s} {wall * 1e3:8.2f} ms {flop / wall / 1e9:7.1f} GFLOP/s  "
        f"cpu/wall {ratio:.2f}"
    )
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("  torch: not installed")
    return
  xt = torch.randn(b, c, s, s).to(memory_format=torch.channels_last).requires_grad_()
  wt = (torch.randn(c, c, 3, 3) * 0.05).requires_grad_()

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(xt, wt, padding=1)

  def forward_backward():
    torch.nn.functional.conv2d(xt, wt, padding=1).sum().backward()

  for name, fn, mult in (("forward", forward, 1), ("fwd+bwd", forward_backward, 3)):
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.calls):
      fn()
    wall = (time.perf_counter() - wall) / args.calls
    ratio = (time.process_time() - cpu) / args.calls / wall
    print(
        f"  torch {name:12s} {wall * 1e3:8.2f} ms {mult * flop / wall / 1e9:7.1f} GFLOP/s  "
        f"cpu/wall {ratio:.2f}  ({torch.get_num_threads()} threads, torch {torch.__version__})"
    )


if __name__ == "__main__":
  main()
