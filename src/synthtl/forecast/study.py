"""Reading a finished study for a forecast, from its files only: test top-1 per volume and seed for each setting, and
the study's measured cost per generated image and per training image seen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthtl.data.genset import set_stats
from synthtl.errors import ConfigError, DataError
from synthtl.forecast.curve import Cost
from synthtl.reporting.collect import Run
from synthtl.strategies import STRATEGIES, rank, takes_synthetic

AXES = ("dataset", "model", "shots", "strategy", "prompt", "guidance", "filter")  # what a setting is
SHOWN = ("shots", "prompt", "guidance", "filter")  # named in a setting's label where the study varies them


@dataclass
class Setting:
    """One curve: a strategy's runs at every volume, and the vanilla runs (volume 0) of its dataset, model and shots."""

    labels: dict
    runs: list[Run] = field(default_factory=list)
    vanilla: list[Run] = field(default_factory=list)
    label: str = ""

    def points(self) -> tuple[list[float], list[list[float]]]:
        """Volumes (0 first) and the test top-1 of every seed at each."""
        by_volume: dict[float, list[float]] = {}
        for r in [*self.vanilla, *self.runs]:
            by_volume.setdefault(volume_of(r), []).append(r.top1)
        return sorted(by_volume), [by_volume[v] for v in sorted(by_volume)]


def volume_of(run: Run) -> float:
    """Synthetic images per class of a run (its grid label; 0 for a run without synthetic images)."""
    return float(run.labels.get("volume") or 0) if takes_synthetic(run.labels["strategy"]) else 0.0


def read_settings(folder: Path, runs: list[Run], strategies: list[str]) -> list[Setting]:
    """The study's settings with a volume grid, in the report's order; `strategies` ([] = all) picks some.

    Raises:
        DataError: no finished runs, no volume grid, or a run of a strategy synthtl does not know.
        ConfigError: an asked strategy that is unknown, trains on no synthetic images, or has no runs here.
    """
    if not runs:
        raise DataError(f"{folder} is not a study folder: it has no finished runs (runs/*/result.json); give the "
                        "out_dir of a finished `synthtl study`")
    for r in runs:
        if r.labels["strategy"] not in STRATEGIES:
            raise DataError(f"{r.folder}: unknown strategy {r.labels['strategy']!r} (`synthtl strategies` lists "
                            "those synthtl knows); move the run out of runs/ to forecast the rest")
    if not (synthetic := [r for r in runs if volume_of(r) > 0]):
        raise DataError(f"{folder} has no volume grid: none of its runs trains on synthetic images; run a study with "
                        "grid.volumes, e.g. `synthtl study pilot grid.datasets=[pets]`")
    present = sorted({r.labels["strategy"] for r in synthetic}, key=rank)
    for name in strategies:
        if not STRATEGIES.get(name).takes_synthetic:  # an unknown name: one line with "did you mean"
            raise ConfigError(f"strategies=[{name}]: {name} trains on no synthetic images, so it has no volume curve; "
                              f"this study's are {', '.join(present)}")
        if name not in present:
            raise ConfigError(f"strategies=[{name}]: {folder} has no {name} runs; it has {', '.join(present)}")
    settings: dict[tuple, Setting] = {}
    for r in synthetic:
        if r.labels["strategy"] in (strategies or present):
            labels = {k: r.labels.get(k) for k in AXES}
            labels["filter"] = labels["filter"] or ""  # a study's plan says None, a lone run's config ""
            settings.setdefault(tuple(labels.values()), Setting(labels)).runs.append(r)
    out = sorted(settings.values(), key=lambda s: (s.labels["dataset"], s.labels["model"], s.labels["shots"],
                                                   rank(s.labels["strategy"]), str(s.labels["prompt"]),
                                                   str(s.labels["guidance"]), s.labels["filter"]))
    varying = [k for k in SHOWN if len({s.labels[k] for s in out}) > 1]
    for s in out:
        lab = s.labels
        s.vanilla = [r for r in runs if r.labels["strategy"] == "vanilla"
                     and all(r.labels.get(k) == lab[k] for k in ("dataset", "model", "shots"))]
        # the label: dataset model strategy, then the axes this study varies (shots, prompts, guidance, filter)
        shown = {"shots": f"{lab['shots']}-shot" if lab["shots"] else "full", "prompt": lab["prompt"],
                 "guidance": f"g{lab['guidance']}", "filter": f"filter {lab['filter'] or 'none'}"}
        s.label = " ".join(map(str, [lab["dataset"], lab["model"], lab["strategy"], *(shown[k] for k in varying)]))
    return out


def _seen(run: Run) -> float:
    """Training images a run went through: epochs x images per epoch, summed over its stages."""
    try:
        return float(sum(st["epochs"] * st["train_images"] for st in run.result["stages"].values()))
    except (KeyError, TypeError):
        raise DataError(f"missing cost record: {run.folder / 'result.json'} has no stages with epochs and "
                        "train_images; re-run it with this synthtl") from None


def measured_cost(study: Path, setting: Setting) -> Cost:
    """Seconds per generated image and per training image seen, measured by the setting's own runs and sets: GPU
    seconds where every run and set recorded some, else wall seconds of whatever device did the work."""
    sets = {}
    for r in setting.runs:  # the generated set each run trained on
        if not (path := (r.config.get("synthetic") or {}).get("path") or r.result.get("synthetic")):
            raise DataError(f"missing cost record: {r.folder / 'config.yaml'} names no synthetic set (synthetic.path)")
        moved = study / "gen" / Path(path).name
        folder = moved if moved.is_dir() and not Path(path).is_dir() else Path(path)  # the study moved: by folder name
        sets[folder.resolve()] = stats = set_stats(folder)
        if not stats["images"]:
            raise DataError(f"missing cost record: {folder}/progress has no cost-shard-*.jsonl (the generation cost "
                            "per image); copy the set's progress/ folder with it")
    runs = [*setting.runs, *setting.vanilla]
    if any("gpu_s" not in r.result or "wall_s" not in r.result for r in runs):
        raise DataError(f"missing cost record: {runs[0].folder / 'result.json'} (or another run's) has no gpu_s and "
                        "wall_s; re-run it with this synthtl")
    gpu = all(r.result["gpu_s"] > 0 for r in runs) and all(s["gpu_seconds"] > 0 for s in sets.values())
    gen_s = sum(s["gpu_seconds" if gpu else "seconds"] for s in sets.values()) / sum(s["images"] for s in sets.values())
    train_s = sum(r.result["gpu_s" if gpu else "wall_s"] for r in runs) / max(sum(map(_seen, runs)), 1.0)
    vols, seen = np.array([volume_of(r) for r in setting.runs]), np.array([_seen(r) for r in setting.runs])
    vanilla = float(np.mean([_seen(r) for r in setting.vanilla])) if setting.vanilla else 0.0
    # training images are linear in the volume: fitted on the strategy's own runs (through vanilla with one volume)
    per, fixed = np.polyfit(vols, seen, 1) if len(set(vols)) > 1 else ((seen.mean() - vanilla) / vols[0], vanilla)
    if not (classes := int(setting.runs[0].result.get("num_classes") or 0)):
        raise DataError(f"missing cost record: {setting.runs[0].folder / 'result.json'} has no num_classes")
    return Cost("GPU" if gpu else "device", gen_s, train_s, classes, (float(fixed), float(per)), vanilla)
