"""Reading a study folder from its files only: finished runs (labels, metrics), generated sets, styles, costs."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from synthtl.data.genset import set_stats
from synthtl.errors import DataError
from synthtl.files import read_json, read_jsonl
from synthtl.strategies import takes_synthetic


@dataclass
class Run:
    id: str
    folder: Path
    labels: dict
    result: dict
    config: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return float(self.result["test"]["top1"])


def _prompt_label(gen_dir: Path) -> tuple[float | None, str | None]:
    """(guidance, prompt style) of a generated set, from its plan alone (a manifest can hold a million rows)."""
    if not (plan := gen_dir / "plan.json").is_file():
        return None, None
    data = read_json(plan)
    ident = data.get("settings", {})
    guidance = ident.get("guidance")
    if ident.get("mode") == "img2img":
        return guidance, "img2img"
    if "lora-" in str(ident.get("style_hash", "")):
        return guidance, "lora_per_class" if data.get("style_lora") == "class" else "lora"
    if ident.get("style_hash"):
        return guidance, "per_class" if len({k.get("token") for k in data.get("classes", [])}) > 1 else "dsi"
    if len(ident.get("templates", [])) == 80:
        return guidance, "imagenet80"
    return guidance, "single" if ident.get("templates") == ["a good photo of the {}."] else "custom"


def plan_labels(root: Path, kind: str) -> dict[str, dict]:
    """job id -> grid labels from the study's plan.json ({} for a folder of runs made without a study)."""
    plan = root / "plan.json"
    jobs = read_json(plan).get("jobs", []) if plan.is_file() else []  # a generated set's plan.json has none
    return {j["id"]: j["labels"] for j in jobs if j["kind"] == kind}


def _result(path: Path) -> dict | None:
    """A run's result.json, or None with a warning naming it when it is damaged or not a finished run's."""
    try:
        r = read_json(path)
        if isinstance(r, dict) and isinstance(r.get("test"), dict) and isinstance(r["test"].get("top1"), (int, float)):
            return r
    except (OSError, ValueError):
        pass
    warnings.warn(f"{path} is damaged or not a finished run's result: that run is left out (re-run it to rebuild the "
                  "file)", stacklevel=3)
    return None


def runs_root(folder: Path) -> Path:
    """Where a folder's runs are: a study's runs/, else the folder itself (e.g. the out_dir of `synthtl finetune`)."""
    return folder / "runs" if (folder / "runs").is_dir() else folder


def _labels(cfg: dict | None, prompt_label) -> dict | None:
    """The grid coordinates of a run not launched by a study, from its config and synthetic set (None: no config)."""
    try:
        syn = cfg.get("synthetic") or {}
        syn = syn if syn.get("path") and takes_synthetic(cfg["strategy"]) else {}
        guidance, prompt = prompt_label(Path(syn["path"])) if syn else (None, None)
        # a filtered set is its own setting, never pooled with the unfiltered one (as in a study's plan labels)
        return {"dataset": cfg["data"]["name"], "model": cfg["model"]["name"], "strategy": cfg["strategy"],
                "seed": cfg["seed"], "shots": cfg["data"]["shots"], "volume": syn.get("per_class") or None,
                "guidance": guidance, "prompt": prompt, "filter": syn.get("filter") or ""}
    except (AttributeError, TypeError, KeyError):
        return None


def find_runs(study_dir: str | Path) -> list[Run]:
    """Every finished run folder (with a sound result.json) under `runs_root`, with labels, duplicates included."""
    root = Path(study_dir)
    base, plan = runs_root(root), plan_labels(root, "finetune")
    prompt_label = functools.cache(_prompt_label)  # one plan read per generated set, for this collection only
    runs = []
    for res in sorted(base.glob("**/result.json")):
        folder, result = res.parent, _result(res)
        if result is None:
            continue
        try:
            cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
        except yaml.YAMLError:
            cfg = None
        # A study puts its runs at runs/<job id>; a folder elsewhere (a copy?) is named by its own path
        rid = folder.name if folder.name in plan and folder.parent == root / "runs" else str(folder.relative_to(base))
        if (labels := plan.get(rid) or _labels(cfg, prompt_label)) is None:
            warnings.warn(f"{folder / 'config.yaml'} is missing or damaged: that run is left out (re-run it to "
                          "rebuild the file)", stacklevel=2)
            continue
        metrics = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
        runs.append(Run(rid, folder, labels, result, cfg, metrics))
    return runs


def some_runs(folder: Path) -> list[Run]:
    """`find_runs`, refusing a folder without any."""
    if not (runs := find_runs(folder)):
        raise DataError(f"{folder} has no finished runs (no result.json under {runs_root(folder)}): give a study "
                        "folder or a folder of `synthtl finetune` runs")
    return runs


def unique_runs(runs: list[Run]) -> tuple[list[Run], list[dict]]:
    """Counts each run once: of folders with the same identity and seed (a copied or moved study), the first is kept.
    Returns the kept runs, and a record of each dropped folder (run, kept: the run kept in its place, both top-1s)."""
    kept: dict[tuple, Run] = {}
    dropped = []
    for r in runs:
        # what makes two run folders the same run, wherever they live (result.json's "identity", `synthtl.identity`)
        ident = str(r.result.get("identity") or f"folder:{r.folder}"), r.result.get("seed", r.labels.get("seed"))
        if (k := kept.setdefault(ident, r)) is not r:
            dropped.append({"run": r.id, "folder": str(r.folder), "kept": k.id, "kept_folder": str(k.folder),
                            "identity": ident[0], "seed": ident[1], "top1": r.result.get("test", {}).get("top1"),
                            "kept_top1": k.result.get("test", {}).get("top1")})
    return list(kept.values()), dropped


def collect_runs(study_dir: str | Path) -> list[Run]:
    return unique_runs(find_runs(study_dir))[0]


@dataclass
class GenSet:
    id: str
    folder: Path
    settings: dict  # plan.json's: what its images were made with
    labels: dict
    images: int
    seconds: float
    gpu_seconds: float
    redraws: int


def collect_gensets(study_dir: str | Path) -> list[GenSet]:
    root = Path(study_dir)
    labels_of = plan_labels(root, "generate")
    out = []
    for plan_file in sorted(root.glob("gen/*/plan.json")):
        folder, work = plan_file.parent, set_stats(plan_file.parent)  # every generation shard's work, added up
        guidance, prompt = _prompt_label(folder)
        labels = labels_of.get(folder.name) or {"dataset": None, "guidance": guidance, "prompt": prompt}
        out.append(GenSet(folder.name, folder, read_json(plan_file).get("settings", {}), labels, work["images"],
                          work["seconds"], work["gpu_seconds"], work["redraws"]))
    return out


def collect_styles(study_dir: str | Path) -> list[dict]:
    return [{"id": p.parent.name, "folder": p.parent, **read_json(p)}
            for p in sorted(Path(study_dir).glob("styles/*/style.json"))]
