"""Figures (matplotlib Agg; `save` writes the PNG): radar of strategies across datasets, stage-2 convergence, sweeps
with error bars, LEEP before/after stage 1, cost per stage, a filter's scores; None when there is nothing to draw."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthtl.files import atomic_open  # noqa: E402
from synthtl.reporting.collect import Run  # noqa: E402
from synthtl.reporting.filters import FilterRun  # noqa: E402
from synthtl.reporting.render import Table  # noqa: E402
from synthtl.strategies import rank  # noqa: E402

COLORS = plt.get_cmap("tab10")


def save(fig, path: Path) -> Path | None:
    if fig is None:
        return None
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def radar_figure(table: Table):
    """Strategies across datasets (radar with >= 3 datasets, grouped bars of mean ± std otherwise)."""
    data: dict[str, dict[str, tuple[float, float]]] = {}
    for r in table.raw:
        if r["n"]:
            data.setdefault(r["strategy"], {})[r["dataset"]] = (r["mean"], r["std"])
    if not (datasets := sorted({d for v in data.values() for d in v})):
        return None
    strategies = sorted(data, key=rank)
    nan = (np.nan, np.nan)
    if len(datasets) >= 3:
        angles = np.linspace(0, 2 * math.pi, len(datasets), endpoint=False).tolist()
        fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
        for i, s in enumerate(strategies):
            vals = [data[s].get(d, nan)[0] for d in datasets]
            ax.plot(angles + angles[:1], vals + vals[:1], color=COLORS(i), label=s)
            ax.fill(angles + angles[:1], vals + vals[:1], color=COLORS(i), alpha=0.05)
        ax.set_xticks(angles, datasets)
        vals = [v for d in data.values() for v, _ in d.values() if not math.isnan(v)]
        ax.set_ylim(max(0.0, min(vals) - 5), max(vals) + 2)  # zoom on the differences, not on 0-100
        ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.35, 1.1))
    else:  # too few datasets for a radar: bars of the mean with ± std over seeds, strategies on the x axis
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(strategies) * len(datasets)), 3.5))
        width = 0.8 / len(datasets)
        for j, d in enumerate(datasets):
            cells = [data[s].get(d, nan) for s in strategies]
            ax.bar(np.arange(len(strategies)) + j * width, [m for m, _ in cells], width, yerr=[sd for _, sd in cells],
                   capsize=3, color=[COLORS(i) for i in range(len(strategies))], alpha=1.0 - 0.35 * j, label=d)
        ax.set_xticks(np.arange(len(strategies)) + 0.4 - width / 2, strategies, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        if len(datasets) > 1:
            ax.legend(fontsize=7)
    ax.set_title(table.title, fontsize=9)
    return fig


def convergence_figure(runs: list[Run], dataset: str, setting: str = ""):
    """Test (solid) and train (dashed) top-1 per epoch of the real-data stage, mean over seeds, per strategy; the
    title names the dataset and the setting, so that two settings' plots never share one."""
    by_strategy: dict[str, list[list[dict]]] = {}
    for r in runs:
        rows = [m for m in r.metrics if m["stage"] in ("real", "mixed") and "test_top1" in m]
        if r.labels["dataset"] == dataset and rows:
            by_strategy.setdefault(r.labels["strategy"], []).append(rows)
    if not by_strategy:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (s, seeds) in enumerate(sorted(by_strategy.items(), key=lambda kv: rank(kv[0]))):
        n = min(len(x) for x in seeds)
        epochs = [seeds[0][k]["epoch"] for k in range(n)]
        test = np.mean([[x[k]["test_top1"] for k in range(n)] for x in seeds], axis=0)
        train = np.mean([[x[k]["train_top1"] for k in range(n)] for x in seeds], axis=0)
        ax.plot(epochs, test, color=COLORS(i), marker="o", ms=3, label=f"{s} (test)")
        ax.plot(epochs, train, color=COLORS(i), ls="--", alpha=0.6)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="epoch of the real-data stage", ylabel="top-1 (%)")
    ax.set_title(f"{dataset}{', ' + setting if setting else ''}: convergence on real images (dashed: train)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return fig


def sweep_figure(table: Table, axis: str, log2: bool = False):
    series: dict[tuple, dict] = {}
    for r in table.raw:
        if r["n"]:
            series.setdefault((r["dataset"], r["model"], r["strategy"]), {})[r[axis]] = (r["mean"], r["std"])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, ((ds, model, s), pts) in enumerate(sorted(series.items(), key=str)):
        xs = sorted(pts)
        ax.errorbar(xs, [pts[x][0] for x in xs], yerr=[pts[x][1] for x in xs], marker="o", ms=3, capsize=3,
                    color=COLORS(i % 10), label=f"{ds} / {model} / {s}")
    if log2:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=axis, ylabel="test top-1 (%)")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def leep_figure(table: Table):
    """LEEP of the pretrained and the stage-1 model: bars of the mean with ± std over runs."""
    rows = [r for r in table.raw if not math.isnan(r["leep_pretrained"]) or not math.isnan(r["leep_stage1"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.55 * len(rows)))  # bars across: long setting labels stay readable
    y = np.arange(len(rows))
    for dy, key, label in ((-0.2, "leep_pretrained", "pretrained"), (0.2, "leep_stage1", "after stage 1 (synthetic)")):
        if all(math.isnan(r[key]) for r in rows):
            continue  # no bar of this kind: no legend entry either
        ax.barh(y + dy, [r[key] for r in rows], 0.4, xerr=[r[f"{key}_std"] for r in rows], capsize=3, label=label)
    ax.set_yticks(y, [f"{r['dataset']} · {r['setting']} · {r['strategy'] or ''}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("LEEP (higher = more transferable), mean ± std")
    ax.legend(fontsize=7)
    return fig


def cost_figure(table: Table):
    if not table.raw:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    use_gpu = any(r["gpu_hours"] for r in table.raw)
    ax.barh([r["stage"] for r in table.raw], [r["gpu_hours" if use_gpu else "wall_hours"] for r in table.raw],
            color=COLORS(0))
    ax.set_xlabel("GPU hours" if use_gpu else "wall hours (CPU)")
    return fig


def filter_scores_figure(f: FilterRun):
    """Scores of the kept and the dropped images of one filter (all classes together)."""
    if not f.rows:
        return None
    kept = [r["score"] for r in f.rows if r["kept"]]
    dropped = [r["score"] for r in f.rows if not r["kept"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lo, hi = min(kept + dropped), max(kept + dropped)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    ax.hist([kept, dropped], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"])
    ax.set(xlabel="own-class probability" if f.summary["score"] == "prob" else "own-class logit", ylabel="images")
    ax.set_title(f"{f.label}: {f.summary['method']} scores", fontsize=9)
    ax.legend(fontsize=7)
    return fig
