"""`synthtl report <study>`: tables (md, csv, tex), figures and one self-contained HTML page, from files only."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from synthtl.config import ReportConfig, StudyConfig, from_dict
from synthtl.errors import SynthTLError
from synthtl.files import git_sha, read_json, write_text
from synthtl.reporting import plots, tables
from synthtl.reporting.collect import GenSet, Run, collect_gensets, collect_styles, some_runs, unique_runs
from synthtl.reporting.filters import FilterRun, collect_filters, dropped_sheet, keep_table
from synthtl.reporting.published import Published, load_published, published_table
from synthtl.reporting.render import Page, to_csv, to_latex, to_markdown


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
    filters: tuple[list[FilterRun], list[str]]  # finished filters and why others cannot be read (`collect_filters`)
    peers: list[Published]

    @property
    def figs(self) -> Path:
        return self.folder / "report" / "figures"


def study_report_config(study_dir: Path) -> ReportConfig:
    """The report section of the study's study.yaml (defaults when the folder has none)."""
    f = study_dir / "study.yaml"
    return from_dict(StudyConfig, yaml.safe_load(f.read_text())).report if f.is_file() else ReportConfig()


def read_study(folder: Path, cfg: ReportConfig) -> Study:
    runs, duplicates = unique_runs(some_runs(folder))
    # the peers' numbers before any slow work: a bad file fails at once
    peers = (load_published() if cfg.published else []) + (load_published(cfg.published_file)
                                                           if cfg.published_file else [])
    gensets = collect_gensets(folder)
    _name_own_datasets(runs, gensets)
    meta = read_json(folder / "plan.json") if (folder / "plan.json").is_file() else {}
    return Study(folder, cfg, meta, runs, duplicates, gensets, collect_styles(folder), collect_filters(gensets), peers)


def _name_own_datasets(runs: list[Run], gensets: list[GenSet]) -> None:
    """An own dataset ("folder" or "csv") is named by its folder ("folder:pets_photos") in runs and generated sets
    alike (they are matched by that label); sets keep the plain name when runs read several such folders."""
    roots: dict[str, set[str]] = {}
    for r in runs:
        if r.labels["dataset"] in ("folder", "csv") and (root := (r.config.get("data") or {}).get("root")):
            roots.setdefault(r.labels["dataset"], set()).add(Path(root).name)
            r.labels = {**r.labels, "dataset": f"{r.labels['dataset']}:{Path(root).name}"}
    for g in gensets:
        if (kind := g.labels.get("dataset")) in roots and len(roots[kind]) == 1:
            g.labels = {**g.labels, "dataset": f"{kind}:{next(iter(roots[kind]))}"}


def _figure(s: Study, page: Page, fig, name: str, caption: str) -> None:  # a figure of None: nothing to show
    page.figure(plots.save(fig, s.figs / f"{name}.png"), caption)


# ------------------------------------------------------------------------------------------------------ sections
def header(s: Study, page: Page) -> None:
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
        warnings.warn(tables.duplicates_table(s.duplicates).note, stacklevel=3)  # the caller of build_report


def strategies(s: Study, page: Page) -> None:
    page.section("Results by strategy", "strategies", tables.glossary_table(s.runs))
    if (seeds := min(Counter((r.labels["dataset"], r.labels["strategy"]) for r in s.runs).values())) < 5:
        page.text(f"With {seeds} seed(s) per cell a paired t-test has {max(seeds - 1, 0)} degree(s) of freedom: read "
                  "its p as a rough guide only, and the per-seed differences and the bootstrap interval (CSV) as the "
                  "evidence; more seeds (grid.seeds) tighten both.", "note")
    for t in tables.strategy_tables(s.runs, s.cfg.bootstrap):
        page.table(t)
        _figure(s, page, plots.radar_figure(t), f"radar_{t.key}", "strategies across datasets")


def convergence(s: Study, page: Page) -> None:
    page.section("Convergence on the real images", "convergence")
    for i, (setting, members) in enumerate(tables.settings(s.runs)):
        for ds in sorted({r.labels["dataset"] for r in members}):
            _figure(s, page, plots.convergence_figure(members, ds, tables.setting_name(*setting)),
                    f"convergence_{ds}" + (f"_{i + 1}" if i else ""),
                    f"{ds}, {tables.setting_name(*setting)}: stage-2 curves")


def sweeps(s: Study, page: Page) -> None:
    for axis, key, title in (("volume", "volume", "Synthetic volume (images per class)"),
                             ("guidance", "guidance", "Guidance scale of the generator"),
                             ("shots", "fewshot", "Few-shot: real images per class")):
        if (t := tables.sweep_table(s.runs, axis, key, title)) is not None:
            page.section(title, key, t)
            _figure(s, page, plots.sweep_figure(t, axis, log2=axis == "shots"), key, title)


def leep(s: Study, page: Page) -> None:
    if (t := tables.leep_table(s.runs)) is not None:
        page.section("Transferability (LEEP)", "leep", t)
        _figure(s, page, plots.leep_figure(t), "leep", "LEEP before and after stage 1")


def quality(s: Study, page: Page) -> None:
    """Quality and leakage tables (`reporting.quality`, imported only when needed: it loads torch models)."""
    if not s.gensets or not s.cfg.quality:
        return
    from synthtl.reporting.quality import quality as measure

    qr = measure(s.runs, s.gensets, s.cfg, s.folder / "report" / "cache", s.filters)
    page.section("Synthetic-set quality", "quality", qr.quality)
    page.section("Leakage check: synthetic vs test", "leakage", qr.synthetic_leak)
    page.pairs(qr.synthetic_examples)
    page.section("Leakage check: train vs test", "leakage_train", qr.train_leak)
    page.pairs(qr.train_examples)


def published(s: Study, page: Page) -> None:
    if (t := published_table(s.runs, s.peers, s.cfg.bootstrap)) is not None:
        page.section("Beside peers' published numbers (ours)", "published")
        page.text("Beyond the paper: what peers report on the same datasets, copied from their papers with the table "
                  "each number comes from. Their classifiers, resolutions and amounts of real data differ from ours "
                  "(see protocol). Rows are grouped by the real images the classifier trains on (full split, k-shot, "
                  "none): compare only within a group, and read each row's difference to its own baseline, not the "
                  "absolute numbers.")
        page.table(t)


def cost(s: Study, page: Page) -> None:
    t = tables.cost_table(s.runs, s.gensets, s.styles, [f.cost for f in s.filters[0]])
    page.section("Cost", "cost", t)
    _figure(s, page, plots.cost_figure(t), "cost", "cost per stage")
    page.table(tables.accuracy_per_gpu_hour(s.runs, s.gensets, s.styles, s.filters[0]))


def forecast(s: Study, page: Page) -> None:
    """How much to generate (`synthtl forecast`, ours), or the line that says why not; none without a volume grid."""
    from synthtl.forecast import ForecastConfig, forecast_records
    from synthtl.forecast.show import answers_table, forecast_figure, predictions_table
    from synthtl.forecast.study import volume_of

    if not any(volume_of(r) for r in s.runs):
        return
    page.section("Forecast: how much to generate (ours)", "forecast")
    if any(not r.config.get("model", {}).get("pretrained", True) for r in s.runs):
        page.text("This study's classifiers have random weights: the forecast's numbers prove the plumbing only.",
                  "banner")
    try:
        records = forecast_records(s.folder, ForecastConfig(), s.runs)
    except SynthTLError as e:
        page.text(f"No forecast: {e}", "banner")
        return
    page.table(predictions_table(records))
    page.table(answers_table(records))
    for r in records:
        page.figure(forecast_figure(r, s.figs / "forecast"), f"{r['label']}: measured, fitted law and 95% band")


def image_grids(s: Study, page: Page) -> None:
    """Per dataset: real train images above one row per generated set (single template, DSI, ...)."""
    if not s.gensets:
        return
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
        for p in contact_sheets(labelled, s.figs / "grids" / ds, per_row=6, real=splits[0] if splits else None,
                                classes=names[: s.cfg.grid_classes]):
            page.figure(p, f"{ds}: {p.stem}")


def filters(s: Study, page: Page) -> None:
    found, problems = s.filters
    if not found and not problems:
        return
    page.section("Synthetic-image filters (ours)", "filters")
    page.text("Beyond the paper: images of a generated set scored by zero-shot CLIP or by a classifier fine-tuned on "
              "the real train split (`synthtl filter`), keeping the best per class or those above a threshold.")
    for p in problems:
        page.text(f"not shown: {p}", "banner")
    if found:
        page.table(keep_table(found))
    for f in found:
        stem = f"filters/{f.set_id}_{f.name}"
        _figure(s, page, plots.filter_scores_figure(f), f"{stem}_scores",
                f"{f.label}: scores of kept and dropped images (top_k and fraction rank within each class)")
        page.figure(dropped_sheet(f, s.figs / f"{stem}_dropped.png", max_classes=s.cfg.grid_classes),
                    f"{f.label}: dropped images")


def every_run(s: Study, page: Page) -> None:
    page.section("Every run", "runs", tables.runs_table(s.runs))
    if s.duplicates:
        page.section("Duplicate run folders", "duplicates", tables.duplicates_table(s.duplicates))


SECTIONS = (header, strategies, convergence, sweeps, leep, quality, published, cost, forecast, image_grids, filters,
            every_run)


def build_report(study_dir: str | Path, cfg: ReportConfig | None = None) -> dict[str, Path]:
    """Writes <study>/report/{index.html, report.md, runs.csv, tables/, figures/}; returns the main paths."""
    folder = Path(study_dir)
    study = read_study(folder, cfg or study_report_config(folder))
    page = Page(f"synthtl report: {study.meta.get('name', folder.name)}")
    for section in SECTIONS:  # called from this frame: `header` warns at build_report's caller
        section(study, page)
    out = folder / "report"
    for t in page.tables:
        for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
            write_text(out / "tables" / f"{t.key}.{ext}", render(t))
    write_text(out / "runs.csv", to_csv(next(t for t in page.tables if t.key == "runs")))
    write_text(out / "report.md", f"# {page.title}\n\n" + "\n".join(to_markdown(t) for t in page.tables))
    write_text(out / "index.html", page.render())
    return {"html": out / "index.html", "markdown": out / "report.md", "tables": out / "tables", "figures": study.figs}
