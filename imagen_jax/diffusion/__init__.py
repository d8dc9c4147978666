"""Pure array math of continuous-time Gaussian diffusion (no Flax, no configs)."""

from imagen_jax.diffusion.cond_aug import augment_lowres
from imagen_jax.diffusion.cond_aug import blur_lowres
from imagen_jax.diffusion.guidance import apply_threshold
from imagen_jax.diffusion.guidance import cfg
from imagen_jax.diffusion.guidance import DEFAULT_PERCENTILE
from imagen_jax.diffusion.guidance import dynamic_threshold
from imagen_jax.diffusion.guidance import static_threshold
from imagen_jax.diffusion.guidance import THRESHOLDS
from imagen_jax.diffusion.losses import diffusion_loss
from imagen_jax.diffusion.losses import loss_weight
from imagen_jax.diffusion.process import PREDICTIONS
from imagen_jax.diffusion.process import q_sample
from imagen_jax.diffusion.process import target
from imagen_jax.diffusion.process import x0_eps_from_prediction
from imagen_jax.diffusion.samplers import sample
from imagen_jax.diffusion.samplers import SAMPLERS
from imagen_jax.diffusion.schedules import alpha_sigma_from_log_snr
from imagen_jax.diffusion.schedules import get_schedule
from imagen_jax.diffusion.schedules import Schedule
from imagen_jax.diffusion.schedules import SCHEDULES
from imagen_jax.diffusion.time_grid import default_time_grid
from imagen_jax.diffusion.time_grid import TIME_GRIDS
from imagen_jax.diffusion.train_masks import random_box_masks
from imagen_jax.diffusion.steering import classifier_guidance
from imagen_jax.diffusion.steering import GUIDE_ON
from imagen_jax.diffusion.steering import similarity_guidance
