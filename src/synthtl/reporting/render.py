"""A table is records of raw values and a column spec; Markdown, LaTeX and HTML render the spec's cells, the CSV writes
the records."""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Col:
    """A column: its header, the record key (or keys) it shows and the formatter of their values."""

    header: str
    key: Hashable  # a tuple: several keys, their values passed to fmt in order
    fmt: Callable[..., str] = str

    def cell(self, record: dict) -> str:
        keys = self.key if isinstance(self.key, tuple) else (self.key,)
        return self.fmt(*(record.get(k) for k in keys))


@dataclass
class Table:
    key: str  # file stem
    title: str
    cols: list[Col]
    # One record of raw values per row. Keys starting with "_" are shown but never written to the CSV, and a record
    # with "_shown_only" (e.g. a set that could not be measured) is not a line of the CSV.
    raw: list[dict]
    note: str = ""
    shown: list[dict] | None = None  # one record per row when the rows are not the records (a pivot, groups of them)

    @property
    def columns(self) -> list[str]:
        return [c.header for c in self.cols]

    @property
    def rows(self) -> list[list[str]]:
        return [[c.cell(r) for c in self.cols] for r in (self.raw if self.shown is None else self.shown)]


def plain(*keys: str) -> list[Col]:
    """Columns showing record keys as they are, each under its own name."""
    return [Col(k, k) for k in keys]


def dash(fmt: str = "{}"):
    """A formatter: "–" for a missing value (None), else the value formatted by `fmt`."""
    return lambda v: "–" if v is None else fmt.format(v)


def pivot(records: list[dict], row_keys: tuple[str, ...], col_key: str) -> list[dict]:
    """Long records -> one record per distinct `row_keys`, holding each record under its value of `col_key`."""
    out: dict[tuple, dict] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in row_keys), {k: r[k] for k in row_keys})[r[col_key]] = r
    return list(out.values())


def to_markdown(t: Table) -> str:
    out = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.cols)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
    if t.note:
        out += ["", f"*{t.note}*"]
    return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
    """The records without their shown-only keys (the rendered rows when there are none)."""
    records = [{k: v for k, v in r.items() if not k.startswith("_")} for r in t.raw if not r.get("_shown_only")]
    records = records or [dict(zip(t.columns, row, strict=True)) for row in t.rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\to$"), ("–", "--"), ("Δ", r"$\Delta$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * (len(t.cols) - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(t.title)}. {_tex(t.note)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return (f"<h3>{html.escape(t.title)}</h3><table class='results' data-table='{t.key}'><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>{note}")
