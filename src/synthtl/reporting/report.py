"""`synthtl report <study dir>`: tables (Markdown, CSV, LaTeX), figures (PNG) and one self-contained HTML page,
built only from the files in the study folder."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import yaml

from synthtl.config import ReportConfig, StudyConfig, from_dict
from synthtl.errors import DataError
from synthtl.files import git_sha, read_json, write_text
from synthtl.reporting import plots
from synthtl.reporting.collect import collect_gensets, collect_styles, find_runs, unique_runs
from synthtl.reporting.html import Page
from synthtl.reporting.tables import (
    Table,
    accuracy_per_gpu_hour,
    cost_table,
    leep_table,
    setting_name,
    settings,
    strategy_rank,
    strategy_tables,
    sweep_table,
    to_csv,
    to_latex,
    to_markdown,
)


def study_report_config(study_dir: Path) -> ReportConfig:
    """The report section of the study's study.yaml (defaults when the folder has none)."""
    f = study_dir / "study.yaml"
    if f.is_file():
        return from_dict(StudyConfig, yaml.safe_load(f.read_text())).report
    return ReportConfig()


def _runs_table(runs) -> Table:
    rows, raw = [], []
    for r in sorted(runs, key=lambda r: (r.labels["dataset"], strategy_rank(r.labels["strategy"]), r.id)):
        lab, res = r.labels, r.result
        prompt = str(lab.get("prompt") or "–") + (f", filter {lab['filter']}" if lab.get("filter") else "")
        rows.append([r.id, lab["dataset"], lab["model"], lab["strategy"], str(lab["seed"]), str(lab["shots"]),
                     str(lab.get("volume") or "–"), prompt, f"{res['test']['top1']:.2f}",
                     f"{res['test']['top5']:.2f}", f"{res['test']['mean_class_acc']:.2f}", str(res["total_steps"]),
                     f"{res['wall_s']:.0f}"])
        raw.append({"run": r.id, **lab, "top1": res["test"]["top1"], "top5": res["test"]["top5"],
                    "mean_class_acc": res["test"]["mean_class_acc"], "steps": res["total_steps"],
                    "wall_s": res["wall_s"], "gpu_s": res["gpu_s"], "leep_pretrained": res["leep"].get("pretrained"),
                    "leep_stage1": res["leep"].get("stage1"), "selected": res["selected"]})
    return Table("runs", "Every run", ["run", "dataset", "model", "strategy", "seed", "shots", "volume", "prompts",
                                       "top-1", "top-5", "mean class acc", "steps", "wall s"], rows, raw)


def _duplicates_table(duplicates: list[dict]) -> Table:
    rows = [[d["run"], d["kept"], d["identity"], str(d["seed"]), _fmt(d["top1"]), _fmt(d["kept_top1"])]
            for d in duplicates]
    return Table("duplicates", "Duplicate run folders (not counted)",
                 ["repeated folder", "run counted instead", "identity", "seed", "its top-1", "counted top-1"], rows,
                 duplicates, f"{len(duplicates)} run folder(s) share the identity and seed of a run already counted "
                 "(a copied or moved study?); each run is counted once. Delete the copies to silence this")


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "–"


def _uses_random_weights(runs, gensets) -> bool:
    return (any(not r.config.get("model", {}).get("pretrained", True) for r in runs)
            or any(g.settings.get("model") == "tiny" for g in gensets))


def build_report(study_dir: str | Path, cfg: ReportConfig | None = None) -> dict[str, Path]:
    """Writes <study>/report/{index.html, report.md, runs.csv, tables/, figures/}; returns the main paths."""
    study_dir = Path(study_dir)
    cfg = cfg or study_report_config(study_dir)
    runs, duplicates = unique_runs(find_runs(study_dir))
    if not runs:
        raise DataError(f"{study_dir} has no finished runs (folders with result.json under runs/); run the study first")
    peers = published_entries(cfg)  # before any slow work: a bad file fails at once
    gensets, styles = collect_gensets(study_dir), collect_styles(study_dir)
    out = study_dir / "report"
    figs = out / "figures"
    meta = read_json(study_dir / "plan.json") if (study_dir / "plan.json").is_file() else {}
    page = Page(f"synthtl report: {meta.get('name', study_dir.name)}")
    page.text(f"{meta.get('description', '')}", "meta")
    page.text(f"{len(runs)} runs, {len(gensets)} generated sets, {len(styles)} style embeddings · generated "
              f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} · synthtl {git_sha()}", "meta")
    if _uses_random_weights(runs, gensets):
        page.text("This study uses random-weight components (a tiny Stable Diffusion and/or a classifier without "
                  "pretrained weights): its numbers prove the plumbing, not the method.", "banner")
    tables: list[Table] = []
    if duplicates:
        dup = _duplicates_table(duplicates)
        page.text(f"{len(duplicates)} run folder(s) repeat a run already counted (same identity and seed, e.g. a "
                  "copied or moved study): each run is counted once; the repeats are listed under 'Duplicate run "
                  "folders'.", "banner")
        warnings.warn(dup.note, stacklevel=2)

    page.section("Results by strategy", "strategies")
    for t in strategy_tables(runs, cfg.bootstrap):
        tables.append(t)
        page.table(t)
        page.figure(plots.radar(t, figs / f"radar_{t.key}.png"), "strategies across datasets")
    page.section("Convergence on the real images", "convergence")
    for i, (setting, members) in enumerate(settings(runs)):
        for ds in sorted({r.labels["dataset"] for r in members}):
            name = f"convergence_{ds}" + (f"_{i + 1}" if i else "")
            page.figure(plots.convergence(members, ds, figs / f"{name}.png"),
                        f"{ds}, {setting_name(*setting)}: stage-2 curves")
    sweeps = [("volume", "volume", "Synthetic volume (images per class)", False),
              ("guidance", "guidance", "Guidance scale of the generator", False),
              ("shots", "fewshot", "Few-shot: real images per class", True)]
    for axis, key, title, log2 in sweeps:
        t = sweep_table(runs, axis, key, title)
        if t is not None:
            page.section(title, key)
            tables.append(t)
            page.table(t)
            page.figure(plots.sweep(t, axis, figs / f"{key}.png", log2), title)
    t = leep_table(runs)
    if t is not None:
        page.section("Transferability (LEEP)", "leep")
        tables.append(t)
        page.table(t)
        page.figure(plots.leep_bars(t, figs / "leep.png"), "LEEP before and after stage 1")
    from synthtl.reporting.filters import collect_filters

    found_filters = collect_filters(gensets)  # read once: quality, cost and the filter section use them
    if gensets and cfg.quality:
        qr = quality_section(runs, gensets, cfg, out, found_filters)
        page.section("Synthetic-set quality", "quality")
        tables.append(qr.quality)
        page.table(qr.quality)
        page.section("Leakage check: synthetic vs test", "leakage")
        tables.append(qr.synthetic_leak)
        page.table(qr.synthetic_leak)
        page.pairs(qr.synthetic_examples)
        page.section("Leakage check: train vs test", "leakage_train")
        tables.append(qr.train_leak)
        page.table(qr.train_leak)
        page.pairs(qr.train_examples)
    published = published_section(page, runs, peers, cfg.bootstrap)
    if published is not None:
        tables.append(published)
    page.section("Cost", "cost")
    filters = found_filters[0]
    cost = cost_table(runs, gensets, styles, [f.cost for f in filters])
    tables.append(cost)
    page.table(cost)
    page.figure(plots.cost_bars(cost, figs / "cost.png"), "cost per stage")
    per_hour = accuracy_per_gpu_hour(runs, gensets, styles, filters)
    if per_hour is not None:
        tables.append(per_hour)
        page.table(per_hour)
    if gensets:
        page.section("Real vs synthetic images", "grids")
        for path, caption in image_grids(runs, gensets, cfg, figs / "grids"):
            page.figure(path, caption)
    if gensets:
        tables += filter_section(page, found_filters, figs / "filters", cfg.grid_classes)
    page.section("Every run", "runs")
    runs_t = _runs_table(runs)
    tables.append(runs_t)
    page.table(runs_t)
    if duplicates:
        page.section("Duplicate run folders", "duplicates")
        tables.append(dup)
        page.table(dup)

    for t in tables:
        write_text(out / "tables" / f"{t.key}.md", to_markdown(t))
        write_text(out / "tables" / f"{t.key}.csv", to_csv(t))
        write_text(out / "tables" / f"{t.key}.tex", to_latex(t))
    write_text(out / "runs.csv", to_csv(runs_t))
    write_text(out / "report.md", f"# {page.title}\n\n" + "\n".join(to_markdown(t) for t in tables))
    write_text(out / "index.html", page.render())
    return {"html": out / "index.html", "markdown": out / "report.md", "tables": out / "tables", "figures": figs}


def published_entries(cfg: ReportConfig) -> list:
    """The shipped peers' numbers (report.published) and the user's own file (report.published_file)."""
    from synthtl.reporting.published import load_published

    return (load_published() if cfg.published else []) + (load_published(cfg.published_file)
                                                           if cfg.published_file else [])


def published_section(page: Page, runs, entries: list, n_boot: int) -> Table | None:
    """Peers' published numbers on the study's datasets beside ours (none for these datasets: no section)."""
    from synthtl.reporting.published import published_table

    t = published_table(runs, entries, n_boot)
    if t is None:
        return None
    page.section("Beside peers' published numbers (ours)", "published")
    page.text("Beyond the paper: what peers report on the same datasets, copied from their papers with the table "
              "each number comes from. Their classifiers, resolutions and amounts of real data differ from ours "
              "(see protocol). Rows are grouped by the real images the classifier trains on (full split, k-shot, "
              "none): compare only within a group, and read each row's difference to its own baseline, not the "
              "absolute numbers.")
    page.table(t)
    return t


def filter_section(page: Page, found_filters: tuple[list, list[str]], folder: Path, max_classes: int) -> list[Table]:
    """Keep rates, score histograms and dropped examples of every finished filter (`collect_filters`' finished
    filters and problems; none: no section)."""
    from synthtl.reporting.filters import dropped_sheet, histogram, keep_table

    found, problems = found_filters
    if not found and not problems:
        return []
    page.section("Synthetic-image filters (ours)", "filters")
    page.text("Beyond the paper: images of a generated set scored by zero-shot CLIP or by a classifier fine-tuned on "
              "the real train split (`synthtl filter`), keeping the best per class or those above a threshold.")
    for p in problems:
        page.text(f"not shown: {p}", "banner")
    if not found:
        return []
    t = keep_table(found)
    page.table(t)
    for f in found:
        stem = f"{f.set_id}_{f.name}"
        page.figure(histogram(f, folder / f"{stem}_scores.png"),
                    f"{f.label}: scores of kept and dropped images (top_k and fraction rank within each class)")
        page.figure(dropped_sheet(f, folder / f"{stem}_dropped.png", max_classes=max_classes),
                    f"{f.label}: dropped images")
    return [t]


def quality_section(runs, gensets, cfg: ReportConfig, out: Path, found_filters: tuple[list, list[str]]):
    """Quality and leakage tables (`reporting.quality`, imported only when needed: it loads torch models)."""
    from synthtl.reporting.quality import quality

    return quality(runs, gensets, cfg, out / "cache", found_filters)


def image_grids(runs, gensets, cfg: ReportConfig, folder: Path) -> list[tuple[Path, str]]:
    """Per dataset: real train images above one row per generated set (single template, DSI, ...)."""
    from synthtl.generation.sheets import contact_sheets
    from synthtl.reporting.quality import real_splits

    out = []
    by_dataset: dict[str, list] = {}
    for g in gensets:
        by_dataset.setdefault(g.labels.get("dataset") or "?", []).append(g)
    for ds, sets in sorted(by_dataset.items()):
        splits = real_splits(runs, ds)
        labelled = [(f"{g.labels.get('prompt')} g{g.settings.get('guidance')}", g.folder) for g in sets]
        names = None
        if splits is not None:
            names = list(splits[0].names[: cfg.grid_classes])
        else:
            first = sorted({n for n in sets[0].settings.get("classes", [])})
            names = first[: cfg.grid_classes]
        paths = contact_sheets(labelled, folder / ds, per_row=6, real=splits[0] if splits else None, classes=names)
        out += [(p, f"{ds}: {p.stem}") for p in paths]
    return out
