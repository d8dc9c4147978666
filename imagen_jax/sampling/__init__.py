"""Cascade sampling from trained stage workdirs."""

from imagen_jax.diffusion import default_time_grid  # the grid a StageSettings(time_grid=None) uses
from imagen_jax.sampling.cascade import CascadeSampler
from imagen_jax.sampling.cascade import check_chain
from imagen_jax.sampling.cascade import load_stage
from imagen_jax.sampling.cascade import Stage
from imagen_jax.sampling.cascade import StageSettings
from imagen_jax.sampling.cascade import to_uint8
from imagen_jax.sampling.edit import Edit
from imagen_jax.sampling.outputs import labelled_grid
from imagen_jax.sampling.outputs import legend_grid
from imagen_jax.sampling.outputs import write_samples
