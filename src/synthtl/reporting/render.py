"""A table is records of raw values and a column spec; Markdown, LaTeX and HTML render the spec's cells, the CSV writes
the records. The report's page (`Page`) is one self-contained HTML file: inline CSS, figures embedded as data URIs,
and a load-time self-check that the browser test reads (every image decoded, every table present)."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from synthtl.data.images import load_rgb


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
    # One record of raw values per row; "_" keys are shown, never in the CSV; a "_shown_only" record is no CSV line.
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
    return "\n".join(out + (["", f"*{t.note}*"] if t.note else [])) + "\n"


def to_text(t: Table) -> str:
    """The table for a console: aligned columns under a ruled header."""
    cells = [t.columns, *t.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(t.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


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


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}h3{margin:20px 0 6px}
table.results{border-collapse:collapse;font-size:13px;margin:6px 0}
table.results th,table.results td{border:1px solid #ccc;padding:4px 8px;text-align:right}
table.results th:first-child,table.results td:first-child{text-align:left}
table.results thead{background:#f3f3f3}.note{font-size:12px;color:#666;margin:2px 0 12px}
.banner{background:#fff4ce;border:1px solid #e0c060;padding:10px 14px;border-radius:4px}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
figcaption{font-size:12px;color:#555}.pair{display:inline-block;width:300px;margin:4px 8px 8px 0;vertical-align:top}
.pair figure{margin:0 4px 0 0;width:140px}.pair img{width:128px;height:128px;object-fit:cover}
.pair figcaption{word-break:break-all}.pair .note{display:block}
.meta{color:#666;font-size:13px}nav a{margin-right:12px;font-size:13px}
"""

CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var tables = document.querySelectorAll('table.results').length;
  var empty = Array.prototype.slice.call(document.querySelectorAll('table.results'))
      .filter(function (t) { return t.querySelectorAll('tbody tr').length === 0; }).length;
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, broken: broken, tables: tables,
                                                           empty_tables: empty}));
});
</script>
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def thumb_uri(path: Path, size: int = 128) -> str:
    """A small PNG of any image file (for the leakage pairs)."""
    buf = io.BytesIO()
    ImageOps.fit(load_rgb(path), (size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return data_uri(buf.getvalue())


def _figure(uri: str, caption: str) -> str:
    caption = html.escape(caption)
    return f"<figure><img src='{uri}' alt='{caption}'><figcaption>{caption}</figcaption></figure>"


@dataclass
class Page:
    """Sections appended in order, rendered into one HTML string; `tables`: every table shown, in order."""

    title: str
    parts: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def section(self, title: str, anchor: str, *tables: Table) -> None:
        self.toc.append((anchor, title))
        self.parts.append(f"<h2 id='{anchor}'>{html.escape(title)}</h2>")
        for t in tables:
            self.table(t)

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f"<p class='{cls}'>{html.escape(text)}</p>")

    def table(self, t: Table | None) -> None:
        if t is not None:
            self.tables.append(t)
            self.parts.append(to_html(t))

    def figure(self, path: Path | None, caption: str = "") -> None:
        if path is not None:
            self.parts.append(_figure(data_uri(Path(path).read_bytes()), caption))

    def pairs(self, examples: list[dict]) -> None:
        """Near-duplicate pairs side by side, each thumbnail captioned with its split, class and file."""
        for e in examples:
            thumbs = "".join(_figure(thumb_uri(e[side]), e[side + "_caption"]) for side in ("left", "right"))
            self.parts.append(f"<div class='pair'>{thumbs}<span class='note'>{html.escape(e['caption'])}</span></div>")

    def render(self) -> str:
        nav = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in self.toc)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>"
                + "".join(self.parts) + CHECK + "</body></html>")
