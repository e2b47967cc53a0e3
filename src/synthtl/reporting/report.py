"""`synthtl report <study dir>`: tables (Markdown, CSV, LaTeX), figures (PNG) and one self-contained HTML page,
built only from the files in the study folder. Each section adds to the page and returns its tables."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from synthtl.config import ReportConfig, StudyConfig, from_dict
from synthtl.errors import DataError
from synthtl.files import git_sha, read_json, write_text
from synthtl.reporting import plots
from synthtl.reporting.collect import GenSet, Run, collect_gensets, collect_styles, find_runs, unique_runs
from synthtl.reporting.html import Page
from synthtl.reporting.render import Table, to_csv, to_latex, to_markdown
from synthtl.reporting.tables import (
    accuracy_per_gpu_hour,
    cost_table,
    duplicates_table,
    leep_table,
    runs_table,
    setting_name,
    settings,
    strategy_tables,
    sweep_table,
)


@dataclass
class Study:
    """The study folder's files, read once for every section."""

    folder: Path
    cfg: ReportConfig
    meta: dict  # plan.json: name and description
    runs: list[Run]
    duplicates: list[dict]  # run folders that repeat a counted run (`collect.unique_runs`)
    gensets: list[GenSet]
    styles: list[dict]
    filters: tuple[list, list[str]]  # finished filters and the ones that cannot be read (`filters.collect_filters`)
    peers: list  # published numbers (`published.load_published`)

    @property
    def figs(self) -> Path:
        return self.folder / "report" / "figures"


def study_report_config(study_dir: Path) -> ReportConfig:
    """The report section of the study's study.yaml (defaults when the folder has none)."""
    f = study_dir / "study.yaml"
    if f.is_file():
        return from_dict(StudyConfig, yaml.safe_load(f.read_text())).report
    return ReportConfig()


def read_study(folder: Path, cfg: ReportConfig) -> Study:
    from synthtl.reporting.filters import collect_filters
    from synthtl.reporting.published import load_published

    runs, duplicates = unique_runs(find_runs(folder))
    if not runs:
        raise DataError(f"{folder} has no finished runs (folders with result.json under runs/); run the study first")
    # the peers' numbers before any slow work: a bad file fails at once
    peers = (load_published() if cfg.published else []) + (load_published(cfg.published_file)
                                                           if cfg.published_file else [])
    gensets = collect_gensets(folder)
    meta = read_json(folder / "plan.json") if (folder / "plan.json").is_file() else {}
    return Study(folder, cfg, meta, runs, duplicates, gensets, collect_styles(folder), collect_filters(gensets), peers)


# ------------------------------------------------------------------------------------------------------ sections
def header(s: Study, page: Page) -> list[Table]:
    page.text(f"{s.meta.get('description', '')}", "meta")
    page.text(f"{len(s.runs)} runs, {len(s.gensets)} generated sets, {len(s.styles)} style embeddings · generated "
              f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} · synthtl {git_sha()}", "meta")
    if (any(not r.config.get("model", {}).get("pretrained", True) for r in s.runs)
            or any(g.settings.get("model") == "tiny" for g in s.gensets)):
        page.text("This study uses random-weight components (a tiny Stable Diffusion and/or a classifier without "
                  "pretrained weights): its numbers prove the plumbing, not the method.", "banner")
    if s.duplicates:
        page.text(f"{len(s.duplicates)} run folder(s) repeat a run already counted (same identity and seed, e.g. a "
                  "copied or moved study): each run is counted once; the repeats are listed under 'Duplicate run "
                  "folders'.", "banner")
        warnings.warn(duplicates_table(s.duplicates).note, stacklevel=3)  # the caller of build_report
    return []


def strategies(s: Study, page: Page) -> list[Table]:
    page.section("Results by strategy", "strategies")
    tables = strategy_tables(s.runs, s.cfg.bootstrap)
    for t in tables:
        page.table(t)
        page.figure(plots.radar(t, s.figs / f"radar_{t.key}.png"), "strategies across datasets")
    return tables


def convergence(s: Study, page: Page) -> list[Table]:
    page.section("Convergence on the real images", "convergence")
    for i, (setting, members) in enumerate(settings(s.runs)):
        for ds in sorted({r.labels["dataset"] for r in members}):
            name = f"convergence_{ds}" + (f"_{i + 1}" if i else "")
            page.figure(plots.convergence(members, ds, s.figs / f"{name}.png"),
                        f"{ds}, {setting_name(*setting)}: stage-2 curves")
    return []


def sweeps(s: Study, page: Page) -> list[Table]:
    tables = []
    for axis, key, title, log2 in (("volume", "volume", "Synthetic volume (images per class)", False),
                                   ("guidance", "guidance", "Guidance scale of the generator", False),
                                   ("shots", "fewshot", "Few-shot: real images per class", True)):
        t = sweep_table(s.runs, axis, key, title)
        if t is not None:
            page.section(title, key)
            page.table(t)
            page.figure(plots.sweep(t, axis, s.figs / f"{key}.png", log2), title)
            tables.append(t)
    return tables


def leep(s: Study, page: Page) -> list[Table]:
    t = leep_table(s.runs)
    if t is None:
        return []
    page.section("Transferability (LEEP)", "leep")
    page.table(t)
    page.figure(plots.leep_bars(t, s.figs / "leep.png"), "LEEP before and after stage 1")
    return [t]


def quality(s: Study, page: Page) -> list[Table]:
    """Quality and leakage tables (`reporting.quality`, imported only when needed: it loads torch models)."""
    if not s.gensets or not s.cfg.quality:
        return []
    from synthtl.reporting.quality import quality as measure

    qr = measure(s.runs, s.gensets, s.cfg, s.folder / "report" / "cache", s.filters)
    page.section("Synthetic-set quality", "quality")
    page.table(qr.quality)
    for t, examples, title, anchor in ((qr.synthetic_leak, qr.synthetic_examples, "synthetic", "leakage"),
                                       (qr.train_leak, qr.train_examples, "train", "leakage_train")):
        page.section(f"Leakage check: {title} vs test", anchor)
        page.table(t)
        page.pairs(examples)
    return [qr.quality, qr.synthetic_leak, qr.train_leak]


def published(s: Study, page: Page) -> list[Table]:
    """Peers' published numbers on the study's datasets beside ours (none for these datasets: no section)."""
    from synthtl.reporting.published import published_table

    t = published_table(s.runs, s.peers, s.cfg.bootstrap)
    if t is None:
        return []
    page.section("Beside peers' published numbers (ours)", "published")
    page.text("Beyond the paper: what peers report on the same datasets, copied from their papers with the table "
              "each number comes from. Their classifiers, resolutions and amounts of real data differ from ours "
              "(see protocol). Rows are grouped by the real images the classifier trains on (full split, k-shot, "
              "none): compare only within a group, and read each row's difference to its own baseline, not the "
              "absolute numbers.")
    page.table(t)
    return [t]


def cost(s: Study, page: Page) -> list[Table]:
    page.section("Cost", "cost")
    t = cost_table(s.runs, s.gensets, s.styles, [f.cost for f in s.filters[0]])
    page.table(t)
    page.figure(plots.cost_bars(t, s.figs / "cost.png"), "cost per stage")
    per_hour = accuracy_per_gpu_hour(s.runs, s.gensets, s.styles, s.filters[0])
    page.table(per_hour)
    return [t] if per_hour is None else [t, per_hour]


def image_grids(s: Study, page: Page) -> list[Table]:
    """Per dataset: real train images above one row per generated set (single template, DSI, ...)."""
    if not s.gensets:
        return []
    from synthtl.generation.sheets import contact_sheets
    from synthtl.reporting.features import real_splits

    page.section("Real vs synthetic images", "grids")
    by_dataset: dict[str, list] = {}
    for g in s.gensets:
        by_dataset.setdefault(g.labels.get("dataset") or "?", []).append(g)
    for ds, sets in sorted(by_dataset.items()):
        splits = real_splits(s.runs, ds)
        labelled = [(f"{g.labels.get('prompt')} g{g.settings.get('guidance')}", g.folder) for g in sets]
        names = list(splits[0].names) if splits is not None else sorted(set(sets[0].settings.get("classes", [])))
        paths = contact_sheets(labelled, s.figs / "grids" / ds, per_row=6, real=splits[0] if splits else None,
                               classes=names[: s.cfg.grid_classes])
        for p in paths:
            page.figure(p, f"{ds}: {p.stem}")
    return []


def filters(s: Study, page: Page) -> list[Table]:
    """Keep rates, score histograms and dropped examples of every finished filter (none: no section)."""
    from synthtl.reporting.filters import dropped_sheet, histogram, keep_table

    found, problems = s.filters
    if not s.gensets or (not found and not problems):
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
        page.figure(histogram(f, s.figs / "filters" / f"{stem}_scores.png"),
                    f"{f.label}: scores of kept and dropped images (top_k and fraction rank within each class)")
        page.figure(dropped_sheet(f, s.figs / "filters" / f"{stem}_dropped.png", max_classes=s.cfg.grid_classes),
                    f"{f.label}: dropped images")
    return [t]


def every_run(s: Study, page: Page) -> list[Table]:
    page.section("Every run", "runs")
    t = runs_table(s.runs)
    page.table(t)
    return [t]


def duplicates(s: Study, page: Page) -> list[Table]:
    if not s.duplicates:
        return []
    page.section("Duplicate run folders", "duplicates")
    t = duplicates_table(s.duplicates)
    page.table(t)
    return [t]


SECTIONS = (header, strategies, convergence, sweeps, leep, quality, published, cost, image_grids, filters, every_run,
            duplicates)


def build_report(study_dir: str | Path, cfg: ReportConfig | None = None) -> dict[str, Path]:
    """Writes <study>/report/{index.html, report.md, runs.csv, tables/, figures/}; returns the main paths."""
    folder = Path(study_dir)
    study = read_study(folder, cfg or study_report_config(folder))
    page = Page(f"synthtl report: {study.meta.get('name', folder.name)}")
    tables: list[Table] = []
    for section in SECTIONS:
        tables += section(study, page)
    out = folder / "report"
    for t in tables:
        for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
            write_text(out / "tables" / f"{t.key}.{ext}", render(t))
    write_text(out / "runs.csv", to_csv(next(t for t in tables if t.key == "runs")))
    write_text(out / "report.md", f"# {page.title}\n\n" + "\n".join(to_markdown(t) for t in tables))
    write_text(out / "index.html", page.render())
    return {"html": out / "index.html", "markdown": out / "report.md", "tables": out / "tables", "figures": study.figs}
