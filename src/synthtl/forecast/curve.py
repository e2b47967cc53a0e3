"""One forecast from one measured curve (ours; docs/method.md §10): the power law and its bootstrap band over seeds,
predictions at the asked volumes with the hours to get there, the two answers (plateau, gain per hour), and the
refusals, each one line with the next pilot volume to run instead. Arrays in, a JSON-able record out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from synthtl.forecast.fit import LAWS, Fits, fit, interval, noise_sd, seed_bootstrap

MAX_EXTRAPOLATION = 3.0  # no answer beyond this multiple of the largest measured volume
REVERSAL_Z = 2.5  # a move between two measured volumes beyond this many standard errors is not noise


@dataclass(frozen=True)
class Cost:
    """Hours of one run at V images per class, from a study's measured rates (`forecast.study.measured_cost`)."""

    unit: str  # "GPU" (GPU-seconds recorded), else "device" (work done on CPU: wall time)
    gen_s_per_image: float  # generation, per generated image
    train_s_per_image: float  # fine-tuning, per training image seen (epochs x images)
    classes: int
    train_images: tuple[float, float]  # training images one run sees at V: fixed + per_volume * V
    vanilla_train_images: float

    def hours(self, volume: float) -> tuple[float, float, float]:
        """(generation, fine-tuning, extra over a vanilla run) hours of one run at `volume` per class."""
        gen = volume * self.classes * self.gen_s_per_image / 3600
        train = (self.train_images[0] + self.train_images[1] * volume) * self.train_s_per_image / 3600
        return gen, train, gen + train - self.vanilla_train_images * self.train_s_per_image / 3600


def nice(v: float) -> int:
    """A volume to recommend, rounded up to two significant digits (1667 -> 1700)."""
    step = 10 ** max(int(math.floor(math.log10(v))) - 1, 0) if v > 0 else 1
    return int(math.ceil(v / step - 1e-9) * step)


def refusal(reason: str, next_volume: float) -> dict:
    n = nice(next_volume)
    return {"refusal": f"refused: {reason}; next pilot volume: {n}/class", "next_volume": n}


def check_data(volumes: np.ndarray, seeds: list[np.ndarray]) -> dict | None:
    """The refusals before any fit: fewer than 3 volumes with vanilla, fewer than 2 seeds, a curve that both rises and
    falls beyond seed noise (the law is monotone; such data is noise or a turn it cannot describe)."""
    vmax = float(volumes.max())
    if len(volumes) < 3 or volumes[0] != 0:
        have = "/".join(f"{v:g}" for v in volumes)
        return refusal(f"fewer than 3 volumes (measured: {have}; vanilla is volume 0 and counts)", 2 * vmax)
    if few := [v for v, s in zip(volumes, seeds, strict=True) if len(s) < 2]:
        return refusal(f"fewer than 2 seeds at volume {'/'.join(f'{v:g}' for v in few)} (the band is a bootstrap over "
                       "seeds: run them again with another seed)", max(few))
    sd, means, direction = noise_sd(seeds), [s.mean() for s in seeds], 0.0
    for j in range(1, len(means)):
        for i in range(j):
            move = means[j] - means[i]
            if abs(move) > REVERSAL_Z * sd * math.sqrt(1 / len(seeds[i]) + 1 / len(seeds[j])):
                if direction * move < 0:
                    return refusal(f"non-monotone: mean top-1 {'rises' if move > 0 else 'falls'} from {means[i]:.2f} "
                                   f"at {volumes[i]:g}/class to {means[j]:.2f} at {volumes[j]:g}/class after "
                                   f"{'falling' if move > 0 else 'rising'}, beyond seed noise",
                                   math.sqrt(max(volumes[i], 1) * volumes[j]))
                direction = direction or move
    return None


def _gain(fits: Fits, volumes) -> np.ndarray:
    return fits(volumes) - fits([0.0])


def predict(point: Fits, boot: Fits, v: float, cost: Cost) -> dict:
    """Accuracy and gain over vanilla at `v` with their 95% intervals, and the hours of one run there; a prediction
    beyond 3x the largest measured volume, or with an interval wider than the gain, is refused (no numbers)."""
    (top_lo,), (top_hi,) = interval(boot([v]))
    (g_lo,), (g_hi,) = interval(_gain(boot, [v]))
    gain, vmax = float(_gain(point, [v])[0, 0]), point.vmax
    gen, train, extra = cost.hours(v)
    out = {"volume": v, "top1": float(point([v])[0, 0]), "top1_lo": top_lo, "top1_hi": top_hi, "gain": gain,
           "gain_lo": g_lo, "gain_hi": g_hi, "gen_hours": gen, "train_hours": train,
           "hours": gen + train, "extra_hours": extra, "refusal": None, "next_volume": None}
    if v > MAX_EXTRAPOLATION * vmax:
        out.update(refusal(f"{v:g}/class is beyond {MAX_EXTRAPOLATION:g}x the largest measured volume ({vmax:g})",
                           v / MAX_EXTRAPOLATION))
    elif g_hi - g_lo > abs(gain):
        out.update(refusal(f"the 95% interval of the gain at {v:g}/class ({g_lo:+.2f} to {g_hi:+.2f} pt) is wider "
                           f"than the gain ({gain:+.2f} pt)", min(v, 2 * vmax)))
    if out["refusal"]:
        out.update(dict.fromkeys(("top1", "top1_lo", "top1_hi", "gain", "gain_lo", "gain_hi")))
    return out


def _plateau_volume(fits: Fits, tol: float) -> np.ndarray:
    """The smallest V whose gain is within `tol` of the plateau: g (1 + V/V0)^-c = tol (0 where g <= tol)."""
    c, v0 = np.exp(fits.shape[:, 0]), np.exp(fits.shape[:, 1]) * fits.vmax
    with np.errstate(over="ignore"):
        return np.where(fits.g > tol, v0 * np.expm1(np.log(np.maximum(fits.g, tol) / tol) / c), 0.0)


def plateau(point: Fits, boot: Fits, tol: float) -> dict:
    """Answer 1: the smallest volume whose predicted gain over vanilla is within `tol` of the fitted plateau."""
    g, vmax = float(point.g[0]), point.vmax
    g_lo, g_hi = interval(boot.g)
    v = float(_plateau_volume(point, tol)[0])
    v_lo, v_hi = interval(_plateau_volume(boot, tol))
    out = {"tol": tol, "gain": g, "gain_lo": g_lo, "gain_hi": g_hi, "volume": None, "volume_lo": v_lo,
           "volume_hi": v_hi, "refusal": None, "next_volume": None, "note": None}
    if g <= tol:
        out["note"] = (f"the fitted plateau is {g:+.2f} pt from vanilla: no volume gains more than {tol:g} pt" if g > 0
                       else f"synthetic images lower accuracy here (plateau {g:+.2f} pt): no volume to recommend")
    elif g_hi - g_lo > g:
        out.update(refusal(f"the 95% interval of the plateau gain ({g_lo:+.2f} to {g_hi:+.2f} pt) is wider than the "
                           f"gain ({g:+.2f} pt)", 2 * vmax))
    elif v > MAX_EXTRAPOLATION * vmax:
        out.update(refusal(f"the plateau volume ({v:.0f}/class) is beyond {MAX_EXTRAPOLATION:g}x the largest "
                           f"measured volume ({vmax:g})", v / MAX_EXTRAPOLATION))
    else:
        out["volume"] = nice(v)
    return out


def best_per_hour(point: Fits, boot: Fits, volumes: np.ndarray, cost: Cost) -> dict:
    """Answer 2: the volume (from the smallest measured to 3x the largest) with the most predicted gain over vanilla
    per hour of one run (generation + fine-tuning), among volumes whose gain's 95% interval is above 0. Hours of the
    whole run, not the extra over vanilla: a concave gain per extra hour would always favour the smallest volume."""
    top = MAX_EXTRAPOLATION * point.vmax
    grid = np.unique(np.concatenate([np.geomspace(volumes[volumes > 0].min(), top, 60), volumes[volumes > 0]]))
    gain, (lo, _) = _gain(point, grid)[0], interval(_gain(boot, grid))
    hours = np.array([sum(cost.hours(v)[:2]) for v in grid])
    if not (lo > 0).any():
        return {"volume": None, "note": f"no volume up to {top:g}/class has a gain whose 95% interval is above 0"}
    rate = np.where(lo > 0, gain / np.maximum(hours, 1e-12), -np.inf)
    i = int(rate.argmax())
    return {"volume": float(grid[i]), "gain": float(gain[i]), "hours": float(hours[i]), "per_hour": float(rate[i]),
            "note": None}


def forecast_curve(volumes, seeds: list, at: list[int], cost: Cost, tol: float = 0.5, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """The forecast of one curve, JSON-able: `seeds[j]` holds the test top-1 of every seed at `volumes[j]` (0 =
    vanilla); its "refusal" (one line, with "next_volume") is set when the data cannot carry a fit."""
    volumes, seeds = np.asarray(volumes, float), [np.asarray(s, float) for s in seeds]
    measured = [{"volume": float(v), "mean": float(s.mean()), "n": len(s), "std": float(s.std(ddof=1)) if len(s) > 1
                 else None} for v, s in zip(volumes, seeds, strict=True)]
    rec = {"measured": measured, "refusal": None, "next_volume": None, "unit": cost.unit}
    if bad := check_data(volumes, seeds):
        return {**rec, **bad}
    sd, n = noise_sd(seeds), np.array([len(s) for s in seeds], float)
    point = fit("power", volumes, [s.mean() for s in seeds], n, sd**2)
    boot = fit("power", volumes, seed_bootstrap(seeds, n_boot, np.random.default_rng(seed)), n, sd**2)
    grid = np.linspace(0, MAX_EXTRAPOLATION * point.vmax, 121)
    lo, hi = interval(boot(grid))
    return {**rec, "noise_sd": sd, "law": {"name": "power", "formula": LAWS["power"][0], **point.params()},
            "predictions": [predict(point, boot, float(v), cost) for v in at], "plateau": plateau(point, boot, tol),
            "best_per_hour": best_per_hour(point, boot, volumes, cost),
            "curve": {"volume": grid.tolist(), "top1": point(grid)[0].tolist(), "lo": lo.tolist(), "hi": hi.tolist()}}
