"""Continuous-time variance-preserving noise schedules.

Time runs over t in [0, 1]: t=0 is clean data and t=1 is (almost) pure noise.
A schedule is defined by its log signal-to-noise ratio log_snr(t) =
log(alpha^2 / sigma^2), which is strictly decreasing in t; with variance
preservation alpha^2 = sigmoid(log_snr) and sigma^2 = sigmoid(-log_snr).

The two schedules Imagen implementations use (configs/: cosine for the base stage,
linear for both super-resolution stages, as imagen-pytorch's examples. We could not
confirm a per-stage schedule in the paper, so the stage configs list it among their own
choices, not the paper's):

* ``cosine`` (Nichol & Dhariwal 2021):
  alpha_bar(t) = cos^2(pi/2 * (t + s) / (1 + s)) with s=0.008, i.e.
  log_snr(t) = -log(cos(.)^-2 - 1).
* ``linear``: the continuous limit of DDPM's linear
  beta schedule from 1e-4 to 0.02 over 1000 steps, i.e. the VP-SDE with
  beta(t) = beta_0 + t (beta_1 - beta_0), beta_0=0.1, beta_1=20:
  log_snr(t) = -log(expm1(beta_0 t + (beta_1 - beta_0) t^2 / 2)).

Both analytic forms reach +inf / -inf (or close) at the ends, so log_snr is
clipped to [log_snr_min, log_snr_max] (default [-20, 20]); this keeps alpha and
sigma strictly positive, so conversions between predictions stay finite.
Endpoints after clipping: cosine log_snr(0) = 8.77 (its s offset bounds it
below the clip) and log_snr(1) = -20; linear log_snr(0) = 20 and
log_snr(1) = -log(expm1(10.05)) = -10.05 (DDPM's alpha_bar_T ~ 4e-5).

``Schedule.t_from_log_snr`` inverts log_snr (the samplers place their time grids in
log-SNR): closed form for both schedules,
  cosine: t = (1 + s) (2 / pi) atan(exp(-log_snr / 2)) - s,
  linear: t = 2 u / (beta_0 + sqrt(beta_0^2 + 2 (beta_1 - beta_0) u)), u = log(1 + exp(-log_snr)),
(the root of beta_0 t + (beta_1 - beta_0) t^2 / 2 = u written without cancellation), and a
bisection for a ``Schedule`` built without an inverse.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A VP schedule given by a (clipped) log-SNR function of t in [0, 1]."""

  name: str
  raw_log_snr: Callable[[jnp.ndarray], jnp.ndarray]
  log_snr_min: float = -20.0
  log_snr_max: float = 20.0
  raw_t_from_log_snr: Callable[[jnp.ndarray], jnp.ndarray] | None = None
  shift: float = 0.0  # added to the raw log-SNR before the clip (`get_schedule`)

  def log_snr(self, t):
    t = jnp.asarray(t, jnp.float32)
    return jnp.clip(self.raw_log_snr(t) + self.shift, self.log_snr_min, self.log_snr_max)

  def t_from_log_snr(self, log_snr):
    """The t in [0, 1] with ``log_snr(t) == log_snr`` (float32, any shape).

    Values beyond the schedule's range [log_snr(1), log_snr(0)] map to the nearer end
    (where log_snr is clipped flat, to the t closest to the unclipped part).
    """
    log_snr = jnp.clip(jnp.asarray(log_snr, jnp.float32), self.log_snr(1.0), self.log_snr(0.0))
    if self.raw_t_from_log_snr is None:
      return _bisect(self.log_snr, log_snr)
    return jnp.clip(self.raw_t_from_log_snr(log_snr - self.shift), 0.0, 1.0)

  def alpha_sigma(self, t):
    """Returns (alpha, sigma) with alpha^2 + sigma^2 = 1."""
    return alpha_sigma_from_log_snr(self.log_snr(t))


def alpha_sigma_from_log_snr(log_snr):
  log_snr = jnp.asarray(log_snr, jnp.float32)
  # sqrt(sigmoid(x)) computed in log space stays accurate at |x| ~ 20.
  alpha = jnp.exp(0.5 * -jnp.logaddexp(0.0, -log_snr))
  sigma = jnp.exp(0.5 * -jnp.logaddexp(0.0, log_snr))
  return alpha, sigma


def _bisect(log_snr_fn, target, iterations=40):
  """Solves log_snr_fn(t) = target for t in [0, 1] (log_snr_fn non-increasing)."""

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = log_snr_fn(mid) > target  # still too clean: the root is later
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(target), jnp.ones_like(target)))
  return 0.5 * (lo + hi)


def _cosine_log_snr(t, s=0.008):
  # cos(.)^-2 - 1 = tan(.)^2, so log_snr = 2 (log cos - log sin). cos is
  # floored at a tiny positive value: in float32 cos(pi/2) is -4e-8.
  angle = 0.5 * jnp.pi * (t + s) / (1.0 + s)
  cos = jnp.maximum(jnp.cos(angle), 1e-30)
  return 2.0 * (jnp.log(cos) - jnp.log(jnp.sin(angle)))


def _cosine_t(log_snr, s=0.008):
  return (1.0 + s) * (2.0 / jnp.pi) * jnp.arctan(jnp.exp(-0.5 * log_snr)) - s


def _linear_log_snr(t, beta_0=0.1, beta_1=20.0):
  return -jnp.log(jnp.expm1(beta_0 * t + 0.5 * (beta_1 - beta_0) * t**2))


def _linear_t(log_snr, beta_0=0.1, beta_1=20.0):
  u = jnp.logaddexp(0.0, -log_snr)  # = beta_0 t + (beta_1 - beta_0) t^2 / 2
  return 2.0 * u / (beta_0 + jnp.sqrt(beta_0**2 + 2.0 * (beta_1 - beta_0) * u))


def get_schedule(
    name: str, *, log_snr_min: float = -20.0, log_snr_max: float = 20.0, shift: float = 0.0, **kw
) -> Schedule:
  """Returns the named schedule.

  Args:
    name: "cosine" or "linear".
    log_snr_min: lower clip of log-SNR (reached at t=1).
    log_snr_max: upper clip of log-SNR (reached at t=0 where finite).
    shift: added to log-SNR at every t (before the clip): simple diffusion's (Hoogeboom
      et al. 2023) resolution shift, 2 log(r_ref / r) for images of side r where the
      schedule was designed for r_ref; > 0 (smaller images) spends more of training and
      sampling at lower noise.
    **kw: schedule parameters: ``s`` for cosine; ``beta_0``, ``beta_1`` for
      linear (in continuous VP-SDE units, i.e. 1000 x the discrete betas).
  """
  if log_snr_min >= log_snr_max:
    raise ValueError(f"log_snr_min={log_snr_min} must be below log_snr_max={log_snr_max}")
  if name == "cosine":
    allowed = {"s"}
    fn = lambda t: _cosine_log_snr(t, **kw)
    inverse = lambda log_snr: _cosine_t(log_snr, **kw)
  elif name == "linear":
    allowed = {"beta_0", "beta_1"}
    fn = lambda t: _linear_log_snr(t, **kw)
    inverse = lambda log_snr: _linear_t(log_snr, **kw)
  else:
    raise ValueError(f"Unknown schedule {name!r}; allowed values: {', '.join(SCHEDULES)}")
  unknown = set(kw) - allowed
  if unknown:
    raise ValueError(
        f"Unknown parameters {sorted(unknown)} for schedule "
        f"{name!r}; allowed: {sorted(allowed)}"
    )
  if not jnp.isfinite(shift):
    raise ValueError(f"shift={shift} must be finite")
  return Schedule(name, fn, float(log_snr_min), float(log_snr_max), inverse, float(shift))
