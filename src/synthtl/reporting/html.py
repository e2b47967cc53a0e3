"""One self-contained HTML page: inline CSS, figures embedded as data URIs, and a load-time self-check that the
browser test reads (every image decoded, every table present)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageOps

from synthtl.reporting.render import Table, to_html

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


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def thumb_uri(path: Path, size: int = 128) -> str:
    """A small PNG of any image file (for the leakage pairs)."""
    from synthtl.data.images import load_rgb

    buf = io.BytesIO()
    ImageOps.fit(load_rgb(path), (size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Page:
    """Sections appended in order, rendered into one HTML string."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def section(self, title: str, anchor: str) -> None:
        self.toc.append((anchor, title))
        self.parts.append(f"<h2 id='{anchor}'>{html.escape(title)}</h2>")

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f"<p class='{cls}'>{html.escape(text)}</p>")

    def table(self, t: Table | None) -> None:
        if t is not None:
            self.parts.append(to_html(t))

    def figure(self, path: Path | None, caption: str = "") -> None:
        if path is not None and Path(path).is_file():
            self.parts.append(f"<figure><img src='{data_uri(path)}' alt='{html.escape(caption)}'>"
                              f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def pairs(self, examples: list[dict]) -> None:
        """Near-duplicate pairs side by side, each thumbnail captioned with its split, class and file."""
        for e in examples:
            thumbs = "".join(f"<figure><img src='{thumb_uri(e[side])}' alt='{html.escape(e[side + '_caption'])}'>"
                             f"<figcaption>{html.escape(e[side + '_caption'])}</figcaption></figure>"
                             for side in ("left", "right"))
            self.parts.append(f"<div class='pair'>{thumbs}<span class='note'>{html.escape(e['caption'])}</span>"
                              "</div>")

    def render(self) -> str:
        nav = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in self.toc)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>"
                + "".join(self.parts) + CHECK + "</body></html>")
