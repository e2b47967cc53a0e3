"""The report's filter section: keep rates per class, score histograms and dropped examples, read from the files of a
filter made by `synthtl filter` on a tiny generated set (tiny random CLIP, offline)."""

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from synthtl.config import FilterConfig, ReportConfig, load_config
from synthtl.filtering.run import run_filter
from synthtl.reporting.collect import collect_gensets
from synthtl.reporting.filters import collect_filters, keep_table
from synthtl.reporting.report import build_report
from tests.filtering.tiny import generate, real_data, tiny_clip
from tests.reporting.test_report import canned_run, labels


@pytest.fixture(scope="module")
def filtered_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("filter_report")
    study = root / "study"
    gen = generate(real_data(root / "real"), study / "gen" / "setA", per_class=5)
    clip = tiny_clip(root / "clip")
    run_filter(load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={clip}", "keep.top_k=2",
                                                "progress=false", "device=cpu"]))
    canned_run(study, "folder-vanilla-s0", labels("folder", "vanilla", 0), 50.0)
    return study


def test_report_shows_keep_rates_histogram_and_dropped_images(filtered_study):
    paths = build_report(filtered_study, ReportConfig(quality=False, bootstrap=100))
    out = filtered_study / "report"
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "filter_keep.csv").read_text())))
    per_class = [r for r in rows if r["class"] != "all classes"]
    assert sorted(r["class"] for r in per_class) == ["blue jay", "green frog", "red fox"]
    assert all((r["scored"], r["kept"], float(r["keep_rate"])) == ("5", "2", 40.0) for r in per_class)
    total = next(r for r in rows if r["class"] == "all classes")
    assert (total["scored"], total["kept"], total["filter"], total["set"]) == ("15", "6", "clip", "setA")
    with Image.open(out / "figures" / "filters" / "setA_clip_scores.png") as im:
        assert im.width > 100
    with Image.open(out / "figures" / "filters" / "setA_clip_dropped.png") as im:
        assert im.height == 20 + 3 * (96 + 14)  # one row of dropped images per class
    html = paths["html"].read_text()
    label = keep_table(collect_filters(collect_gensets(filtered_study))[0]).rows[0][0]
    assert label.endswith(", filter clip") and "guidance 2" in label  # what the set is, not its folder id
    assert "Synthetic-image filters (ours)" in html and label in html and "stale" not in html.lower()


def test_an_edited_kept_list_is_named_not_trusted(filtered_study, tmp_path):
    import shutil

    study = Path(shutil.copytree(filtered_study, tmp_path / "study"))
    kept = study / "gen" / "setA" / "filters" / "clip" / "kept" / "5.json"
    data = json.loads(kept.read_text())
    kept.write_text(json.dumps({**data, "paths": data["paths"][1:]}))  # edited by hand: its digest no longer fits
    found, problems = collect_filters(collect_gensets(study))
    assert not found and len(problems) == 1 and "is not the kept list filter 'clip' wrote" in problems[0]


def test_a_truncated_kept_list_is_named_and_the_report_still_builds(filtered_study, tmp_path):
    import shutil

    study = Path(shutil.copytree(filtered_study, tmp_path / "study"))
    summary = study / "gen" / "setA" / "filters" / "clip" / "kept" / "5.json"
    summary.write_text(summary.read_text()[:40])  # a disk that filled mid-write, by hand
    found, problems = collect_filters(collect_gensets(study))
    assert not found and len(problems) == 1 and problems[0].startswith("setA/clip: ")
    build_report(study, ReportConfig(quality=False, bootstrap=100))
    assert "not shown: setA/clip" in (study / "report" / "index.html").read_text()
