"""Mean +- std over seeds and paired comparisons (t-test and bootstrap interval over seed-paired differences)."""

from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1; 0 for one value), n)."""
    if not values:
        return float("nan"), float("nan"), 0
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def paired(ours: dict[int, float], base: dict[int, float], n_boot: int = 10000, seed: int = 0) -> dict:
    """Compares two strategies run with the same seeds.

    Args:
        ours: seed -> accuracy of the strategy.
        base: seed -> accuracy of the baseline (vanilla).
        n_boot: bootstrap resamples of the seed-paired differences.

    Returns:
        n (paired seeds), mean_diff, std_diff, t, p (two-sided paired t-test; nan below 2 pairs), ci_low/ci_high
        (95% percentile bootstrap interval of the mean difference).
    """
    seeds = sorted(set(ours) & set(base))
    d = np.array([ours[s] - base[s] for s in seeds], dtype=float)
    out = {"n": len(seeds), "mean_diff": float("nan"), "std_diff": float("nan"), "t": float("nan"),
           "p": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    if not len(d):
        return out
    out["mean_diff"] = float(d.mean())
    if len(d) > 1:
        sd = float(d.std(ddof=1))
        out["std_diff"] = sd
        if sd > 0:
            from scipy import stats

            t = out["mean_diff"] / (sd / math.sqrt(len(d)))
            out["t"] = t
            out["p"] = float(2 * stats.t.sf(abs(t), df=len(d) - 1))
        else:
            out["t"], out["p"] = (math.inf if out["mean_diff"] else float("nan")), (0.0 if out["mean_diff"] else 1.0)
        rng = np.random.default_rng(seed)
        boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    return out


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def fmt_delta(diff: float | None, p: float | None = None) -> str:
    """A (seed-paired) difference, with its p-value where there is one (none below 2 pairs)."""
    if diff is None or math.isnan(diff):
        return "–"
    return f"{diff:+.2f}" + (f" (p={p:.3f})" if p is not None and not math.isnan(p) else "")
