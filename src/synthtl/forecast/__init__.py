"""`synthtl forecast STUDY`: how much to generate, predicted from a finished study (ours; docs/method.md §10).

Per dataset x model x strategy (and shots, prompt style, guidance and filter where the study has several), test top-1
against synthetic images per class is fitted with a saturating power law, with a 95% band from a bootstrap over seeds;
predictions at the asked volumes come with the hours to get there (the study's own measured cost per generated and
per training image), and two answers: the smallest volume within `plateau_tol` of the fitted plateau, and the volume
with the most gain per hour. Where the data cannot carry a forecast, one line says why and which volume to run next.

    records = forecast_records("studies/pilot", ForecastConfig(at=[2000, 3000]))   # plain dicts, JSON-able
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from synthtl.config import ForecastConfig
from synthtl.errors import DataError
from synthtl.files import write_json
from synthtl.forecast.curve import forecast_curve
from synthtl.forecast.show import console_text, forecast_figure
from synthtl.forecast.study import measured_cost, read_settings
from synthtl.reporting.collect import Run, collect_runs

__all__ = ["ForecastConfig", "console_text", "forecast_records", "run_forecast"]


def forecast_records(study_folder: str | Path, cfg: ForecastConfig, runs: list[Run] | None = None) -> list[dict]:
    """One JSON-able record per setting of a finished study (`curve.forecast_curve`'s keys, plus "label", "setting",
    "cost" and "plumbing_only": random-weight classifiers, as in the demo); `runs`: the study's runs, if already read.

    Raises:
        DataError: not a study, no volume grid, a missing cost record, a run of an unknown strategy.
        ConfigError: an asked strategy that is unknown or has no runs in the study.
    """
    if not (folder := Path(study_folder)).is_dir():
        raise DataError(f"{folder} is not a folder: give a study folder (the out_dir of `synthtl study`)")
    records = []
    for s in read_settings(folder, collect_runs(folder) if runs is None else runs, list(cfg.strategies)):
        cost = measured_cost(folder, s)
        rec = forecast_curve(*s.points(), list(cfg.at), cost, cfg.plateau_tol, cfg.bootstrap, cfg.seed)
        random = any(not r.config.get("model", {}).get("pretrained", True) for r in [*s.runs, *s.vanilla])
        records.append({"label": s.label, "setting": s.labels, "cost": asdict(cost), "plumbing_only": random, **rec})
    return records


def run_forecast(study_folder: str | Path, cfg: ForecastConfig) -> dict:
    """Forecasts every setting into <study>/forecast/: forecast.json and one figure per fitted setting; returns
    {"records", "json": path, "figures": [paths]}."""
    out = Path(study_folder) / "forecast"
    records = forecast_records(study_folder, cfg)
    figures = [forecast_figure(r, out) for r in records]
    for r, f in zip(records, figures, strict=True):
        r["figure"] = f.name if f else None
    write_json(out / "forecast.json", {"study": str(study_folder), "config": asdict(cfg), "records": records})
    return {"records": records, "json": out / "forecast.json", "figures": [f for f in figures if f]}
