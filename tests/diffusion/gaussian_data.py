"""Correlated Gaussian images and their exact denoiser (helpers of inpaint_test, sdedit_test).

x0 ~ N(MU, SIGMA) on 2 x 2 pixels x 2 channels (shape [B, 2, 2, 2], flattened in C order:
index = 2 pixel + channel), correlations 0.9^distance between pixels times 0.8 between
channels, stds 0.2 .. 0.35. With x_t = alpha x0 + sigma eps the posterior mean is
  E[x0 | x_t] = MU + alpha SIGMA (alpha^2 SIGMA + sigma^2 I)^-1 (x_t - alpha MU),
computed through SIGMA's eigendecomposition (per example, any t [B]).

``propagate`` runs RePaint / SDEdit with ddim or ddpm and this denoiser exactly, in float64:
every step is affine in x plus Gaussian noise, so the sample stays Gaussian and its mean and
covariance follow in closed form; it takes the sampler's own (float32) time grid.
"""

import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion import time_grid as time_grid_lib

SHAPE = (2, 2, 2)
D = 8


def make_sigma():
  pos = np.array([(i, j) for i in range(2) for j in range(2)], float)
  pixel = 0.9 ** np.linalg.norm(pos[:, None] - pos[None], axis=-1)
  corr = np.kron(pixel, np.array([[1.0, 0.8], [0.8, 1.0]]))
  std = np.linspace(0.2, 0.35, D)
  return corr * std[:, None] * std[None]


MU = np.linspace(-0.3, 0.4, D)
SIGMA = make_sigma()
# Known: pixels (0, 0) and (1, 1), both channels; mask [1, H, W, 1] broadcasts over channels.
MASK = np.zeros((1, 2, 2, 1), bool)
MASK[0, 0, 0, 0] = MASK[0, 1, 1, 0] = True
KNOWN = np.flatnonzero(np.broadcast_to(MASK, (1,) + SHAPE).ravel())
UNKNOWN = np.setdiff1d(np.arange(D), KNOWN)
X_K = np.array([0.1, 0.5, -0.1, 0.9])  # 0.4 .. 1.6 stds off the mean


def denoiser(schedule, mu=MU, sigma_data=SIGMA):
  """The exact eps-prediction ``denoise_fn(x_t [B, 2, 2, 2], t [B])``."""
  lam, u = np.linalg.eigh(sigma_data)
  lam, u, mu = (jnp.asarray(a, jnp.float32) for a in (lam, u, mu))

  def denoise_fn(x_t, t):
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    flat = x_t.reshape(x_t.shape[0], -1)
    z = (flat - alpha * mu) @ u
    x0 = mu + alpha * (z * lam / (alpha**2 * lam + sigma**2)) @ u.T
    return ((flat - alpha * x0) / sigma).reshape(x_t.shape)

  return denoise_fn


def known_image(n):
  x = np.zeros(D)
  x[KNOWN] = X_K
  return np.broadcast_to(x.reshape((1,) + SHAPE), (n,) + SHAPE).astype(np.float32)


def conditional():
  """The exact N(m, C) of the unknown coordinates given x_K (float64)."""
  k, u = KNOWN, UNKNOWN
  s_kk, s_uk = SIGMA[np.ix_(k, k)], SIGMA[np.ix_(u, k)]
  m = MU[u] + s_uk @ np.linalg.solve(s_kk, X_K - MU[k])
  c = SIGMA[np.ix_(u, u)] - s_uk @ np.linalg.solve(s_kk, s_uk.T)
  return m, c


def kl(m1, c1, m0, c0):
  """KL(N(m1, c1) || N(m0, c0))."""
  ic, d = np.linalg.inv(c0), m1 - m0
  logdet = np.linalg.slogdet(c0)[1] - np.linalg.slogdet(c1)[1]
  return 0.5 * (np.trace(ic @ c1) + d @ ic @ d - len(m0) + logdet)


def moments(x, idx=UNKNOWN):
  """(mean, covariance) of the samples' coordinates idx, float64."""
  x = np.asarray(x, np.float64).reshape(len(x), D)[:, idx]
  return x.mean(0), np.cov(x.T)


def _alpha_sigma(log_snr):
  return np.sqrt(1 / (1 + np.exp(-log_snr))), np.sqrt(1 / (1 + np.exp(log_snr)))


def propagate(
    sampler,
    schedule,
    num_steps,
    *,
    resample=1,
    inpaint=True,
    start_t=1.0,
    init=None,
    time_grid=None,
):
  """The exact (mean [D], covariance [D, D]) of ``diffusion.sample``'s output.

  sampler: "ddim" or "ddpm" (time_grid: None for its default); inpaint: known X_K on KNOWN
  (RePaint); init: SDEdit's (mean, covariance) of the init image, noised at the grid's first time.
  """
  grid = time_grid or time_grid_lib.default_time_grid(sampler)
  ts = time_grid_lib.times(schedule, num_steps, grid, t_max=start_t)
  log_snr = [float(v) for v in np.asarray(schedule.log_snr(ts), np.float64)] + [np.inf]
  eye = np.eye(D)
  d_k = np.diag(np.isin(np.arange(D), KNOWN).astype(float)) if inpaint else 0 * eye
  d_u = eye - d_k
  known = np.zeros(D)
  known[KNOWN] = X_K
  alpha_0, sigma_0 = _alpha_sigma(log_snr[0])
  if init is None:
    m, c = np.zeros(D), eye
  else:
    m, c = alpha_0 * init[0], alpha_0**2 * init[1] + sigma_0**2 * eye

  def step(m, c, l_t, l_s):
    alpha_t, sigma_t = _alpha_sigma(l_t)
    w = alpha_t * SIGMA @ np.linalg.inv(alpha_t**2 * SIGMA + sigma_t**2 * eye)
    b = MU - alpha_t * w @ MU  # x0_hat = w x + b
    if l_s == np.inf:
      a, shift, noise = w, b, 0.0
    elif sampler == "ddim":
      alpha_s, sigma_s = _alpha_sigma(l_s)
      g = alpha_s - sigma_s * alpha_t / sigma_t
      a, shift, noise = (sigma_s / sigma_t) * eye + g * w, g * b, 0.0
    else:
      alpha_s, sigma_s = _alpha_sigma(l_s)
      cc = -np.expm1(l_t - l_s)
      a, shift = alpha_s * (1 - cc) / alpha_t * eye + alpha_s * cc * w, alpha_s * cc * b
      noise = cc * sigma_s**2
    return a @ m + shift, a @ c @ a.T + noise * eye

  def replace(m, c, l_t):
    alpha, sigma = _alpha_sigma(l_t)
    return d_u @ m + alpha * d_k @ known, d_u @ c @ d_u + sigma**2 * d_k

  def renoise(m, c, l_s, l_t):
    a = _alpha_sigma(l_t)[0] / _alpha_sigma(l_s)[0]
    return a * m, a * a * c - np.expm1(l_t - l_s) * _alpha_sigma(l_t)[1] ** 2 * eye

  for k in range(num_steps):
    l_t, l_s = log_snr[k], log_snr[k + 1]
    for r in range(resample):
      if r:
        m, c = renoise(m, c, l_s, l_t)
      m, c = step(*replace(m, c, l_t), l_t, l_s)
  if inpaint:
    m, c = replace(m, c, np.inf)
  return m, c
