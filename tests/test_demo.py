"""`synthtl demo` end to end (one seed instead of two to keep CI short; benchmarks/demo_time.py times the default)."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_demo_end_to_end(tmp_path, capsys):
    assert run_cli("demo", "--out", str(tmp_path / "demo"), "grid.seeds=[0]") == 0
    out = capsys.readouterr().out
    assert "index.html" in out and "only prove" in out
    report = tmp_path / "demo" / "report"
    html = (report / "index.html").read_text()
    for strategy in ("vanilla", "mixed", "bridged++", "vanilla_matched", "synthetic_only", "from_scratch"):
        assert strategy in html
    results = list((tmp_path / "demo" / "runs").glob("*/result.json"))
    assert len(results) == 3 + 6 * 2  # 3 real-only strategies + 6 synthetic ones x (single, DSI)
    assert all(json.loads(r.read_text())["test"]["top1"] >= 0 for r in results)
    assert (tmp_path / "demo" / "styles").is_dir() and len(list((tmp_path / "demo" / "gen").iterdir())) == 2
    assert (report / "tables" / "quality.csv").is_file() and (report / "tables" / "leakage.csv").is_file()
