"""Result tables as records (mean ± std per study setting, deltas and paired tests vs vanilla, the paper's numbers
beside ours, LEEP, sweeps, cost, every run), each with the column spec that renders it (`reporting.render`)."""

from __future__ import annotations

import math
from pathlib import Path

from synthtl.reporting.collect import Run
from synthtl.reporting.render import Col, Table, dash, pivot, plain
from synthtl.reporting.stats import fmt_delta, fmt_mean_std, mean_std, paired
from synthtl.strategies import rank, takes_synthetic

# The paper's numbers (docs/method.md; ResNet-18, full data, 1k synthetic images per class).
PAPER_TOP1 = {("aircraft", "vanilla", None): 79.7, ("cars", "vanilla", None): 83.8,
              ("aircraft", "bridged++", "single"): 85.2, ("cars", "bridged++", "single"): 91.6,
              ("dtd", "bridged++", "single"): 72.3, ("food101", "bridged++", "single"): 84.2,
              ("sun397", "bridged++", "single"): 60.8, ("aircraft", "bridged++", "dsi"): 85.8,
              ("cars", "bridged++", "dsi"): 92.0, ("dtd", "bridged++", "dsi"): 72.7,
              ("food101", "bridged++", "dsi"): 84.6, ("sun397", "bridged++", "dsi"): 63.4}
PAPER_LEEP = {"aircraft": (-4.30, -3.41)}


def mean_cell(r: dict) -> str:
    return fmt_mean_std(r["mean"], r["std"], r["n"])


def setting_name(model: str, shots: int, volume=None, guidance=None, prompt=None) -> str:
    parts = [model, f"{shots}-shot" if shots else "full data"]
    if volume is not None:
        parts += [f"{volume}/class", f"guidance {guidance:g}" if guidance is not None else "", prompt or ""]
    return ", ".join(p for p in parts if p)


def _by_seed(runs: list[Run]) -> dict[int, float]:
    return {r.labels["seed"]: r.top1 for r in runs}


def settings(runs: list[Run]) -> list[tuple[tuple, list[Run]]]:
    """(model, shots, volume, guidance, prompt) -> the runs compared in that setting: its synthetic-data runs plus
    the real-only runs (vanilla, ...) of the same model and shots. A filtered set is its own setting ("prompt, filter
    <name>"), never pooled with the unfiltered one."""
    base: dict[tuple, list[Run]] = {}
    syn: dict[tuple, list[Run]] = {}
    for r in runs:
        lab = r.labels
        if takes_synthetic(lab["strategy"]):
            prompt = lab["prompt"] if not lab.get("filter") else f"{lab['prompt']}, filter {lab['filter']}"
            syn.setdefault((lab["model"], lab["shots"], lab["volume"], lab["guidance"], prompt), []).append(r)
        else:
            base.setdefault((lab["model"], lab["shots"]), []).append(r)
    keys = sorted(syn, key=str) or [(m, s, None, None, None) for m, s in sorted(base, key=str)]
    return [(k, syn.get(k, []) + base.get(k[:2], [])) for k in keys]


def _strategy_record(setting: tuple, dataset: str, strategy: str, members: list[Run], n_boot: int) -> dict:
    model, shots, volume, guidance, prompt = setting
    runs = [r for r in members if r.labels["dataset"] == dataset]
    vanilla = _by_seed([r for r in runs if r.labels["strategy"] == "vanilla"])
    mine = [r for r in runs if r.labels["strategy"] == strategy]
    m, sd, n = mean_std([r.top1 for r in mine])
    p = paired(_by_seed(mine), vanilla, n_boot) if strategy != "vanilla" and vanilla else None
    return {"setting": setting_name(*setting), "model": model, "shots": shots, "volume": volume,
            "guidance": guidance, "prompt": prompt, "dataset": dataset, "strategy": strategy, "mean": m, "std": sd,
            "n": n, "delta_vs_vanilla": p["mean_diff"] if p else None, "p_value": p["p"] if p else None,
            "ci_low": p["ci_low"] if p else None, "ci_high": p["ci_high"] if p else None,
            "paper": PAPER_TOP1.get((dataset, strategy, None if strategy == "vanilla" else prompt))}


def top1_cell(r: dict) -> str:
    """Mean ± std over seeds, with [the seed-paired difference to vanilla (p)] where seeds pair."""
    d = r["delta_vs_vanilla"]
    paired_seeds = d is not None and not math.isnan(d)
    return mean_cell(r) + (f" [{fmt_delta(d, r['p_value'])}]" if paired_seeds else "")


def _strategy_note(members: list[Run], prompt: str | None, volume) -> str:
    note = ("mean ± std over seeds; [difference to vanilla paired by seed (paired t-test p)]; the test split is "
            "never used for selection")
    if prompt and ", filter " in prompt:
        kept = [r.result.get("images", {}).get("synthetic") for r in members if takes_synthetic(r.labels["strategy"])]
        kept = [k for k in kept if isinstance(k, int)]
        note += (f"; filtered: runs train on what the filter's rule keeps of the first {volume} per class"
                 + (f" ({min(kept)}–{max(kept)} synthetic images per run)" if kept else ""))
    return note


def strategy_table(i: int, setting: tuple, members: list[Run], n_boot: int) -> Table:
    """Datasets x strategies of one setting, with vanilla-paired deltas and the paper's numbers."""
    model, shots, volume, guidance, prompt = setting
    strategies = sorted({r.labels["strategy"] for r in members}, key=rank)
    datasets = sorted({r.labels["dataset"] for r in members})
    raw = [_strategy_record(setting, ds, s, members, n_boot) for ds in datasets for s in strategies]
    paper = sorted({s for (d, s, p) in PAPER_TOP1 if d in datasets and s in strategies
                    and (p is None or p == prompt)}, key=rank) \
        if model == "resnet18" and not shots and volume in (None, 1000) else []
    cols = [*plain("dataset"), *[Col(s, s, top1_cell) for s in strategies],
            *[Col(f"paper {s}", s, lambda r: dash("{:.1f}")(r["paper"])) for s in paper]]
    return Table(f"strategies_{i + 1}", f"Test top-1 (%), {setting_name(*setting)}", cols, raw,
                 _strategy_note(members, prompt, volume), shown=pivot(raw, ("dataset",), "strategy"))


def strategy_tables(runs: list[Run], n_boot: int = 10000) -> list[Table]:
    """One table per synthetic setting (`strategy_table`)."""
    return [strategy_table(i, setting, members, n_boot) for i, (setting, members) in enumerate(settings(runs))]


def _leep_values(runs: list[Run]) -> tuple[dict, dict]:
    """(dataset, model, shots) -> pretrained LEEPs, and -> (setting, strategy) -> {run id: stage-1 LEEP}."""
    pretrained: dict[tuple, list[float]] = {}
    stage1: dict[tuple, dict[tuple, dict]] = {}
    for r in runs:
        v = (r.result.get("leep") or {}).get("pretrained")
        if v is not None:
            pretrained.setdefault((r.labels["dataset"], r.labels["model"], r.labels["shots"]), []).append(v)
    for setting, members in settings(runs):
        for r in members:
            v = (r.result.get("leep") or {}).get("stage1")
            if v is not None:
                key = (r.labels["dataset"], r.labels["model"], r.labels["shots"])
                stage1.setdefault(key, {}).setdefault((setting, r.labels["strategy"]), {})[r.id] = v  # each run once
    return pretrained, stage1


def leep_table(runs: list[Run]) -> Table | None:
    """LEEP of the pretrained model (per dataset, model and shots) beside each stage-1 (synthetic) model, per synthetic
    setting (volume, guidance, prompt style, filter) and bridged strategy: methods are never pooled."""
    pretrained, stage1 = _leep_values(runs)
    raw = []
    for key in sorted(set(pretrained) | set(stage1), key=str):
        ds, model, shots = key
        mp, sp, npre = mean_std(pretrained.get(key, []))
        cells = sorted(stage1.get(key, {}).items(), key=lambda kv: (str(kv[0][0]), rank(kv[0][1])))
        for (setting, strategy), found in cells or [((None,) * 5, None)]:
            m1, s1d, n1 = mean_std(list(found.values()) if found else [])
            paper = PAPER_LEEP.get(ds) if (model == "resnet18" and not shots and setting[4] in (None, "single")
                                           and setting[2] in (None, 1000)) else None
            name = setting_name(model, shots, *setting[2:]) if found else setting_name(model, shots)
            raw.append({"dataset": ds, "model": model, "shots": shots, "setting": name, "strategy": strategy,
                        "leep_pretrained": mp, "leep_pretrained_std": sp, "n_pretrained": npre, "leep_stage1": m1,
                        "leep_stage1_std": s1d, "n_stage1": n1, "paper_pretrained": paper[0] if paper else None,
                        "paper_stage1": paper[1] if paper else None})
    if not raw:
        return None
    cols = [*plain("dataset", "setting"), Col("strategy", "strategy", dash()),
            Col("pretrained (ImageNet head)", ("leep_pretrained", "leep_pretrained_std", "n_pretrained"),
                fmt_mean_std),
            Col("after stage 1", ("leep_stage1", "leep_stage1_std", "n_stage1"), fmt_mean_std),
            Col("paper", ("paper_pretrained", "paper_stage1"),
                lambda a, b: "–" if a is None else f"{a:.2f} → {b:.2f}")]
    return Table("leep", "LEEP on the real training images: the pretrained model vs the stage-1 (synthetic) model",
                 cols, raw, "higher is better; one row per synthetic setting (prompt style, filter, volume, guidance) "
                 "and bridged strategy, mean ± std over its seeds; the pretrained column is the same model on the "
                 "same data in every row of a dataset")


def sweep_table(runs: list[Run], axis: str, key: str, title: str) -> Table | None:
    """Accuracy along one grid axis (volume, guidance or shots) for each dataset and strategy."""
    values = sorted({r.labels[axis] for r in runs if r.labels.get(axis) is not None})
    if len(values) < 2:
        return None
    groups: dict[tuple, dict] = {}
    for r in runs:
        if r.labels.get(axis) is not None:
            groups.setdefault((r.labels["dataset"], r.labels["model"], r.labels["strategy"]), {}).setdefault(
                r.labels[axis], []).append(r.top1)
    raw = []
    for (ds, model, strategy), by_v in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], rank(kv[0][2]))):
        for v in values:
            m, sd, n = mean_std(by_v.get(v, []))
            raw.append({"dataset": ds, "model": model, "strategy": strategy, axis: v, "mean": m, "std": sd, "n": n})
    cols = [*plain("dataset", "model", "strategy"), *[Col(f"{axis} {v:g}", v, mean_cell) for v in values]]
    return Table(key, title, cols, raw, "test top-1 (%), mean ± std over seeds",
                 shown=pivot(raw, ("dataset", "model", "strategy"), axis))


def _cost(stage: str, n: int, seconds: float, gpu_s: float, rate: float | None, rate_fmt: str) -> dict:
    return {"stage": stage, "jobs": n, "wall_hours": seconds / 3600, "gpu_hours": gpu_s / 3600, "_rate": rate,
            "_rate_fmt": rate_fmt}


def cost_table(runs: list[Run], gensets: list, styles: list[dict], filters: list[dict] | None = None) -> Table:
    """Wall and GPU hours per stage. `filters`: the cost of each filter (`filtering.store.read_cost`)."""
    raw = []
    for stage, group in (("style: textual inversion", [s for s in styles if s.get("method") != "lora"]),
                         ("style: LoRA", [s for s in styles if s.get("method") == "lora"])):
        if group:  # their steps differ in cost: one rate each
            secs = sum(s["train_seconds"] for s in group)
            raw.append(_cost(stage, len(group), secs, sum(s.get("gpu_s", 0) for s in group),
                             sum(s["steps"] for s in group) / secs if secs else None, "{:.2f} steps/s"))
    if gensets:
        secs = sum(g.seconds for g in gensets)
        raw.append(_cost("generation", len(gensets), secs, sum(g.gpu_seconds for g in gensets),
                         sum(g.images for g in gensets) / secs if secs else None, "{:.2f} images/s"))
    if filters:  # every scoring session of each filter, killed ones included
        secs = sum(c["seconds"] for c in filters)
        raw.append(_cost("filtering (all sessions)", len(filters), secs, sum(c["gpu_seconds"] for c in filters),
                         sum(c["scored"] for c in filters) / secs if secs else None, "{:.1f} images/s"))
    stages: dict[str, list] = {}
    for r in runs:
        for name, st in r.result["stages"].items():
            stages.setdefault(name, []).append(st)
    for name, sts in sorted(stages.items()):
        rate = [s["train_images_per_s"] for s in sts if s.get("train_images_per_s")]
        raw.append(_cost(f"fine-tuning: {name} stage", len(sts), sum(s["wall_s"] for s in sts),
                         sum(s["gpu_s"] for s in sts), sum(rate) / len(rate) if rate else None,
                         "{:.0f} train images/s"))
    cols = [*plain("stage", "jobs"), Col("wall hours", "wall_hours", "{:.3f}".format),
            Col("GPU hours", "gpu_hours", "{:.3f}".format),
            Col("throughput", ("_rate", "_rate_fmt"), lambda v, f: "–" if v is None else f.format(v))]
    return Table("cost", "Cost per stage", cols, raw, "GPU hours are 0 for work done on CPU")


def input_gpu_hours(gensets: list, styles: list[dict], filters: list) -> dict[tuple[str, str], float]:
    """GPU hours to make a run's synthetic input, by (generated set folder, filter name or ""): the set's generation,
    the style its prompts used (matched by the style's content hash in the set's identity) and the filter's scoring
    (every session). `filters`: `reporting.filters.FilterRun`s."""
    style_h = {str(s.get("hash")): s.get("gpu_s", 0.0) / 3600 for s in styles if s.get("hash")}
    out: dict[tuple[str, str], float] = {}
    for g in gensets:
        parts = [p.removeprefix("lora-") for p in str(g.settings.get("style_hash") or "").split("+") if p]
        out[(str(g.folder.resolve()), "")] = g.gpu_seconds / 3600 + sum(style_h.get(p, 0.0) for p in parts)
    for f in filters:
        key = str(Path(f.set_folder).resolve())
        out[(key, f.name)] = out.get((key, ""), 0.0) + f.cost["gpu_seconds"] / 3600
    return out


def _input_key(run: Run, made: dict, names: dict[str, list[str]]) -> tuple[str, str] | None:
    """The (set folder, filter) a run's synthetic images came from; None for a real-only run."""
    syn = run.config.get("synthetic") or {}
    if not syn.get("path"):
        return None
    where = str(Path(syn["path"]).resolve())
    if (where, "") not in made and len(names.get(Path(syn["path"]).name, [])) == 1:
        where = names[Path(syn["path"]).name][0]  # the study moved: its set, found by its folder name
    return where, syn.get("filter") or ""


def _gains(runs: list[Run], made: dict, names: dict[str, list[str]]) -> dict[tuple, list[dict]]:
    """(dataset, setting, strategy) -> one record per run: its gain over the seed's vanilla run and the extra hours."""
    vanilla = {(r.labels["dataset"], r.labels["model"], r.labels["shots"], r.labels["seed"]): r for r in runs
               if r.labels["strategy"] == "vanilla"}
    groups: dict[tuple, list[dict]] = {}
    for setting, members in settings(runs):
        for r in members:
            lab = r.labels
            base = vanilla.get((lab["dataset"], lab["model"], lab["shots"], lab["seed"]))
            if base is None or r is base or lab["strategy"] == "vanilla":
                continue
            key = _input_key(r, made, names)
            # a real-only control (vanilla_mixup, ...) is listed once per model and shots, not under every setting
            name = setting_name(*setting) if takes_synthetic(lab["strategy"]) else setting_name(*setting[:2])
            group = groups.setdefault((lab["dataset"], name, lab["strategy"]), [])
            if all(y["run"] != r.id for y in group):
                group.append({"run": r.id, "dataset": lab["dataset"], "setting": name, "strategy": lab["strategy"],
                              "gain": r.top1 - base.top1,
                              "extra_finetune_gpu_h": (r.result["gpu_s"] - base.result["gpu_s"]) / 3600,
                              "synthetic_input_gpu_h": made.get(key, 0.0) if key else 0.0})
    return groups


def _mean_gain(xs: list[dict]) -> dict:
    gain = sum(x["gain"] for x in xs) / len(xs)
    hours = sum(x["extra_finetune_gpu_h"] + x["synthetic_input_gpu_h"] for x in xs) / len(xs)
    return {**{k: xs[0][k] for k in ("dataset", "setting", "strategy")}, "seeds": len(xs), "gain": gain,
            "hours": hours, "per_hour": gain / hours if hours > 0 else None}


def accuracy_per_gpu_hour(runs: list[Run], gensets: list, styles: list[dict] | None = None,
                          filters: list | None = None) -> Table | None:
    """Test top-1 gained over vanilla per extra GPU-hour, per setting (model, shots, volume, guidance, prompt style,
    filter) and strategy: the extra fine-tuning over the seed's vanilla run, plus everything that made the run's
    synthetic images (style, generation, filter; `input_gpu_hours`). Means over the setting's seeds."""
    names: dict[str, list[str]] = {}  # set folder name -> resolved folders, for runs of a moved or copied study
    for g in gensets:
        names.setdefault(g.folder.name, []).append(str(g.folder.resolve()))
    groups = _gains(runs, input_gpu_hours(gensets, styles or [], filters or []), names)
    if not groups:
        return None
    ordered = [xs for _, xs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], rank(kv[0][2])))]
    cols = [*plain("dataset", "setting", "strategy", "seeds"),
            Col("Δ top-1 (pts)", "gain", "{:+.2f}".format),
            Col("extra GPU h (fine-tune + style + generation + filter)", "hours", "{:.3f}".format),
            Col("pts per GPU h", "per_hour", lambda v: "– (no extra GPU time)" if v is None else f"{v:+.2f}")]
    return Table("accuracy_per_gpu_hour", "Accuracy gained over vanilla per extra GPU-hour", cols,
                 [x for xs in ordered for x in xs],
                 "per seed, paired with that seed's vanilla run, then averaged; a generated set (and its style and "
                 "filter) counts in full for every run that uses it, since each setting would need it on its own",
                 shown=[_mean_gain(xs) for xs in ordered])


def runs_table(runs: list[Run]) -> Table:
    raw = [{"run": r.id, **r.labels, "top1": r.result["test"]["top1"], "top5": r.result["test"]["top5"],
            "mean_class_acc": r.result["test"]["mean_class_acc"], "steps": r.result["total_steps"],
            "wall_s": r.result["wall_s"], "gpu_s": r.result["gpu_s"],
            "leep_pretrained": r.result["leep"].get("pretrained"), "leep_stage1": r.result["leep"].get("stage1"),
            "selected": r.result["selected"]}
           for r in sorted(runs, key=lambda r: (r.labels["dataset"], rank(r.labels["strategy"]), r.id))]
    two = "{:.2f}".format
    cols = [*plain("run", "dataset", "model", "strategy", "seed", "shots"),
            Col("volume", "volume", lambda v: str(v or "–")),
            Col("prompts", ("prompt", "filter"), lambda p, f: str(p or "–") + (f", filter {f}" if f else "")),
            Col("top-1", "top1", two), Col("top-5", "top5", two), Col("mean class acc", "mean_class_acc", two),
            *plain("steps"), Col("wall s", "wall_s", "{:.0f}".format)]
    return Table("runs", "Every run", cols, raw)


def _acc(v) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "–"


def duplicates_table(duplicates: list[dict]) -> Table:
    cols = [Col("repeated folder", "run"), Col("run counted instead", "kept"), *plain("identity", "seed"),
            Col("its top-1", "top1", _acc), Col("counted top-1", "kept_top1", _acc)]
    return Table("duplicates", "Duplicate run folders (not counted)", cols, duplicates,
                 f"{len(duplicates)} run folder(s) share the identity and seed of a run already counted (a copied or "
                 "moved study?); each run is counted once. Delete the copies to silence this")
