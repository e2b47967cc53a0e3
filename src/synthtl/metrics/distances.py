"""Distances between image sets in a feature space: FID, KID, improved precision/recall, CLIP score.

FID (Heusel et al. 2017): ||mu_r - mu_s||^2 + Tr(C_r + C_s - 2 (C_r C_s)^(1/2)).
KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over subsets.
Precision/recall (Kynkaanniemi et al. 2019): a sample is covered when inside the k-NN ball of one of the other set."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = samples)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    c1, c2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular product is expected for small sets: handled below
        covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference implementation does
        eps = np.eye(c1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((c1 + eps) @ (c2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return float("nan"), float("nan")
    vals = [_poly_mmd2(real[rng.choice(len(real), size, replace=False)],
                       fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa = (a * a).sum(1)[:, None]
    bb = (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(aa + bb - 2 * a @ b.T, 0.0))


def _knn_radii(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Distance of every row to its k-th nearest other row, over blocks of `chunk` rows."""
    kk = min(k, len(x) - 1)  # position 0 is the point itself
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = np.partition(_pairwise(x[s:s + chunk], x), kk, axis=1)[:, kk]
    return out


def _covered(x: np.ndarray, y: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    """Fraction of the rows of x inside the k-NN ball (`radii`) of some row of y."""
    return sum(int((_pairwise(x[s:s + chunk], y) <= radii[None, :]).any(axis=1).sum())
               for s in range(0, len(x), chunk)) / len(x)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 4096) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold). Distances are
    taken in blocks of `chunk` rows: memory is chunk x n, not n x n (50k images would need 20 GB at once)."""
    r_real, r_fake = _knn_radii(real, k, chunk), _knn_radii(fake, k, chunk)
    return _covered(fake, real, r_real, chunk), _covered(real, fake, r_fake, chunk)
