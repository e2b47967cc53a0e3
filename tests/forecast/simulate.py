"""Simulated pilot studies drawn from known curves (the coverage test and benchmarks/forecast_coverage.py), and the
README's worked example on He et al.'s published curve."""

from __future__ import annotations

import numpy as np

from synthtl.forecast.fit import fit, interval, noise_sd, seed_bootstrap

PILOT = (0.0, 250.0, 500.0, 1000.0)  # configs/studies/pilot.yaml: vanilla and three volumes per class
CHECK = (0.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0)  # the measured volumes, then 2x and 3x the largest
# He et al. (ICLR'23) Table 8, CIFAR-100 (100 classes): top-1 after 0 / 1.2M / 2.4M / 3.6M synthetic images, i.e.
# 0 / 12k / 24k / 36k per class. Source: CVMI-Lab/SyntheticData pic/Table8-11.png at 062ac23.
HE_TABLE8 = {"without ImageNet-1k": (78.83, 83.90, 85.03, 85.24), "from ImageNet-1k": (84.50, 84.90, 85.32, 85.52)}
HE_VOLUMES = (0.0, 12000.0, 24000.0, 36000.0)


def true_curve(rng: np.random.Generator, family: str = "power"):
    """A random true curve acc(V), V in images per class."""
    base, gain = rng.uniform(60, 85), rng.uniform(1, 6)
    if family == "power":  # the coverage test's truths
        v0, c = np.exp(rng.uniform(np.log(100), np.log(2000))), rng.uniform(0.5, 1.5)
        return lambda v: base + gain - gain * (1 + np.asarray(v, float) / v0) ** -c
    if family == "slow power":  # a long tail: far from its plateau at 3k/class
        v0, c = np.exp(rng.uniform(np.log(50), np.log(500))), rng.uniform(0.2, 0.5)
        return lambda v: base + gain - gain * (1 + np.asarray(v, float) / v0) ** -c
    if family == "exponential":
        tau = np.exp(rng.uniform(np.log(200), np.log(2000)))
        return lambda v: base + gain - gain * np.exp(-np.asarray(v, float) / tau)
    v0 = np.exp(rng.uniform(np.log(50), np.log(1000)))  # log-linear: no plateau
    return lambda v: base + gain / 3 * np.log1p(np.asarray(v, float) / v0)


def draw_study(rng: np.random.Generator, curve, volumes=PILOT, seeds: int = 2) -> list[np.ndarray]:
    """Each seed's test top-1 at each volume: the true curve plus Gaussian seed noise (sd drawn in 0.2-0.6 pt)."""
    sd = rng.uniform(0.2, 0.6)
    return [curve(v) + sd * rng.standard_normal(seeds) for v in volumes]


def coverage(studies: int = 200, n_boot: int = 1000, seed: int = 0) -> dict[float, float]:
    """Per check volume: the fraction of simulated pilot studies whose 95% band holds the true accuracy (truths: the
    power law with c in 0.5-1.5, V0 in 100-2000/class, plateau gain 1-6 pt; 2 seeds, seed sd 0.2-0.6 pt)."""
    rng = np.random.default_rng(seed)
    hits = np.zeros((studies, len(CHECK)), bool)
    for i in range(studies):
        curve = true_curve(rng)
        data = draw_study(rng, curve)
        draws = seed_bootstrap(data, n_boot, np.random.default_rng([seed, i]))  # the same studies at any n_boot
        boot = fit("power", PILOT, draws, np.full(4, 2.0), noise_sd(data) ** 2)
        lo, hi = interval(boot(CHECK))
        hits[i] = (lo <= curve(CHECK)) & (curve(CHECK) <= hi)
    return dict(zip(CHECK, hits.mean(0).tolist(), strict=True))


def worked_example(sd: float = 0.2, n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    """The README's worked example: the power law fitted on Table 8's 0 / 12k / 24k per class, predicting 36k.

    The table gives one run per volume, no seeds, so `synthtl forecast` would refuse it: the band here comes from a
    parametric bootstrap that adds Gaussian noise of an assumed seed std `sd` (pts) to each point.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, acc in HE_TABLE8.items():
        y = np.asarray(acc[:3])
        point = fit("power", HE_VOLUMES[:3], y, np.ones(3), sd**2)
        boot = fit("power", HE_VOLUMES[:3], y + sd * rng.standard_normal((n_boot, 3)), np.ones(3), sd**2)
        (lo,), (hi,) = interval(boot(HE_VOLUMES[3:]))
        pred = float(point(HE_VOLUMES[3:])[0, 0])
        out[name] = {"predicted": pred, "lo": float(lo), "hi": float(hi), "published": acc[3], "error": pred - acc[3]}
    return out


def compare_laws(studies: int = 200, seed: int = 0, families=("power", "slow power", "exponential", "loglinear"),
                 held_out=(2000.0, 3000.0)) -> dict[str, dict[str, float]]:
    """Per family of true curves: the root mean square error (pts) of each law fitted to a pilot's seed means and
    predicting the held-out volumes."""
    out = {}
    for family in families:
        rng = np.random.default_rng(seed)
        err: dict[str, list] = {"power": [], "loglinear": []}
        for _ in range(studies):
            curve = true_curve(rng, family)
            data = draw_study(rng, curve)
            means, var = [s.mean() for s in data], noise_sd(data) ** 2
            for law in err:
                err[law].append(fit(law, PILOT, means, np.full(4, 2.0), var)(held_out)[0] - curve(held_out))
        out[family] = {law: float(np.sqrt(np.mean(np.square(e)))) for law, e in err.items()}
    return out


def he_held_out(sd: float = 0.2) -> dict[str, dict[str, float]]:
    """Each law fitted on Table 8's 0 / 12k / 24k per class: predicted minus published top-1 at 36k (pts)."""
    return {name: {law: float(fit(law, HE_VOLUMES[:3], acc[:3], np.ones(3), sd**2)(HE_VOLUMES[3:])[0, 0] - acc[3])
                   for law in ("power", "loglinear")} for name, acc in HE_TABLE8.items()}
