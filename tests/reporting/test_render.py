"""Tables are records of raw values rendered through column specs: the cells are derived, the CSV writes the records."""

import csv
import io
import math

from synthtl.reporting.render import Col, Table, dash, pivot, plain, to_csv, to_html, to_latex, to_markdown
from synthtl.reporting.tables import fmt_delta, fmt_mean_std, top1_cell


def table(**kw) -> Table:
    cols = [*plain("name"), Col("top-1", ("mean", "std", "n"), fmt_mean_std), Col("kept %", "rate", dash("{:.1f}")),
            Col("who", "_who")]
    raw = [{"name": "a|b", "mean": 80.0, "std": 1.0, "n": 3, "rate": None, "_who": "ours"},
           {"name": "c_d", "mean": float("nan"), "std": float("nan"), "n": 0, "rate": 12.34, "_who": "50% ± 1"}]
    return Table("t", "Title & co", cols, raw, "a note", **kw)


def test_cells_come_from_the_column_spec():
    t = table()
    assert t.columns == ["name", "top-1", "kept %", "who"]
    assert t.rows == [["a|b", "80.00 ± 1.00", "–", "ours"], ["c_d", "–", "12.3", "50% ± 1"]]


def test_the_csv_writes_the_raw_records_without_shown_only_keys():
    t = table()
    t.raw.append({"name": "unmeasured", "n": 0, "mean": math.nan, "_shown_only": True, "_who": "x"})
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    assert list(rows[0]) == ["name", "mean", "std", "n", "rate"]  # raw keys, in order; no "_" key
    assert [r["name"] for r in rows] == ["a|b", "c_d"]  # a shown-only record is a row, not a CSV line
    assert rows[0]["rate"] == "" and rows[1]["mean"] == "" and rows[0]["mean"] == "80.0"  # None and NaN: empty
    assert len(t.rows) == 3 and t.rows[2] == ["unmeasured", "–", "–", "x"]
    only_shown = Table("u", "U", plain("a"), [{"a": 1, "_shown_only": True}])
    assert to_csv(only_shown).splitlines() == ["a", "1"]  # no record to write: the rendered rows


def test_markdown_latex_and_html_render_the_same_cells():
    t = table()
    md = to_markdown(t)
    assert "| name | top-1 | kept % | who |" in md and "| a\\|b | 80.00 ± 1.00 | – | ours |" in md
    assert md.endswith("*a note*\n")
    tex = to_latex(t)
    assert r"c\_d & -- & 12.3 & 50\% $\pm$ 1 \\" in tex and r"\caption{Title \& co. a note}" in tex
    assert "<td>a|b</td><td>80.00 ± 1.00</td><td>–</td><td>ours</td>" in to_html(t)


def test_a_pivot_shows_long_records_as_a_wide_table():
    raw = [{"dataset": d, "strategy": s, "mean": m, "std": 0.0, "n": 1, "delta_vs_vanilla": dv, "p_value": p}
           for d, s, m, dv, p in (("cars", "vanilla", 80.0, None, None), ("cars", "bridged", 85.0, 5.0, 0.01),
                                  ("dtd", "vanilla", 70.0, None, None), ("dtd", "bridged", 72.0, math.nan, math.nan))]
    shown = pivot(raw, ("dataset",), "strategy")
    assert [r["dataset"] for r in shown] == ["cars", "dtd"] and shown[0]["bridged"] is raw[1]
    t = Table("s", "S", [*plain("dataset"), *[Col(s, s, top1_cell) for s in ("vanilla", "bridged")]], raw,
              shown=shown)
    assert t.rows == [["cars", "80.00", "85.00 [+5.00 (p=0.010)]"], ["dtd", "70.00", "72.00"]]
    assert len(list(csv.DictReader(io.StringIO(to_csv(t))))) == 4  # the CSV stays long


def test_deltas_show_p_only_where_there_is_one():
    assert fmt_delta(None) == fmt_delta(math.nan) == "–"
    assert fmt_delta(1.5, math.nan) == "+1.50" and fmt_delta(-1.5, 0.0123) == "-1.50 (p=0.012)"
