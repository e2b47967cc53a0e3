"""Test accuracy against synthetic images per class V, fitted many curves at once (ours; docs/method.md §10).

Both candidate laws are linear in two numbers once their shape is fixed, `acc(V) = a - g * x(V; shape)`: the
saturating power law `a - b (V + V0)^-c` as x = (1 + V/V0)^-c (so a is the plateau and g the gain from vanilla to
it) and the log-linear law `a + g log(1 + V/V0)`. A fit solves the weighted least squares for (a, g) in closed form at
every shape of a coarse grid, then walks each row's best shape downhill with a pattern search. Bootstrap replicates
are rows of one matrix: a thousand refits are a few matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri, stdtrit

LEVEL = 0.95  # the band's coverage
FLOOR_SD = 0.01  # pts: seeds that agree exactly still leave this much noise (a fit needs a scale)
PRIOR_WEIGHT = 1.0  # power law: a tie-breaker between shapes the data cannot tell apart, in chi-square units
SEARCH_TOL = 1e-3  # the pattern search stops when every step is below this (log units: 0.1%)


def _power(v: np.ndarray, s: list[np.ndarray]) -> np.ndarray:  # shape (log c, log V0/vmax)
    return np.exp(-np.exp(s[0]) * np.log1p(v * np.exp(-s[1])))


def _loglinear(v: np.ndarray, s: list[np.ndarray]) -> np.ndarray:  # shape (log V0/vmax,)
    return -np.log1p(v * np.exp(-s[0]))


# name -> (formula, x, per shape parameter: (low, high, coarse grid points) in log space, scaled by the largest volume)
LAWS = {"power": ("a - b*(V + V0)^-c", _power, ((np.log(0.05), np.log(20.0), 16), (np.log(1e-3), np.log(100.0), 16))),
        "loglinear": ("a + g*log(1 + V/V0)", _loglinear, ((np.log(1e-4), np.log(100.0), 40),))}


@dataclass
class Fits:
    """Fits of one law, one per row of the data: `acc(V) = a - g * x(V; shape)`."""

    law: str
    vmax: float
    a: np.ndarray  # (B,)
    g: np.ndarray  # (B,)
    shape: np.ndarray  # (B, p)

    def __call__(self, volumes) -> np.ndarray:
        """Accuracy of every fit at `volumes`: (B, len(volumes))."""
        return self.a[:, None] - self.g[:, None] * _x(self.law, volumes, self.shape[:, None, :], self.vmax)[:, 0]

    def params(self, i: int = 0) -> dict:
        """Fit `i` in images per class; the power law also in its textbook form a - b (V + V0)^-c."""
        s, a, g = np.exp(self.shape[i]), float(self.a[i]), float(self.g[i])
        if self.law == "loglinear":
            return {"a": a, "g": g, "v0": float(s[0] * self.vmax)}
        c, v0 = float(s[0]), float(s[1] * self.vmax)
        return {"a": a, "g": g, "c": c, "v0": v0, "b": g * v0**c}


def _x(law: str, volumes, shapes: np.ndarray, vmax: float) -> np.ndarray:
    """x at `volumes` (k,) for `shapes` (..., m, p): (..., m, k)."""
    v = np.asarray(volumes, float) / vmax
    return LAWS[law][1](v, [shapes[..., i, None] for i in range(shapes.shape[-1])])


def _solve(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of y = a - g x at every shape; x (G, k) shared by every row or (B, G, k), y (B, k):
    a, g and the weighted squared misfit, each (B, G)."""
    sw = w.sum()
    xm, ym = (x @ w) / sw, (y @ w) / sw
    xc, yc = x - xm[..., None], (y - ym[:, None]) * w
    sxx = (xc * xc) @ w
    sxy = yc @ xc.T if x.ndim == 2 else np.einsum("bk,bgk->bg", yc, xc)
    slope = sxy / np.maximum(sxx, 1e-300)
    sse = np.maximum((yc * (y - ym[:, None])).sum(1)[:, None] - slope * sxy, 0.0)
    return ym[:, None] - slope * xm, -slope, sse


def fit(law: str, volumes, y, weights, noise_var: float) -> Fits:
    """Fits `law` to every row of `y` (B, k), the mean accuracies at `volumes` (k,) with `weights` (seeds per volume).

    Misfit counts in units of `noise_var`, the variance of one run, so that the power law's tie-breaker (the shape
    nearest c = 1 and V0 = the geometric mean of the measured volumes, one unit per e-fold) only decides between
    shapes the data cannot tell apart: a pilot has 4 volumes for 4 numbers.
    """
    v, w = np.asarray(volumes, float), np.asarray(weights, float)
    y = np.atleast_2d(np.asarray(y, float))
    vmax = float(v.max())
    bounds = LAWS[law][2]
    lows, highs, points = (np.array(x) for x in zip(*bounds, strict=True))
    center = np.array([0.0, np.log(np.exp(np.log(v[v > 0]).mean()) / vmax)])

    def criterion(shapes: np.ndarray) -> np.ndarray:  # (G, p) or (B, m, p) -> (B, G|m)
        _, _, sse = _solve(_x(law, v, shapes, vmax), y, w)
        return sse / noise_var + (PRIOR_WEIGHT * ((shapes - center) ** 2).sum(-1) if law == "power" else 0.0)

    axes = [np.linspace(lo, hi, n) for lo, hi, n in bounds]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    best = grid[criterion(grid).argmin(1)]
    step = np.tile((highs - lows) / (points - 1), (len(y), 1))
    moves = np.stack(np.meshgrid(*[[0.0, -1.0, 1.0]] * len(bounds), indexing="ij"), -1).reshape(-1, len(bounds))
    rows = np.arange(len(y))
    for _ in range(200):  # move to the best neighbour; halve the step where the centre is best
        if step.max() < SEARCH_TOL:
            break
        cand = np.clip(best[:, None, :] + step[:, None, :] * moves, lows, highs)
        i = criterion(cand).argmin(1)
        best = cand[rows, i]
        step = np.where((i == 0)[:, None], step / 2, step)
    a, g, _ = _solve(_x(law, v, best[:, None, :], vmax), y, w)
    return Fits(law, vmax, a[:, 0], g[:, 0], best)


def noise_sd(seeds: list[np.ndarray]) -> float:
    """Pooled seed standard deviation of one run, floored at FLOOR_SD."""
    df = sum(len(s) - 1 for s in seeds)
    ss = sum(float(((s - s.mean()) ** 2).sum()) for s in seeds)
    return max(np.sqrt(ss / df) if df else 0.0, FLOOR_SD)


def seed_bootstrap(seeds: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k) bootstrap means over seeds: at each volume, as many seeds as it has, drawn with replacement from the
    seed deviations of every volume (pooled: two seeds per volume say little about their own spread), each scaled by
    sqrt(n_v / (n_v - 1)) for the mean it was taken from and by t / z for the degrees of freedom of the spread."""
    pool = np.concatenate([(s - s.mean()) * np.sqrt(len(s) / (len(s) - 1)) for s in seeds if len(s) > 1])
    scale = stdtrit(sum(len(s) - 1 for s in seeds), 0.5 + LEVEL / 2) / ndtri(0.5 + LEVEL / 2)
    draws = np.stack([pool[rng.integers(0, pool.size, (n, len(s)))].mean(1) for s in seeds], 1)
    return np.array([s.mean() for s in seeds]) + scale * draws


def interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The central LEVEL interval of bootstrap samples (along the first axis)."""
    return tuple(np.percentile(samples, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0))
