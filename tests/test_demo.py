"""`synthtl demo` end to end, reduced to keep CI short: one seed instead of two, and the DSI prompts only (the style,
generation and every strategy still run; the single-template path is covered by the study tests).
benchmarks/demo_time.py times the default demo."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_demo_end_to_end(tmp_path, capsys):
    assert run_cli("demo", "--out", str(tmp_path / "demo"), "grid.seeds=[0]", "grid.prompts=[dsi]") == 0
    out = capsys.readouterr().out
    assert "index.html" in out and "only prove" in out
    report = tmp_path / "demo" / "report"
    html = (report / "index.html").read_text()
    for strategy in ("vanilla", "mixed", "bridged++", "vanilla_matched", "synthetic_only", "from_scratch"):
        assert strategy in html
    results = list((tmp_path / "demo" / "runs").glob("*/result.json"))
    assert len(results) == 3 + 6  # 3 real-only strategies + 6 synthetic ones with the DSI set
    assert all(json.loads(r.read_text())["test"]["top1"] >= 0 for r in results)
    assert (tmp_path / "demo" / "styles").is_dir() and len(list((tmp_path / "demo" / "gen").iterdir())) == 1
    assert (report / "tables" / "quality.csv").is_file() and (report / "tables" / "leakage.csv").is_file()
    forecast = html.split("<h2 id='forecast'>", 1)[1].split("<h2", 1)[0]
    assert "numbers prove the plumbing only" in forecast  # random-weight classifiers
    assert "next pilot volume" in forecast  # vanilla + one volume: too few to fit, and what to run next
