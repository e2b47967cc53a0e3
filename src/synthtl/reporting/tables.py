"""Result tables (mean ± std per study setting, deltas and paired tests vs vanilla, the paper's numbers beside ours)
rendered as Markdown, CSV, LaTeX and HTML."""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from synthtl.reporting.collect import SYNTHETIC_STRATEGIES, Run
from synthtl.reporting.stats import fmt_delta, fmt_mean_std, mean_std, paired

STRATEGY_ORDER = ["vanilla", "vanilla_matched", "vanilla_mixup", "from_scratch", "mixed", "synthetic_only", "bridged",
                  "bridged_reinit", "bridged++"]

# The paper's numbers (docs/method.md; ResNet-18, full data, 1k synthetic images per class).
PAPER_TOP1 = {("aircraft", "vanilla", None): 79.7, ("cars", "vanilla", None): 83.8,
              ("aircraft", "bridged++", "single"): 85.2, ("cars", "bridged++", "single"): 91.6,
              ("dtd", "bridged++", "single"): 72.3, ("food101", "bridged++", "single"): 84.2,
              ("sun397", "bridged++", "single"): 60.8, ("aircraft", "bridged++", "dsi"): 85.8,
              ("cars", "bridged++", "dsi"): 92.0, ("dtd", "bridged++", "dsi"): 72.7,
              ("food101", "bridged++", "dsi"): 84.6, ("sun397", "bridged++", "dsi"): 63.4}
PAPER_LEEP = {"aircraft": (-4.30, -3.41)}


@dataclass
class Table:
    key: str  # file stem
    title: str
    columns: list[str]
    rows: list[list[str]]
    raw: list[dict] = field(default_factory=list)  # long-format numbers (the CSV)
    note: str = ""


def strategy_rank(s: str) -> int:
    return STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else len(STRATEGY_ORDER)


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
        if lab["strategy"] in SYNTHETIC_STRATEGIES:
            prompt = lab["prompt"] if not lab.get("filter") else f"{lab['prompt']}, filter {lab['filter']}"
            syn.setdefault((lab["model"], lab["shots"], lab["volume"], lab["guidance"], prompt), []).append(r)
        else:
            base.setdefault((lab["model"], lab["shots"]), []).append(r)
    keys = sorted(syn, key=str) or [(m, s, None, None, None) for m, s in sorted(base, key=str)]
    return [(k, syn.get(k, []) + base.get(k[:2], [])) for k in keys]


def strategy_tables(runs: list[Run], n_boot: int = 10000) -> list[Table]:
    """One table per synthetic setting: datasets x strategies, with vanilla-paired deltas and the paper's numbers."""
    tables = []
    for i, (setting, members) in enumerate(settings(runs)):
        model, shots, volume, guidance, prompt = setting
        strategies = sorted({r.labels["strategy"] for r in members}, key=strategy_rank)
        datasets = sorted({r.labels["dataset"] for r in members})
        paper_cols = sorted({s for (d, s, p) in PAPER_TOP1 if d in datasets and s in strategies
                             and (p is None or p == prompt)}, key=strategy_rank) \
            if model == "resnet18" and not shots and volume in (None, 1000) else []
        columns = ["dataset", *strategies, *[f"paper {s}" for s in paper_cols]]
        rows, raw = [], []
        for ds in datasets:
            cell_runs = {s: [r for r in members if r.labels["dataset"] == ds and r.labels["strategy"] == s]
                         for s in strategies}
            vanilla = _by_seed(cell_runs.get("vanilla", []))
            row = [ds]
            for s in strategies:
                m, sd, n = mean_std([r.top1 for r in cell_runs[s]])
                p = paired(_by_seed(cell_runs[s]), vanilla, n_boot) if s != "vanilla" and vanilla else None
                row.append(fmt_mean_std(m, sd, n) + (f" [{fmt_delta(p)}]" if p and p["n"] else ""))
                paper = PAPER_TOP1.get((ds, s, None if s == "vanilla" else prompt))
                raw.append({"setting": setting_name(*setting), "model": model, "shots": shots, "volume": volume,
                            "guidance": guidance, "prompt": prompt, "dataset": ds, "strategy": s, "mean": m,
                            "std": sd, "n": n, "delta_vs_vanilla": p["mean_diff"] if p else None,
                            "p_value": p["p"] if p else None, "ci_low": p["ci_low"] if p else None,
                            "ci_high": p["ci_high"] if p else None, "paper": paper})
            for s in paper_cols:
                v = PAPER_TOP1.get((ds, s, None if s == "vanilla" else prompt))
                row.append(f"{v:.1f}" if v is not None else "–")
            rows.append(row)
        note = ("mean ± std over seeds; [difference to vanilla paired by seed (paired t-test p)]; the test split is "
                "never used for selection")
        if prompt and ", filter " in prompt:
            kept = [r.result.get("images", {}).get("synthetic") for r in members
                    if r.labels["strategy"] in SYNTHETIC_STRATEGIES]
            kept = [k for k in kept if isinstance(k, int)]
            note += (f"; filtered: runs train on what the filter's rule keeps of the first {volume} per class"
                     + (f" ({min(kept)}–{max(kept)} synthetic images per run)" if kept else ""))
        tables.append(Table(f"strategies_{i + 1}", f"Test top-1 (%), {setting_name(*setting)}", columns, rows, raw,
                            note))
    return tables


def leep_table(runs: list[Run]) -> Table | None:
    """LEEP of the pretrained model (per dataset, model and shots) beside each stage-1 (synthetic) model, per synthetic
    setting (volume, guidance, prompt style, filter) and bridged strategy: methods are never pooled."""
    rows, raw = [], []
    pretrained: dict[tuple, list[float]] = {}
    for r in runs:
        v = (r.result.get("leep") or {}).get("pretrained")
        if v is not None:
            pretrained.setdefault((r.labels["dataset"], r.labels["model"], r.labels["shots"]), []).append(v)
    stage1: dict[tuple, dict[tuple, list[float]]] = {}
    for setting, members in settings(runs):
        for r in members:
            v = (r.result.get("leep") or {}).get("stage1")
            if v is not None:
                key = (r.labels["dataset"], r.labels["model"], r.labels["shots"])
                stage1.setdefault(key, {}).setdefault((setting, r.labels["strategy"]), []).append((r.id, v))
    for key in sorted(set(pretrained) | set(stage1), key=str):
        ds, model, shots = key
        mp, sp, npre = mean_std(pretrained.get(key, []))
        cells = sorted(stage1.get(key, {}).items(), key=lambda kv: (str(kv[0][0]), strategy_rank(kv[0][1])))
        for (setting, strategy), found in cells or [((None,) * 5, None)]:
            values = list(dict(found).values()) if found else []  # each run once
            m1, s1d, n1 = mean_std(values)
            prompt, volume = setting[4], setting[2]
            paper = PAPER_LEEP.get(ds) if (model == "resnet18" and not shots and prompt in (None, "single")
                                           and volume in (None, 1000)) else None
            name = setting_name(model, shots, *setting[2:]) if found else setting_name(model, shots)
            rows.append([ds, name, strategy or "–", fmt_mean_std(mp, sp, npre), fmt_mean_std(m1, s1d, n1),
                         f"{paper[0]:.2f} → {paper[1]:.2f}" if paper else "–"])
            raw.append({"dataset": ds, "model": model, "shots": shots, "setting": name, "strategy": strategy,
                        "leep_pretrained": mp, "leep_pretrained_std": sp, "n_pretrained": npre, "leep_stage1": m1,
                        "leep_stage1_std": s1d, "n_stage1": n1, "paper_pretrained": paper[0] if paper else None,
                        "paper_stage1": paper[1] if paper else None})
    if not rows:
        return None
    return Table("leep", "LEEP on the real training images: the pretrained model vs the stage-1 (synthetic) model",
                 ["dataset", "setting", "strategy", "pretrained (ImageNet head)", "after stage 1", "paper"], rows, raw,
                 "higher is better; one row per synthetic setting (prompt style, filter, volume, guidance) and "
                 "bridged strategy, mean ± std over its seeds; the pretrained column is the same model on the same "
                 "data in every row of a dataset")


def sweep_table(runs: list[Run], axis: str, key: str, title: str) -> Table | None:
    """Accuracy along one grid axis (volume, guidance or shots) for each dataset and strategy."""
    values = sorted({r.labels[axis] for r in runs if r.labels.get(axis) is not None})
    if len(values) < 2:
        return None
    groups: dict[tuple, dict] = {}
    for r in runs:
        v = r.labels.get(axis)
        if v is None:
            continue
        groups.setdefault((r.labels["dataset"], r.labels["model"], r.labels["strategy"]), {}).setdefault(v, []).append(
            r.top1)
    rows, raw = [], []
    for (ds, model, strategy), by_v in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                            strategy_rank(kv[0][2]))):
        row = [ds, model, strategy]
        for v in values:
            m, sd, n = mean_std(by_v.get(v, []))
            row.append(fmt_mean_std(m, sd, n))
            raw.append({"dataset": ds, "model": model, "strategy": strategy, axis: v, "mean": m, "std": sd, "n": n})
        rows.append(row)
    return Table(key, title, ["dataset", "model", "strategy", *[f"{axis} {v:g}" for v in values]], rows, raw,
                 "test top-1 (%), mean ± std over seeds")


def cost_table(runs: list[Run], gensets: list, styles: list[dict], filters: list[dict] | None = None) -> Table:
    """Wall and GPU hours per stage. `filters`: the cost of each filter (`filtering.store.read_cost`)."""
    rows, raw = [], []

    def add(stage: str, n: int, seconds: float, gpu_s: float, rate: str) -> None:
        rows.append([stage, str(n), f"{seconds / 3600:.3f}", f"{gpu_s / 3600:.3f}", rate])
        raw.append({"stage": stage, "jobs": n, "wall_hours": seconds / 3600, "gpu_hours": gpu_s / 3600})

    for stage, group in (("style: textual inversion", [s for s in styles if s.get("method") != "lora"]),
                         ("style: LoRA", [s for s in styles if s.get("method") == "lora"])):
        if group:  # their steps differ in cost: one rate each
            secs = sum(s["train_seconds"] for s in group)
            steps = sum(s["steps"] for s in group)
            add(stage, len(group), secs, sum(s.get("gpu_s", 0) for s in group),
                f"{steps / secs:.2f} steps/s" if secs else "–")
    if gensets:
        secs = sum(g.seconds for g in gensets)
        imgs = sum(g.images for g in gensets)
        add("generation", len(gensets), secs, sum(g.gpu_seconds for g in gensets),
            f"{imgs / secs:.2f} images/s" if secs else "–")
    if filters:  # every scoring session of each filter, killed ones included
        costs = filters
        secs = sum(c["seconds"] for c in costs)
        scored = sum(c["scored"] for c in costs)
        add("filtering (all sessions)", len(filters), secs, sum(c["gpu_seconds"] for c in costs),
            f"{scored / secs:.1f} images/s" if secs else "–")
    stages: dict[str, list] = {}
    for r in runs:
        for name, st in r.result["stages"].items():
            stages.setdefault(name, []).append(st)
    for name, sts in sorted(stages.items()):
        secs = sum(s["wall_s"] for s in sts)
        rate = [s["train_images_per_s"] for s in sts if s.get("train_images_per_s")]
        add(f"fine-tuning: {name} stage", len(sts), secs, sum(s["gpu_s"] for s in sts),
            f"{sum(rate) / len(rate):.0f} train images/s" if rate else "–")
    return Table("cost", "Cost per stage", ["stage", "jobs", "wall hours", "GPU hours", "throughput"], rows, raw,
                 "GPU hours are 0 for work done on CPU")


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


def accuracy_per_gpu_hour(runs: list[Run], gensets: list, styles: list[dict] | None = None,
                          filters: list | None = None) -> Table | None:
    """Test top-1 gained over vanilla per extra GPU-hour, per setting (model, shots, volume, guidance, prompt style,
    filter) and strategy: the extra fine-tuning over the seed's vanilla run, plus everything that made the run's
    synthetic images (style, generation, filter; `input_gpu_hours`). Means over the setting's seeds."""
    made = input_gpu_hours(gensets, styles or [], filters or [])
    names = {}  # set folder name -> resolved folder, for runs of a moved or copied study (their paths are old)
    for g in gensets:
        names.setdefault(g.folder.name, []).append(str(g.folder.resolve()))
    vanilla = {(r.labels["dataset"], r.labels["model"], r.labels["shots"], r.labels["seed"]): r for r in runs
               if r.labels["strategy"] == "vanilla"}
    groups: dict[tuple, list[dict]] = {}
    for setting, members in settings(runs):
        for r in members:
            lab = r.labels
            base = vanilla.get((lab["dataset"], lab["model"], lab["shots"], lab["seed"]))
            if base is None or r is base or lab["strategy"] == "vanilla":
                continue
            syn = r.config.get("synthetic") or {}
            key = None
            if syn.get("path"):
                where = str(Path(syn["path"]).resolve())
                if (where, "") not in made and len(names.get(Path(syn["path"]).name, [])) == 1:
                    where = names[Path(syn["path"]).name][0]  # the study moved: its set, found by its folder name
                key = (where, syn.get("filter") or "")
            # a real-only control (vanilla_mixup, ...) is listed once per model and shots, not under every setting
            name = setting_name(*setting) if lab["strategy"] in SYNTHETIC_STRATEGIES else setting_name(*setting[:2])
            x = {"run": r.id, "dataset": lab["dataset"], "setting": name, "strategy": lab["strategy"],
                 "gain": r.top1 - base.top1,
                 "extra_finetune_gpu_h": (r.result["gpu_s"] - base.result["gpu_s"]) / 3600,
                 "synthetic_input_gpu_h": made.get(key, 0.0) if key else 0.0}
            group = groups.setdefault((lab["dataset"], name, lab["strategy"]), [])
            if all(y["run"] != r.id for y in group):
                group.append(x)
    if not groups:
        return None
    rows, raw = [], []
    for (ds, setting, s), xs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], strategy_rank(kv[0][2]))):
        raw += xs
        gain = sum(x["gain"] for x in xs) / len(xs)
        hours = sum(x["extra_finetune_gpu_h"] + x["synthetic_input_gpu_h"] for x in xs) / len(xs)
        per = f"{gain / hours:+.2f}" if hours > 0 else "– (no extra GPU time)"
        rows.append([ds, setting, s, str(len(xs)), f"{gain:+.2f}", f"{hours:.3f}", per])
    return Table("accuracy_per_gpu_hour", "Accuracy gained over vanilla per extra GPU-hour",
                 ["dataset", "setting", "strategy", "seeds", "Δ top-1 (pts)",
                  "extra GPU h (fine-tune + style + generation + filter)", "pts per GPU h"], rows, raw,
                 "per seed, paired with that seed's vanilla run, then averaged; a generated set (and its style and "
                 "filter) counts in full for every run that uses it, since each setting would need it on its own")


# ---------------------------------------------------------------------------------------------------- rendering
def to_markdown(t: Table) -> str:
    out = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
    if t.note:
        out += ["", f"*{t.note}*"]
    return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    records = t.raw or [dict(zip(t.columns, row, strict=True)) for row in t.rows]
    keys = list(dict.fromkeys(k for r in records for k in r))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\to$"), ("–", "--"), ("Δ", r"$\Delta$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * (len(t.columns) - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(t.title)}. {_tex(t.note)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return (f"<h3>{html.escape(t.title)}</h3><table class='results' data-table='{t.key}'><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>{note}")
