"""Result tables as records with the column specs that render them (`reporting.render`): mean ± std per setting,
seed-paired deltas vs vanilla (t-test, bootstrap interval), the paper's numbers, LEEP, sweeps, cost, every run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from synthtl.reporting.collect import Run
from synthtl.reporting.render import Col, Table, dash, pivot, plain
from synthtl.strategies import STRATEGIES, rank, takes_synthetic

# The paper's numbers (docs/method.md; ResNet-18, full data, 1k synthetic images per class).
PAPER_TOP1 = {("aircraft", "vanilla", None): 79.7, ("cars", "vanilla", None): 83.8,
              ("aircraft", "bridged++", "single"): 85.2, ("cars", "bridged++", "single"): 91.6,
              ("dtd", "bridged++", "single"): 72.3, ("food101", "bridged++", "single"): 84.2,
              ("sun397", "bridged++", "single"): 60.8, ("aircraft", "bridged++", "dsi"): 85.8,
              ("cars", "bridged++", "dsi"): 92.0, ("dtd", "bridged++", "dsi"): 72.7,
              ("food101", "bridged++", "dsi"): 84.6, ("sun397", "bridged++", "dsi"): 63.4}
PAPER_LEEP = {"aircraft": (-4.30, -3.41)}
SETTING = ("model", "shots", "volume", "guidance", "prompt")  # what a study setting is (`settings`)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof=1; 0 for one value), n)."""
    if not values:
        return float("nan"), float("nan"), 0
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def paired(ours: dict[int, float], base: dict[int, float], n_boot: int = 10000, seed: int = 0) -> dict:
    """Two strategies (seed -> accuracy; `base`: the baseline) on their shared seeds: n, mean_diff, std_diff, t and p
    (two-sided paired t-test; nan below 2 pairs), ci_low/ci_high (95% interval of mean_diff over `n_boot` resamples)."""
    seeds = sorted(set(ours) & set(base))
    d = np.array([ours[s] - base[s] for s in seeds], dtype=float)
    nan = float("nan")
    out = {"n": len(seeds), "mean_diff": float(d.mean()) if len(d) else nan, "std_diff": nan, "t": nan, "p": nan,
           "ci_low": nan, "ci_high": nan}
    if len(d) > 1:
        sd = out["std_diff"] = float(d.std(ddof=1))
        if sd > 0:
            from scipy import stats

            out["t"] = out["mean_diff"] / (sd / math.sqrt(len(d)))
            out["p"] = float(2 * stats.t.sf(abs(out["t"]), df=len(d) - 1))
        else:
            out["t"], out["p"] = (math.inf if out["mean_diff"] else nan), (0.0 if out["mean_diff"] else 1.0)
        boots = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
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


def mean_cell(r: dict) -> str:
    return fmt_mean_std(r["mean"], r["std"], r["n"])


def setting_name(model: str, shots: int, volume=None, guidance=None, prompt=None) -> str:
    parts = [model, f"{shots}-shot" if shots else "full data"]
    if volume is not None:
        parts += [f"{volume}/class", f"guidance {guidance:g}" if guidance is not None else "", prompt or ""]
    return ", ".join(p for p in parts if p)


def by_seed(runs: list[Run], strategy: str) -> dict[int, float]:
    return {r.labels["seed"]: r.top1 for r in runs if r.labels["strategy"] == strategy}


def setting_of(lab: dict) -> tuple:
    """The study setting (`SETTING`) of a synthetic-data run, (model, shots) of a real-only run. A filtered set is its
    own setting ("prompt, filter <name>"), never pooled with the unfiltered one."""
    if not takes_synthetic(lab["strategy"]):
        return lab["model"], lab["shots"]
    prompt = lab["prompt"] if not lab.get("filter") else f"{lab['prompt']}, filter {lab['filter']}"
    return lab["model"], lab["shots"], lab["volume"], lab["guidance"], prompt


def settings(runs: list[Run]) -> list[tuple[tuple, list[Run]]]:
    """Each setting with the runs compared in it: its synthetic runs plus real-only runs of its model/shots."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(setting_of(r.labels), []).append(r)
    synthetic = sorted((k for k in groups if len(k) == 5), key=str)
    keys = synthetic or [(*k, None, None, None) for k in sorted(groups, key=str)]
    return [(k, groups.get(k, []) + groups.get(k[:2], [])) for k in keys]


def _strategy_record(setting: tuple, dataset: str, strategy: str, members: list[Run], n_boot: int) -> dict:
    runs = [r for r in members if r.labels["dataset"] == dataset]
    vanilla = by_seed(runs, "vanilla")
    m, sd, n = mean_std([r.top1 for r in runs if r.labels["strategy"] == strategy])
    p = paired(by_seed(runs, strategy), vanilla, n_boot) if strategy != "vanilla" and vanilla else {}
    return {"setting": setting_name(*setting), **dict(zip(SETTING, setting, strict=True)), "dataset": dataset,
            "strategy": strategy, "mean": m, "std": sd, "n": n, "delta_vs_vanilla": p.get("mean_diff"),
            "p_value": p.get("p"), "ci_low": p.get("ci_low"), "ci_high": p.get("ci_high"),
            "paper": PAPER_TOP1.get((dataset, strategy, None if strategy == "vanilla" else setting[4]))}


def top1_cell(r: dict) -> str:
    """Mean ± std over seeds, with [the seed-paired difference to vanilla (p)] where seeds pair."""
    d = r["delta_vs_vanilla"]
    return mean_cell(r) + (f" [{fmt_delta(d, r['p_value'])}]" if d is not None and not math.isnan(d) else "")


def strategy_tables(runs: list[Run], n_boot: int = 10000) -> list[Table]:
    """One table per setting: datasets x strategies, with vanilla-paired deltas and the paper's numbers."""
    out = []
    for i, (setting, members) in enumerate(settings(runs)):
        model, shots, volume, guidance, prompt = setting
        strategies = sorted({r.labels["strategy"] for r in members}, key=rank)
        datasets = sorted({r.labels["dataset"] for r in members})
        raw = [_strategy_record(setting, ds, s, members, n_boot) for ds in datasets for s in strategies]
        paper = sorted({s for (d, s, p) in PAPER_TOP1 if d in datasets and s in strategies and p in (None, prompt)},
                       key=rank) if model == "resnet18" and not shots and volume in (None, 1000) else []
        note = ("mean ± std over seeds; [difference to vanilla paired by seed (paired t-test p)]; the test split is "
                "never used for selection")
        if prompt and ", filter " in prompt:
            kept = [r.result.get("images", {}).get("synthetic") for r in members
                    if takes_synthetic(r.labels["strategy"])]
            kept = [k for k in kept if isinstance(k, int)]
            note += (f"; filtered: runs train on what the filter's rule keeps of the first {volume} per class"
                     + (f" ({min(kept)}–{max(kept)} synthetic images per run)" if kept else ""))
        cols = [*plain("dataset"), *[Col(s, s, top1_cell) for s in strategies],
                *[Col(f"paper {s}", s, lambda r: dash("{:.1f}")(r["paper"])) for s in paper]]
        out.append(Table(f"strategies_{i + 1}", f"Test top-1 (%), {setting_name(*setting)}", cols, raw, note,
                         shown=pivot(raw, ("dataset",), "strategy")))
    return out


def leep_table(runs: list[Run]) -> Table | None:
    """LEEP of the pretrained model (per dataset, model and shots) beside each stage-1 (synthetic) model, per synthetic
    setting (volume, guidance, prompt style, filter) and bridged strategy: methods are never pooled."""
    pretrained: dict[tuple, list[float]] = {}  # (dataset, model, shots) -> LEEPs
    stage1: dict[tuple, dict[tuple, dict]] = {}  # -> (setting, strategy) -> {run id: stage-1 LEEP}: each run once
    for r in runs:
        if (v := (r.result.get("leep") or {}).get("pretrained")) is not None:
            pretrained.setdefault((r.labels["dataset"], r.labels["model"], r.labels["shots"]), []).append(v)
    for setting, members in settings(runs):
        for r in members:
            if (v := (r.result.get("leep") or {}).get("stage1")) is not None:
                key = r.labels["dataset"], r.labels["model"], r.labels["shots"]
                stage1.setdefault(key, {}).setdefault((setting, r.labels["strategy"]), {})[r.id] = v
    raw = []
    for ds, model, shots in sorted(set(pretrained) | set(stage1), key=str):
        mp, sp, npre = mean_std(pretrained.get((ds, model, shots), []))
        cells = sorted(stage1.get((ds, model, shots), {}).items(), key=lambda kv: (str(kv[0][0]), rank(kv[0][1])))
        for (setting, strategy), found in cells or [(((None,) * 5, None), {})]:
            m1, s1d, n1 = mean_std(list(found.values()))
            paper = (PAPER_LEEP.get(ds, (None, None)) if model == "resnet18" and not shots
                     and setting[2] in (None, 1000) and setting[4] in (None, "single") else (None, None))
            raw.append({"dataset": ds, "model": model, "shots": shots,
                        "setting": setting_name(model, shots, *setting[2:]), "strategy": strategy,
                        "leep_pretrained": mp, "leep_pretrained_std": sp, "n_pretrained": npre, "leep_stage1": m1,
                        "leep_stage1_std": s1d, "n_stage1": n1, "paper_pretrained": paper[0], "paper_stage1": paper[1]})
    if not raw:
        return None
    cols = [*plain("dataset", "setting"), Col("strategy", "strategy", dash()),
            Col("pretrained (ImageNet head)", ("leep_pretrained", "leep_pretrained_std", "n_pretrained"), fmt_mean_std),
            Col("after stage 1", ("leep_stage1", "leep_stage1_std", "n_stage1"), fmt_mean_std),
            Col("paper", ("paper_pretrained", "paper_stage1"), lambda a, b: "–" if a is None else f"{a:.2f} → {b:.2f}")]
    return Table("leep", "LEEP on the real training images: the pretrained model vs the stage-1 (synthetic) model",
                 cols, raw, "higher is better; one row per synthetic setting (prompt style, filter, volume, guidance) "
                 "and bridged strategy, mean ± std over its seeds; the pretrained column is the same model on the "
                 "same data in every row of a dataset")


def sweep_table(runs: list[Run], axis: str, key: str, title: str) -> Table | None:
    """Accuracy along one grid axis (volume, guidance or shots) for each dataset and strategy."""
    on_axis = [r for r in runs if r.labels.get(axis) is not None]
    values = sorted({r.labels[axis] for r in on_axis})
    if len(values) < 2:
        return None
    groups: dict[tuple, dict] = {}
    for r in on_axis:
        groups.setdefault((r.labels["dataset"], r.labels["model"], r.labels["strategy"]), {}).setdefault(
            r.labels[axis], []).append(r.top1)
    raw = [{"dataset": ds, "model": model, "strategy": s, axis: v,
            **dict(zip(("mean", "std", "n"), mean_std(by_v.get(v, [])), strict=True))}
           for (ds, model, s), by_v in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], rank(kv[0][2])))
           for v in values]
    cols = [*plain("dataset", "model", "strategy"), *[Col(f"{axis} {v:g}", v, mean_cell) for v in values]]
    return Table(key, title, cols, raw, "test top-1 (%), mean ± std over seeds",
                 shown=pivot(raw, ("dataset", "model", "strategy"), axis))


def cost_table(runs: list[Run], gensets: list, styles: list[dict], filters: list[dict] | None = None) -> Table:
    """Wall and GPU hours per stage. `filters`: the cost of each filter (`filtering.store.read_cost`)."""
    # (seconds, GPU seconds, work done) of each job; style methods differ in cost per step: one rate each
    jobs = [(f"style: {name}", [(s["train_seconds"], s.get("gpu_s", 0), s["steps"]) for s in styles
                                if (s.get("method") == "lora") == lora], "{:.2f} steps/s")
            for name, lora in (("textual inversion", False), ("LoRA", True))]
    jobs += [("generation", [(g.seconds, g.gpu_seconds, g.images) for g in gensets], "{:.2f} images/s"),
             # every scoring session of each filter, killed ones included
             ("filtering (all sessions)", [(c["seconds"], c["gpu_seconds"], c["scored"]) for c in filters or []],
              "{:.1f} images/s")]
    rows = []  # (stage, jobs, seconds, GPU seconds, throughput, its format)
    for stage, done, rate_fmt in jobs:
        if done:
            secs, gpu, work = (sum(x) for x in zip(*done, strict=True))
            rows.append((stage, len(done), secs, gpu, work / secs if secs else None, rate_fmt))
    stages: dict[str, list] = {}
    for r in runs:
        for name, st in r.result["stages"].items():
            stages.setdefault(name, []).append(st)
    for name, sts in sorted(stages.items()):
        rate = [s["train_images_per_s"] for s in sts if s.get("train_images_per_s")]
        rows.append((f"fine-tuning: {name} stage", len(sts), sum(s["wall_s"] for s in sts),
                     sum(s["gpu_s"] for s in sts), sum(rate) / len(rate) if rate else None, "{:.0f} train images/s"))
    raw = [{"stage": stage, "jobs": n, "wall_hours": secs / 3600, "gpu_hours": gpu / 3600, "_rate": rate,
            "_rate_fmt": rate_fmt} for stage, n, secs, gpu, rate, rate_fmt in rows]
    cols = [*plain("stage", "jobs"), Col("wall hours", "wall_hours", "{:.3f}".format),
            Col("GPU hours", "gpu_hours", "{:.3f}".format),
            Col("throughput", ("_rate", "_rate_fmt"), lambda v, f: "–" if v is None else f.format(v))]
    return Table("cost", "Cost per stage", cols, raw, "GPU hours are 0 for work done on CPU")


def input_gpu_hours(gensets: list, styles: list[dict], filters: list) -> dict[tuple[str, str], float]:
    """GPU hours to make a run's synthetic input, by (set folder, filter name or ""): the set's generation, the style
    its prompts used (by the style's hash in the set's identity) and every scoring session of the filter."""
    style_h = {str(s.get("hash")): s.get("gpu_s", 0.0) / 3600 for s in styles if s.get("hash")}
    out: dict[tuple[str, str], float] = {}
    for g in gensets:
        parts = [p.removeprefix("lora-") for p in str(g.settings.get("style_hash") or "").split("+") if p]
        out[(str(g.folder.resolve()), "")] = g.gpu_seconds / 3600 + sum(style_h.get(p, 0.0) for p in parts)
    for f in filters:
        key = str(Path(f.set_folder).resolve())
        out[(key, f.name)] = out.get((key, ""), 0.0) + f.cost["gpu_seconds"] / 3600
    return out


def accuracy_per_gpu_hour(runs: list[Run], gensets: list, styles: list[dict] | None = None,
                          filters: list | None = None) -> Table | None:
    """Test top-1 gained over vanilla per extra GPU-hour, per setting and strategy, averaged over seeds: the extra
    fine-tuning over the seed's vanilla run plus what made the run's synthetic images (`input_gpu_hours`)."""
    made = input_gpu_hours(gensets, styles or [], filters or [])
    folders: dict[str, list[str]] = {}  # set folder name -> resolved folders, for the runs of a moved or copied study
    for g in gensets:
        folders.setdefault(g.folder.name, []).append(str(g.folder.resolve()))
    vanilla = {(r.labels["dataset"], r.labels["model"], r.labels["shots"], r.labels["seed"]): r for r in runs
               if r.labels["strategy"] == "vanilla"}
    # a real-only control (vanilla_mixup, ...) is listed once per model and shots that the study compares
    compared = {k[:2] for k, _ in settings(runs)}
    groups: dict[tuple, list[dict]] = {}  # (dataset, setting, strategy) -> one record per run
    for r in runs:
        lab, syn, setting = r.labels, r.config.get("synthetic") or {}, setting_of(r.labels)
        base = vanilla.get((lab["dataset"], lab["model"], lab["shots"], lab["seed"]))
        if base is None or lab["strategy"] == "vanilla" or setting[:2] not in compared:
            continue
        where = str(Path(syn["path"]).resolve()) if syn.get("path") else None  # the set its synthetic images came from
        if where and (where, "") not in made and len(folders.get(Path(syn["path"]).name, [])) == 1:
            where = folders[Path(syn["path"]).name][0]  # the study moved: its set, found by its folder name
        name = setting_name(*setting)
        groups.setdefault((lab["dataset"], name, lab["strategy"]), []).append(
            {"run": r.id, "dataset": lab["dataset"], "setting": name, "strategy": lab["strategy"],
             "gain": r.top1 - base.top1, "extra_finetune_gpu_h": (r.result["gpu_s"] - base.result["gpu_s"]) / 3600,
             "synthetic_input_gpu_h": made.get((where, syn.get("filter") or ""), 0.0)})
    if not groups:
        return None
    ordered = [xs for _, xs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], rank(kv[0][2])))]
    shown = []  # the mean over the setting's seeds
    for xs in ordered:
        gain = sum(x["gain"] for x in xs) / len(xs)
        hours = sum(x["extra_finetune_gpu_h"] + x["synthetic_input_gpu_h"] for x in xs) / len(xs)
        shown.append({**{k: xs[0][k] for k in ("dataset", "setting", "strategy")}, "seeds": len(xs), "gain": gain,
                      "hours": hours, "per_hour": gain / hours if hours > 0 else None})
    cols = [*plain("dataset", "setting", "strategy", "seeds"), Col("Δ top-1 (pts)", "gain", "{:+.2f}".format),
            Col("extra GPU h (fine-tune + style + generation + filter)", "hours", "{:.3f}".format),
            Col("pts per GPU h", "per_hour", lambda v: "– (no extra GPU time)" if v is None else f"{v:+.2f}")]
    return Table("accuracy_per_gpu_hour", "Accuracy gained over vanilla per extra GPU-hour", cols,
                 [x for xs in ordered for x in xs], "per seed, paired with that seed's vanilla run, then averaged; a "
                 "generated set (and its style and filter) counts in full for every run that uses it, since each "
                 "setting would need it on its own", shown=shown)


def glossary_table(runs: list[Run]) -> Table:
    """What each strategy of the study does (`synthtl strategies` lists them all)."""
    names = sorted({r.labels["strategy"] for r in runs} & set(STRATEGIES.names()), key=rank)
    raw = [{"strategy": n, "origin": s.origin, "stages": " → ".join(s.stages), "what": s.summary}
           for n, s in zip(names, map(STRATEGIES.get, names), strict=True)]
    return Table("glossary", "Strategies in this study", plain("strategy", "origin", "stages", "what"), raw)


def runs_table(runs: list[Run]) -> Table:
    raw = [{"run": r.id, **r.labels, **{k: r.result["test"].get(k) for k in ("top1", "top5", "mean_class_acc")},
            "steps": r.result.get("total_steps"), "wall_s": r.result.get("wall_s"), "gpu_s": r.result.get("gpu_s"),
            "leep_pretrained": (r.result.get("leep") or {}).get("pretrained"),
            "leep_stage1": (r.result.get("leep") or {}).get("stage1"), "selected": r.result.get("selected")}
           for r in sorted(runs, key=lambda r: (r.labels["dataset"], rank(r.labels["strategy"]), r.id))]
    cols = [*plain("run", "dataset", "model", "strategy", "seed", "shots"),
            Col("volume", "volume", lambda v: str(v or "–")),
            Col("prompts", ("prompt", "filter"), lambda p, f: str(p or "–") + (f", filter {f}" if f else "")),
            Col("top-1", "top1", "{:.2f}".format), Col("top-5", "top5", dash("{:.2f}")),
            Col("mean class acc", "mean_class_acc", dash("{:.2f}")), Col("steps", "steps", dash()),
            Col("wall s", "wall_s", dash("{:.0f}"))]
    return Table("runs", "Every run", cols, raw)


def duplicates_table(duplicates: list[dict]) -> Table:
    cols = [Col("repeated folder", "run"), Col("run counted instead", "kept"), *plain("identity", "seed"),
            Col("its top-1", "top1", dash("{:.2f}")), Col("counted top-1", "kept_top1", dash("{:.2f}"))]
    return Table("duplicates", "Duplicate run folders (not counted)", cols, duplicates,
                 f"{len(duplicates)} run folder(s) share the identity and seed of a run already counted (a copied or "
                 "moved study?); each run is counted once. Delete the copies to silence this")
