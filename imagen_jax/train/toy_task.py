"""A toy `TrainTask` (a two-conv denoiser on sine images) and its config: a stand-in for a
cascade stage that tests the trainer without the real pipeline (tests/train, tests/parallel)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from imagen_jax.train.task import TrainTask


class ToyNet(nn.Module):
  """Conv -> swish -> conv, params annotated with logical axes."""

  features: int = 16

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal()
    k1 = self.param(
        "conv1",
        nn.with_logical_partitioning(init, (None, None, "conv_in", "embed")),
        (3, 3, x.shape[-1], self.features),
    )
    b1 = self.param(
        "bias1", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (self.features,)
    )
    k2 = self.param(
        "conv2",
        nn.with_logical_partitioning(init, (None, None, "embed", "conv_out")),
        (3, 3, self.features, x.shape[-1]),
    )
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn) + b1
    h = nn.swish(h)
    return x + jax.lax.conv_general_dilated(h, k2, (1, 1), "SAME", dimension_numbers=dn)


def make_loss_fn(net: ToyNet, noise_scale: float):
  """Denoising MSE; with `noise_scale == 0` the loss does not depend on the RNG."""

  def loss_fn(params, batch, rng):
    x = batch["image"]
    noisy = x + noise_scale * jax.random.normal(rng, x.shape, x.dtype)
    pred = net.apply({"params": params}, noisy)
    loss = jnp.mean((pred - x) ** 2)
    return loss, {"mse": loss}

  return loss_fn


class ToyIterator:
  """Deterministic global batches (from seed and index); this process gets its row slice.

  `nan_steps`: 1-based steps whose batch is all NaN (non-finite injection).
  """

  def __init__(
      self,
      global_batch: int,
      resolution: int,
      seed: int,
      process_index: int,
      process_count: int,
      nan_steps: tuple[int, ...] = (),
  ):
    self.global_batch, self.resolution, self.seed = global_batch, resolution, seed
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self.nan_steps = set(nan_steps)
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rs = np.random.RandomState([self.seed, self.index])
    r = self.resolution
    yy, xx = np.mgrid[0:r, 0:r] / r
    freq = rs.uniform(0.5, 3.0, size=(self.global_batch, 1, 1, 3))
    phase = rs.uniform(0, 6.28, size=(self.global_batch, 1, 1, 3))
    img = np.sin(freq * (xx[None, ..., None] + yy[None, ..., None]) * 6.28 + phase)
    img = img.astype(np.float32)[self.offset : self.offset + self.local]
    self.index += 1
    if self.index in self.nan_steps:
      img = np.full_like(img, np.nan)
    return {"image": img, "caption": np.array(["toy"] * self.local, dtype=object)}

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])


def toy_task_factory(config: Any, mesh: Mesh, local_batch_size: int) -> TrainTask:
  del mesh
  if int(config.input.resolution) != int(config.model.resolution):
    raise ValueError(
        f"config.input.resolution={config.input.resolution} but the toy model's "
        f"resolution is {config.model.resolution}"
    )
  net = ToyNet(features=int(config.model.features))
  r = int(config.model.resolution)
  it = ToyIterator(
      int(config.batch_size),
      r,
      int(config.seed),
      jax.process_index(),
      jax.process_count(),
      tuple(config.input.nan_steps),
  )
  assert it.local == local_batch_size

  def sample_fn(params, captions, rng):
    x = jax.random.normal(rng, (len(captions), r, r, 3))
    return jnp.clip(net.apply({"params": params}, x), -1, 1)

  return TrainTask(
      init_variables=lambda rng: net.init(rng, jnp.zeros((1, r, r, 3))),
      loss_fn=make_loss_fn(net, float(config.model.noise_scale)),
      iterator=it,
      host_to_numeric=lambda b: {"image": b["image"]},
      sample_fn=sample_fn,
      sample_prompts=list(config.sample_prompts),
  )


def toy_config(**overrides: Any) -> ml_collections.ConfigDict:
  """A complete trainer config for the toy task (top-level keys overridable)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 8
  c.batch_size = 16
  c.log_every_steps = 2
  c.nonfinite = "skip"
  c.nonfinite_max_skips = 0
  c.init_from = ""
  c.resume_from = ""
  c.sample_every_steps = 0
  c.sample_prompts = ["a toy", "two toys", "a red toy", "a big toy"]
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=4, keep=2, async_save=True))
  c.parallel = ml_collections.ConfigDict(
      dict(
          mode="jit",
          mesh=[("data", -1), ("fsdp", 1)],
          min_fsdp_size_mb=0.0,
          logical_rules=[("embed", None), ("conv_in", None), ("conv_out", None)],
      )
  )
  c.optim = ml_collections.ConfigDict(
      dict(
          name="adam",
          lr=3e-3,
          warmup_steps=2,
          decay="cosine",
          b1=0.9,
          b2=0.99,
          eps=1e-8,
          weight_decay=0.0,
          grad_clip_norm=1.0,
      )
  )
  c.ema = ml_collections.ConfigDict(dict(decay=0.999, warmup=True))
  c.model = ml_collections.ConfigDict(
      dict(name="toy", variant="tiny", overrides={}, features=16, resolution=8, noise_scale=0.1)
  )
  c.input = ml_collections.ConfigDict(dict(resolution=8, nan_steps=[]))
  c.text = ml_collections.ConfigDict(dict(encoder="none", cache_dir=""))
  c.update_from_flattened_dict(overrides)
  return c
