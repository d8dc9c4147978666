r"""Cost of a classifier-free-guided sampling step relative to an unguided one.

Guidance runs the conditional and unconditional inputs as one batched forward
pass (StagePipeline.denoise_fn), so a guided step should cost at most ~2x an
unguided one (issue target: <= 2.1x). Both are timed in the same process, on
the same model and batch, as whole jitted sampling loops (compilation
excluded; median of repeats); the figure is the ratio.

  python benchmarks/guidance_cost.py --model shapes_base16 --variant tiny \
      --batch 32 --steps 16
"""

import argparse
import statistics
import time

import jax
from flax.core import meta

from imagen_jax import diffusion
from imagen_jax import models
from imagen_jax import pipeline as pipeline_lib


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="shapes_base16")
  p.add_argument("--variant", default="tiny")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--text_len", type=int, default=80)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()

  model = models.get_model(args.model, args.variant)
  pipe = pipeline_lib.StagePipeline(model, diffusion.get_schedule("cosine"))
  params = meta.unbox(pipe.init(jax.random.PRNGKey(0))["params"])
  b = pipe.dummy_inputs(args.batch, args.text_len)
  emb = jax.random.normal(jax.random.PRNGKey(1), b["text_emb"].shape)
  lowres = b.get("lowres")

  def make(scale):
    @jax.jit
    def run(params, rng):
      return pipe.sample(
          params,
          emb,
          b["text_mask"],
          rng,
          sampler="ddim",
          num_steps=args.steps,
          guidance_scale=scale,
          threshold="dynamic",
          lowres=lowres,
      )

    return run

  timings = {}
  for name, scale in (("unguided", 1.0), ("guided", 3.0)):
    fn = make(scale)
    fn(params, jax.random.PRNGKey(0)).block_until_ready()  # compile
    times = []
    for r in range(args.repeats):
      start = time.perf_counter()
      fn(params, jax.random.PRNGKey(r)).block_until_ready()
      times.append((time.perf_counter() - start) / args.steps)
    timings[name] = statistics.median(times)
  ratio = timings["guided"] / timings["unguided"]
  print(
      f"device: {jax.devices()[0].device_kind}; model {args.model}/"
      f"{args.variant}, batch {args.batch}, {args.steps} ddim steps"
  )
  for name, sec in timings.items():
    print(f"{name:>9}: {sec * 1e3:8.1f} ms/step  {args.batch / sec:8.1f} img-steps/s")
  print(f"guided / unguided per step: {ratio:.2f}x")


if __name__ == "__main__":
  main()
