"""EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) on a VP schedule.

The probability-flow ODE of a VP schedule is EDM's ODE in the VE-scaled variable
x~ = x / alpha with sigma = sigma_t / alpha_t = exp(-log_snr / 2):
  dx~ / dsigma = (x~ - D(x~, sigma)) / sigma = eps_hat,
where the denoiser D(x~, sigma) is the x0 estimate of the network at x = alpha x~ and the
time t whose log_snr is -2 log sigma (x~ = x0 + sigma eps, so the slope is the eps
estimate). Heun's method (2nd order) steps sigma_i -> sigma_{i+1} for i < N-1, two network
evaluations each; the last step, to sigma = 0, is Euler and returns D(x~, sigma_{N-1}).
N steps are 2N - 1 evaluations.
"""

import jax


def _alpha_sigma_ve(schedule, t):
  """(alpha, sigma_VE) at time t."""
  alpha, sigma = schedule.alpha_sigma(t)
  return alpha, sigma / alpha


def heun_step(estimate, schedule, x_ve, t, s):
  """One Heun step of the VE variable x~ from time t to time s (two evaluations)."""
  alpha_t, sigma_t = _alpha_sigma_ve(schedule, t)
  alpha_s, sigma_s = _alpha_sigma_ve(schedule, s)
  _, eps_t = estimate(alpha_t * x_ve, t)[:2]
  x_euler = x_ve + (sigma_s - sigma_t) * eps_t
  _, eps_s = estimate(alpha_s * x_euler, s)[:2]
  return x_ve + (sigma_s - sigma_t) * 0.5 * (eps_t + eps_s)


def vp_heun_step(estimate, schedule, x, t, s):
  """``heun_step`` on a VP sample x at t; returns the VP sample at s."""
  x_ve = heun_step(estimate, schedule, x / _alpha_sigma_ve(schedule, t)[0], t, s)
  return _alpha_sigma_ve(schedule, s)[0] * x_ve


def heun(estimate, schedule, x, ts):
  """Integrates from x at ts[0] down the grid ts [N] to zero noise; returns x0.

  Args:
    estimate: ``estimate(x, t) -> (x0_hat, eps_hat, ...)`` at a VP point x and scalar t,
      thresholding included.
    schedule: the ``Schedule`` the times refer to.
    x: the VP sample at ts[0] (e.g. unit noise).
    ts: the decreasing evaluation times.
  """

  def step(k, x_ve):
    return heun_step(estimate, schedule, x_ve, ts[k], ts[k + 1])

  x_ve = jax.lax.fori_loop(0, ts.shape[0] - 1, step, x / _alpha_sigma_ve(schedule, ts[0])[0])
  return estimate(_alpha_sigma_ve(schedule, ts[-1])[0] * x_ve, ts[-1])[0]
