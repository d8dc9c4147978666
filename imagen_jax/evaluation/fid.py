"""Fréchet Inception Distance: activation statistics and the distance itself.

`statistics(features)` gives the float64 mean and covariance of [N, D] Inception
pool features (D = 2048); `frechet_distance(mu1, sigma1, mu2, sigma2)` is

    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

The trace of the matrix square root is computed from the symmetric form
`tr((A sigma2 A)^(1/2))` with `A = sigma1^(1/2)` (both through `scipy.linalg.eigh`,
negative round-off eigenvalues clipped to 0). `sigma1 sigma2` and `A sigma2 A` are
similar matrices, so this is the same number as pytorch-fid's
`scipy.linalg.sqrtm(sigma1 @ sigma2)`, but it stays real and accurate for the
rank-deficient covariances of fewer than D + 1 samples, where `sqrtm` of the
non-symmetric product can fail or return large imaginary parts.

`save_statistics` / `load_statistics` read and write `.npz` files with `mu`,
`sigma`, `count` and free-form string metadata, at local or remote (`gs://`) paths;
`save_npz` / `load_npz` / `save_npy` / `load_npy` do the same for any arrays (through
memory: a local file is written to a temporary name and renamed, a remote one is one upload).
"""

import io
import json
import os
from typing import Mapping

import numpy as np

from imagen_jax.storage import paths


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) in float64 of features [N, D] (N >= 2)."""
  f = np.asarray(features)
  if f.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {f.shape}")
  if f.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
  f = f.astype(np.float64)
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or inf")
  mu = f.mean(axis=0)
  sigma = np.cov(f, rowvar=False)
  return mu, sigma


def _check_stats(mu, sigma, name):
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{name}: mu {mu.shape} and sigma {sigma.shape} do not match")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: statistics contain NaN or inf")
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  from scipy import linalg

  w, v = linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices (float64)."""
  from scipy import linalg

  a = _psd_sqrt(sigma1)
  m = a @ sigma2 @ a
  w = linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
  mu1, sigma1 = _check_stats(mu1, sigma1, "first")
  mu2, sigma2 = _check_stats(mu2, sigma2, "second")
  if mu1.shape != mu2.shape:
    raise ValueError(f"dimension mismatch: {mu1.shape} vs {mu2.shape}")
  diff = mu1 - mu2
  tr_covmean = trace_sqrt_product(sigma1, sigma2)
  value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
  # Round-off can take an exact zero slightly negative; FID is a squared distance.
  return max(value, 0.0)


def frechet_distance_from_features(features1, features2) -> float:
  """`frechet_distance(*statistics(f1), *statistics(f2))`, computed exactly and cheaply for
  few samples: with centred, 1/sqrt(n-1)-scaled features X1, X2 (sigma = X^T X),
  tr((sigma1 sigma2)^(1/2)) is the nuclear norm of X1 X2^T (an n1 x n2 matrix), so no D x D
  decomposition is needed. Falls back to the covariance form when both sets exceed D."""
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  mu1, s1 = statistics(f1)  # validates shapes and finiteness
  mu2, s2 = statistics(f2)
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"dimension mismatch: {f1.shape[1]} vs {f2.shape[1]}")
  if min(f1.shape[0], f2.shape[0]) > f1.shape[1]:
    return frechet_distance(mu1, s1, mu2, s2)
  x1 = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)
  x2 = (f2 - mu2) / np.sqrt(f2.shape[0] - 1)
  nuclear = float(np.linalg.svd(x1 @ x2.T, compute_uv=False).sum())
  diff = mu1 - mu2
  value = float(diff @ diff + np.sum(x1 * x1) + np.sum(x2 * x2) - 2.0 * nuclear)
  return max(value, 0.0)


def save_npz(path: str | os.PathLike, **arrays) -> None:
  """`np.savez(path, **arrays)`, written whole (see `paths.write_atomic`); local or remote."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  paths.write_atomic(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All arrays of an `.npz` (no pickles), read whole; FileNotFoundError when missing."""
  data = paths.path(path).read_bytes()
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def save_npy(path: str | os.PathLike, array) -> None:
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  paths.write_atomic(path, buf.getvalue())


def load_npy(path: str | os.PathLike) -> np.ndarray:
  return np.load(io.BytesIO(paths.path(path).read_bytes()), allow_pickle=False)


def save_statistics(
    path: str, mu, sigma, count: int, metadata: Mapping[str, str] | None = None
) -> None:
  """Writes mu/sigma/count (+ JSON metadata) to `path` (local or remote) atomically."""
  save_npz(
      path,
      mu=np.asarray(mu, np.float64),
      sigma=np.asarray(sigma, np.float64),
      count=np.int64(count),
      metadata=json.dumps(dict(metadata or {}), sort_keys=True),
  )


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
  """(mu, sigma, count, metadata) from a file written by `save_statistics`."""
  try:
    z = load_npz(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"no FID statistics file at {path}") from None
  return (
      z["mu"],
      z["sigma"],
      int(z["count"]),
      json.loads(str(z["metadata"])) if "metadata" in z else {},
  )
