"""The report's filter section (ours, beyond the paper): for every finished filter under a study's gen/*/filters/*,
keep rates per class (table), score histograms of kept and dropped images (figure) and the lowest-scored dropped
images of each class (contact sheet). Read from the filters' files only (`synthtl.filtering.store`)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from synthtl.data.images import load_rgb  # noqa: E402
from synthtl.errors import BadImageError, DataError, SynthTLError  # noqa: E402
from synthtl.files import CorruptFileError, write_bytes  # noqa: E402
from synthtl.filtering.store import decisions, find_filters, read_filter  # noqa: E402
from synthtl.reporting.collect import GenSet  # noqa: E402
from synthtl.reporting.plots import _save  # noqa: E402
from synthtl.reporting.tables import Table  # noqa: E402

THUMB = 96
LABEL_W = 150


@dataclass
class FilterRun:
    set_id: str
    set_folder: Path
    name: str
    summary: dict  # filter.json
    rows: list[dict]  # decisions.jsonl
    stale: bool  # the set changed after the filter ran (its decisions no longer cover the set exactly)
    set_label: str = ""  # what the set is: "dataset, prompt style, guidance" (its folder id when unknown)

    @property
    def label(self) -> str:
        return f"{self.set_label or self.set_id}, filter {self.name}"


def collect_filters(gensets: list[GenSet]) -> tuple[list[FilterRun], list[str]]:
    """Every finished filter of the study's generated sets, and a note for each one that cannot be read."""
    found, problems = [], []
    for g in gensets:
        for name in find_filters(g.folder):
            try:
                stale = False
                try:
                    read_filter(g.folder, name)
                except DataError:
                    stale = True  # shown, marked; a damaged decisions file fails again just below
                summary = read_filter(g.folder, name, check_current=False)
                rows = decisions(g.folder, name, check_current=False)
            except (DataError, CorruptFileError, ValueError, KeyError) as e:  # a damaged or foreign filter folder
                problems.append(f"{g.id}/{name}: {e if isinstance(e, SynthTLError) else f'unreadable ({e!r})'}")
                continue
            lab = g.labels
            what = ", ".join(str(x) for x in (lab.get("dataset"), lab.get("prompt")) if x)
            what += f", guidance {lab['guidance']:g}" if isinstance(lab.get("guidance"), int | float) else ""
            found.append(FilterRun(g.id, g.folder, name, summary, rows, stale, what))
    return found, problems


def keep_table(filters: list[FilterRun]) -> Table:
    """Per filter and class: images scored and kept, the keep rate, and how often the scorer's top-1 is the class."""
    rows, raw = [], []
    for f in filters:
        s = f.summary
        rule = f"{s['keep']['rule']}={s['keep']['value']}"
        lines = sorted(s["counts"].items()) + [("all classes", {
            k: sum(c[k] for c in s["counts"].values()) for k in ("scored", "kept", "top1")})]
        for cls, c in lines:
            rate = 100.0 * c["kept"] / c["scored"] if c["scored"] else 0.0
            top1 = 100.0 * c["top1"] / c["scored"] if c["scored"] else 0.0
            rows.append([f.label + (" (stale)" if f.stale else ""), s["method"], rule, cls, str(c["scored"]),
                         str(c["kept"]), f"{rate:.1f}", f"{top1:.1f}"])
            raw.append({"set": f.set_id, "filter": f.name, "method": s["method"], "score": s["score"],
                        "rule": s["keep"]["rule"], "value": s["keep"]["value"], "class": cls, "scored": c["scored"],
                        "kept": c["kept"], "keep_rate": rate, "top1_rate": top1, "identity": s["identity"],
                        "stale": f.stale})
    note = ("Ours, beyond the paper (as in He et al. ICLR'23, DISEF, ALIA, SaSPA). top-1 = images the scoring model "
            "puts in their own class.")
    if any(f.stale for f in filters):
        note += " (stale): the set changed after the filter ran; re-run `synthtl filter` (or the study) to update it."
    return Table("filter_keep", "Synthetic-image filters: keep rate per class",
                 ["set, filter", "method", "rule", "class", "scored", "kept", "kept %", "top-1 %"], rows, raw, note)


def histogram(f: FilterRun, path: Path) -> Path | None:
    """Scores of the kept and the dropped images of one filter (all classes together)."""
    kept = [r["score"] for r in f.rows if r["kept"]]
    dropped = [r["score"] for r in f.rows if not r["kept"]]
    if not f.rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lo, hi = min(kept + dropped), max(kept + dropped)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    ax.hist([kept, dropped], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"])
    ax.set_xlabel("own-class probability" if f.summary["score"] == "prob" else "own-class logit")
    ax.set_ylabel("images")
    ax.set_title(f"{f.label}: {f.summary['method']} scores", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _thumb(path: Path) -> Image.Image:
    try:
        return ImageOps.fit(load_rgb(path), (THUMB, THUMB), Image.Resampling.BICUBIC)
    except (BadImageError, OSError):  # a deleted or damaged file: a magenta square, the sheet still builds
        return Image.new("RGB", (THUMB, THUMB), (255, 0, 255))


def dropped_sheet(f: FilterRun, path: Path, per_row: int = 8, max_classes: int = 6) -> Path | None:
    """Per class (up to `max_classes`), the dropped images with the lowest scores, each captioned with its score."""
    by_class: dict[str, list[dict]] = {}
    for r in f.rows:
        if not r["kept"]:
            by_class.setdefault(r["class_name"], []).append(r)
    if not by_class:
        return None
    names = sorted(by_class, key=lambda n: min(r["class_index"] for r in by_class[n]))[:max_classes]
    row_h = THUMB + 14
    sheet = Image.new("RGB", (LABEL_W + per_row * THUMB, 20 + len(names) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{f.label}: dropped images, lowest score first", fill="black")
    for i, name in enumerate(names):
        y = 20 + i * row_h
        rows = sorted(by_class[name], key=lambda r: (r["score"], r["index"]))[:per_row]
        draw.text((4, y + THUMB // 2), f"{name[:22]} ({len(by_class[name])})", fill="black")
        for j, r in enumerate(rows):
            sheet.paste(_thumb(f.set_folder / r["image"]), (LABEL_W + j * THUMB, y))
            draw.text((LABEL_W + j * THUMB + 2, y + THUMB), f"{r['score']:.3g}", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
    return path
