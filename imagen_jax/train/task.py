"""What the loop trains: the `TrainTask` contract, its factory type, and the halt error.

`loop.train(config, workdir, task_factory)` calls `task_factory(config, mesh,
local_batch_size)` once; `stage_task.build_stage_task` is the cascade stage's factory and
`toy_task.toy_task_factory` the tests' stand-in. Nothing here imports the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
from jax.sharding import Mesh

from imagen_jax.train.step import LossFn


@dataclasses.dataclass
class TrainTask:
  """What the loop trains.

  init_variables: rng -> boxed Flax variables with a `params` collection (eval_shape-able).
  loss_fn: (params, device_batch, rng) -> (loss, metrics).
  iterator: yields this process's host batches; `get_state()` / `set_state(state)`.
  host_to_numeric: host batch -> dict of numeric numpy arrays (tokenize, drop strings).
  preprocess: optional pure (frozen_params, global_batch) -> loss batch, jitted by the
    placement and run outside the gradient (frozen text encoder, uint8 -> [-1, 1]).
  frozen_params: the preprocess's params, already on devices (never in the optimizer).
  sample_fn: optional (ema_params, captions, rng) -> images [N, H, W, 3] (uint8, or float
    in [-1, 1]), N = len(captions): the one sampler of the periodic grids and of the
    `config.evals` evaluators (imagen_jax.evaluation.evaluators).
  sample_prompts: the periodic grids' captions (none: no grids).
  grid_fn: optional (ema_params, rng) -> images: the periodic grid of a stage that does not
    sample from captions alone (an SR stage's fixed low-res inputs); used instead of
    sample_fn + sample_prompts.
  """

  init_variables: Callable[[jax.Array], Any]
  loss_fn: LossFn
  iterator: Iterator[dict]
  host_to_numeric: Callable[[dict], dict]
  preprocess: Callable[[Any, dict], dict] | None = None
  frozen_params: Any = None
  sample_fn: Callable[[Any, Sequence[str], jax.Array], Any] | None = None
  sample_prompts: Sequence[str] = ()
  grid_fn: Callable[[Any, jax.Array], Any] | None = None


TaskFactory = Callable[[Any, Mesh, int], TrainTask]

# `config.task`: what a stage config trains (loop.train_and_evaluate picks the factory):
# a cascade diffusion stage (stage_task), a noise-aware classifier (classifier_task), a
# noise-aware CLIP (clip_task) or the unCLIP diffusion prior (prior_task).
TASKS = ("diffusion", "classifier", "clip", "prior")


class TrainingHalted(FloatingPointError):
  """A non-finite loss or gradient norm under `config.nonfinite = "halt"`."""
