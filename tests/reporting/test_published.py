"""Peers' published numbers: the shipped file is well-formed and sourced; the report shows them beside ours."""

import csv
import io
import re
from dataclasses import replace

import pytest
import yaml

from synthtl.errors import ConfigError
from synthtl.reporting.published import FAMILIES, builtin_file, load_published
from synthtl.reporting.report import build_report
from tests.conftest import run_cli
from tests.reporting.test_report import RANDOM_FEATURES, canned_study  # noqa: F401  (a fixture)

ENTRY = {"peer": "PeerA", "title": "A peer paper", "venue": "Conf 2024", "source": "https://example.org/paper",
         "table": "Table 2", "dataset": "aircraft", "method": "PeerA-LoRA", "family": "lora", "value": 70.5,
         "baseline": 65.0, "protocol": "ResNet-50 (ImageNet), fully fine-tuned, 448 px", "real": "full"}


def number_in(v: float, text: str) -> bool:
    forms = {f"{v:.1f}", f"{v:.2f}"}
    return any(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", text) for f in forms)


def test_number_in_matches_whole_numbers_only():
    assert number_in(8.1, "a 8.1 b") and number_in(90.8, "x 90.80 y") and not number_in(8.1, "88.1")
    assert not number_in(8.1, "8.15")


def write_entries(path, entries) -> str:
    path.write_text(yaml.safe_dump({"entries": entries}))
    return str(path)


def test_shipped_numbers_are_sourced_and_valid():
    entries = load_published()
    assert entries, "the shipped file holds peers' numbers"
    for e in entries:
        assert e.source.startswith("https://") and e.table and e.protocol and e.family in FAMILIES
        assert e.excerpt, f"{e.peer} {e.dataset}: the excerpt the number was read from is recorded"
        # every number appears, as a whole number, in the words it was read from (a transcription typo fails here)
        assert number_in(e.value, e.excerpt), e
        if e.baseline is not None:
            assert number_in(e.baseline, e.excerpt), e
    assert builtin_file().is_file()


def test_shipped_saspa_rows_align_with_their_table():
    """SaSPA's table as published (five columns); each entry's value and baseline come from its dataset's column,
    and the baseline is the traditional augmentation the generative rows were trained on top of."""
    columns = {"aircraft": 0, "cars": 2, "cub200": 3, "dtd": 4}
    for e in [e for e in load_published() if e.peer == "SaSPA"]:
        table = {}
        for part in e.excerpt.split("; ")[1:]:
            *name, a, b, c, d, f = part.split(" ")
            table[" ".join(name)] = [float(x) for x in (a, b, c, d, f)]
        method_row = next(v for k, v in table.items() if k not in ("No Aug", "CAL-Aug", "CAL-Aug + CutMix"))
        assert e.value == method_row[columns[e.dataset]], e
        base = e.baseline_method.split(" (")[0]
        assert e.baseline == table[base][columns[e.dataset]] and e.baseline != table["No Aug"][columns[e.dataset]]


def test_report_shows_peers_beside_ours(canned_study, tmp_path):  # noqa: F811
    other = {**ENTRY, "dataset": "food101", "peer": "PeerB"}  # a dataset the study does not have: not shown
    few = {**ENTRY, "method": "PeerA few-shot", "real": "16-shot", "baseline": None}
    zero = {**ENTRY, "method": "PeerA zero-shot", "real": "none", "baseline_method": "CLIP zero-shot"}
    f = write_entries(tmp_path / "mine.yaml", [zero, ENTRY, other, few])
    build_report(canned_study, replace(RANDOM_FEATURES, published=False, published_file=f, quality=False))
    rows = list(csv.DictReader(io.StringIO((canned_study / "report" / "tables" / "published.csv").read_text())))
    assert {r["dataset"] for r in rows} == {"aircraft"}  # only datasets with a published number
    peer = next(r for r in rows if r["method"] == "PeerA-LoRA")
    assert float(peer["value"]) == 70.5 and float(peer["baseline"]) == 65.0 and float(peer["delta"]) == 5.5
    assert peer["source"] == "https://example.org/paper" and peer["table"] == "Table 2"
    assert next(r for r in rows if r["method"] == "PeerA few-shot")["delta"] == ""
    ours = {r["method"]: r for r in rows if r["who"] == "ours" and "1000/class" in r["protocol"]}
    # bridged++ 85, 85, 86 vs vanilla 80, 81, 82 paired by seed (tests/reporting/test_report.py)
    assert abs(float(ours["bridged++, single"]["delta"]) - 13 / 3) < 1e-9
    assert abs(float(ours["bridged++, single"]["baseline"]) - 81) < 1e-9
    assert set(ours) == {"mixed, single", "bridged++, single"}
    assert [r["method"] for r in rows if "500/class" in r["protocol"]] == ["bridged++, single"]
    order = [r["who"] if r["who"] == "ours" else r["method"] for r in rows]
    # grouped by the real images the classifier trains on: full split (ours first), 16-shot, none
    assert order == ["ours"] * 3 + ["PeerA-LoRA", "PeerA few-shot", "PeerA zero-shot"]
    assert next(r for r in rows if r["method"] == "PeerA zero-shot")["baseline_method"] == "CLIP zero-shot"
    md = (canned_study / "report" / "tables" / "published.md").read_text()
    assert "PeerA (Conf 2024)" in md and "https://example.org/paper (Table 2)" in md and "+5.50" in md
    assert "Beside peers" in (canned_study / "report" / "index.html").read_text()


def test_no_section_without_numbers_for_the_datasets(canned_study, tmp_path):  # noqa: F811
    f = write_entries(tmp_path / "mine.yaml", [{**ENTRY, "dataset": "food101"}])
    build_report(canned_study, replace(RANDOM_FEATURES, published=False, published_file=f, quality=False))
    assert not (canned_study / "report" / "tables" / "published.csv").exists()


@pytest.mark.parametrize("change, words", [
    ({"source": ""}, "missing ['source']"),
    ({"value": 140}, "value=140 must be a top-1 accuracy"),
    ({"dataset": "imagenet"}, "dataset='imagenet' is not one of"),
    ({"family": "gan"}, "family='gan' is not one of"),
    ({"real": "16 shots"}, "real='16 shots' must be"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"source": "arXiv 2403.19600"}, "must be the address"),
    ({"source": "http://"}, "must be the address"),
    ({"peer": ["a", "b"]}, "peer must be text, not list"),
    ({3: "x", "colour": "red"}, "unknown key(s) [3, 'colour']"),
])
def test_bad_entry_one_line(tmp_path, change, words):
    f = write_entries(tmp_path / "bad.yaml", [ENTRY, {**ENTRY, **change}])
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        load_published(f)
    assert "entry 2" in str(e.value) and "\n" not in str(e.value)


def test_repeated_entry_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="entry 2: repeats entry 1"):
        load_published(write_entries(tmp_path / "dup.yaml", [ENTRY, dict(ENTRY)]))


def test_bad_file_from_the_cli(canned_study, tmp_path, capsys):  # noqa: F811
    (tmp_path / "bad.yaml").write_text("entries: [unclosed")
    assert run_cli("report", str(canned_study), f"published_file={tmp_path / 'bad.yaml'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read it as YAML" in err[0]
    assert run_cli("report", str(canned_study), f"published_file={tmp_path / 'none.yaml'}") == 2
    assert "does not exist" in capsys.readouterr().err
