"""The report's forecast section (`synthtl forecast`'s tables and figures): on fabricated studies (no training) and on
the suite's finished tiny study, whose random-weight classifiers and single volume get the plumbing note and the
refusal with the next volume to run."""

import re

import numpy as np

from synthtl.config import ReportConfig
from synthtl.reporting.render import Page
from synthtl.reporting.report import forecast, read_study
from tests.forecast.fabricate import fabricate_study


def section(root) -> Page:
    page = Page("t")
    forecast(read_study(root, ReportConfig(quality=False, published=False)), page)
    return page


def saturating(v):
    return 84 - 4 * (1 + np.asarray(v, float) / 200) ** -2.0


def test_a_pilot_gets_the_forecast_tables_and_a_figure_per_setting(tmp_path):
    root = fabricate_study(tmp_path / "s", {"bridged++": saturating, "mixed": lambda v: 80 - v / 500})
    page = section(root)
    assert page.toc == [("forecast", "Forecast: how much to generate (ours)")]
    predictions, answers = page.tables
    assert (predictions.key, answers.key) == ("forecast", "forecast_answers")
    rows = {(r[0], r[1]): r for r in predictions.rows}
    assert set(rows) == {(s, v) for s in ("pets resnet18 mixed", "pets resnet18 bridged++") for v in ("2000", "3000",
                                                                                                   "5000")}
    assert re.fullmatch(r"8\d\.\d\d \[8\d\.\d\d, 8\d\.\d\d\]", rows["pets resnet18 bridged++", "2000"][2])
    assert rows["pets resnet18 bridged++", "5000"][-1].startswith("refused: 5000/class is beyond 3x")
    assert "".join(page.parts).count("data:image/png;base64,") == 2
    assert (root / "report" / "figures" / "forecast" / "pets_resnet18_bridged++.png").is_file()
    assert "plumbing" not in "".join(page.parts)


def test_random_weights_and_two_volumes_get_the_note_and_the_refusal(tmp_path):
    root = fabricate_study(tmp_path / "s", {"bridged++": saturating}, volumes=(20,), pretrained=False)
    html = "".join(section(root).parts)
    assert "the forecast&#x27;s numbers prove the plumbing only" in html
    assert ("refused: fewer than 3 volumes (measured: 0/20; vanilla is volume 0 and counts); next pilot volume: "
            "40/class") in html
    assert "data:image/png" not in html  # a refused setting has no fit to draw


def test_no_volume_grid_no_section_and_a_missing_cost_record_is_one_line(tmp_path):
    root = fabricate_study(tmp_path / "s", {"bridged++": saturating})
    (root / "gen" / "gen-pets-single-g2-0123456789ab" / "progress" / "cost-shard-0000-of-0001.jsonl").unlink()
    page = section(root)
    assert page.tables == [] and len(page.parts) == 2 and "No forecast: missing cost record: " in page.parts[1]
    for res in (root / "runs").glob("*bridged*/result.json"):
        res.unlink()
    assert section(root).parts == []
