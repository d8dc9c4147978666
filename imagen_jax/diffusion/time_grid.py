"""The times at which a sampler evaluates the network.

A grid is N times t_0 > t_1 > ... > t_{N-1} in [0, 1]; the samplers step between
consecutive ones and the last evaluation returns its x0 estimate (the step to zero noise).
In the VE view of a VP schedule, sigma = sigma_t / alpha_t = exp(-log_snr / 2).

* ``log_snr``: uniform in log-SNR, from sigma_max down to sigma_min. DPM-Solver's steps
  are uniform in lambda = log_snr / 2 too, so every step has the same size h in the
  variable the solver integrates over.
* ``trimmed_log_snr`` (the default of dpmpp_2m): the same down to TRIMMED_SIGMA_MIN = 0.03
  instead of EDM's 0.002. On Gaussian data N(0.3, 0.2^2) with its exact denoiser
  (benchmarks/sampler_grid.py), dpmpp_2m at 25 evaluations keeps mean and std within 0.7%
  on both schedules (log_snr: within 1.2%; uniform_t: std -5.4% cosine, -19% linear). Why
  trim: on the shapes world's trained base (dpmpp_2m 24 steps, dynamic thresholding, 96
  held-out and 96 validation captions) log_snr lowered accuracy without CFG (held-out 0.483
  vs uniform_t's 0.552, validation 0.625 vs 0.692) and slightly at w = 3 (0.758 vs 0.777,
  0.827 vs 0.835); trimmed_log_snr gives 0.525 / 0.660 at w = 1 and 0.773 / 0.840 at w = 3:
  on par where CFG is on, and without it closer to uniform_t, whose lost variance (its last
  evaluation at sigma 0.06) sharpens unguided samples. Evaluations below sigma 0.03 (cosine:
  t < 0.02, 2% of training draws) add little: the last x0 estimate there loses 1.1% of a
  std 0.2 Gaussian's spread, 0.2% of a std 0.5 image's.
* ``karras`` (the default of edm_heun): Karras et al. 2022 (EDM), eq. 5 with rho = 7:
  sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  denser near sigma_min.
* ``uniform_t`` (the default of ddpm and ddim): t_k = 1 - k / N, k = 0..N-1 (it
  spends steps in the tails of the clipped log-SNR range: at N = 25 the last evaluation is
  at t = 0.04, whose x0 estimate is still blurred, so Gaussian samples lose variance).

sigma range: EDM's [0.002, 80] (chosen there for data of std 0.5, as images in [-1, 1];
[0.03, 80] for trimmed_log_snr), clipped to what the schedule can express, [exp(-log_snr(0) / 2), exp(-log_snr(1) / 2)]:
cosine (log_snr in [-20, 8.77]) gives [0.0125, 80], i.e. the last evaluation is at t = 0;
linear (log_snr in [-10.05, 20]) gives [0.002, 80]. N = 1 evaluates once, at sigma_max
(t = 1 for uniform_t). The time at each sigma comes from ``Schedule.t_from_log_snr``.
``t_max`` (SDEdit's start time, samplers.py) puts the same N times on [0, t_max] instead.
Starting at sigma_max from unit noise ignores the alpha x0 part of x there (alpha =
1 / sqrt(1 + sigma_max^2)): for data N(mu, s^2) the samples' mean is off by about
-mu s / sigma_max (-0.4% of s for mu = 0.3, sigma_max = 80).
"""

import jax.numpy as jnp

TIME_GRIDS = ("log_snr", "trimmed_log_snr", "karras", "uniform_t")
SIGMA_MIN = 0.002  # EDM's
TRIMMED_SIGMA_MIN = 0.03  # trimmed_log_snr's (module docstring)
SIGMA_MAX = 80.0
RHO = 7.0


def check_time_grid(time_grid: str) -> str:
  if time_grid not in TIME_GRIDS:
    raise ValueError(f"Unknown time_grid {time_grid!r}; allowed values: {', '.join(TIME_GRIDS)}")
  return time_grid


def default_time_grid(sampler: str) -> str:
  """The grid a sampler uses when none is given."""
  return {"edm_heun": "karras", "dpmpp_2m": "trimmed_log_snr"}.get(sampler, "uniform_t")


def sigma_range(schedule, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, t_max=1.0):
  """(sigma_min, sigma_max) clipped to the schedule's range over [0, t_max]; float32 scalars.

  sigma_min is lowered to sigma_max where t_max is so small that the schedule's sigma there
  is below it (the grid is then flat at sigma(t_max)).
  """
  lo = jnp.exp(-0.5 * schedule.log_snr(0.0))
  hi = jnp.minimum(jnp.exp(-0.5 * schedule.log_snr(t_max)), sigma_max)
  return jnp.minimum(jnp.maximum(lo, sigma_min), hi), hi


def times(
    schedule, num_steps: int, time_grid: str, *, sigma_min=None, sigma_max=SIGMA_MAX, t_max=1.0
):
  """The N = num_steps evaluation times over [0, t_max], decreasing, float32 [N].

  t_max < 1 shortens the range (SDEdit's start time): uniform_t gives t_k = t_max (1 - k / N),
  the sigma grids start at min(sigma_max, sigma(t_max)); t_max = 1 is the full grid, unchanged.
  sigma_min None: the grid's own (TRIMMED_SIGMA_MIN for trimmed_log_snr, else SIGMA_MIN).
  """
  check_time_grid(time_grid)
  k = jnp.arange(num_steps, dtype=jnp.float32)
  if time_grid == "uniform_t":
    return t_max * (1.0 - k / num_steps)
  if sigma_min is None:
    sigma_min = TRIMMED_SIGMA_MIN if time_grid == "trimmed_log_snr" else SIGMA_MIN
  lo, hi = sigma_range(schedule, sigma_min, sigma_max, t_max)
  frac = k / max(num_steps - 1, 1)
  if time_grid in ("log_snr", "trimmed_log_snr"):
    log_sigma = jnp.log(hi) + frac * (jnp.log(lo) - jnp.log(hi))
  else:
    log_sigma = RHO * jnp.log(hi ** (1 / RHO) + frac * (lo ** (1 / RHO) - hi ** (1 / RHO)))
  return schedule.t_from_log_snr(-2.0 * log_sigma)
