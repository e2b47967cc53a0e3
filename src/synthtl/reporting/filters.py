"""The report's filters (ours), from their files only (`filtering.store`): each filter's largest-volume kept list as
keep rates per class (a table) and each class's lowest-scored dropped images (a contact sheet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from synthtl.data.images import load_rgb
from synthtl.errors import BadImageError, DataError, SynthTLError
from synthtl.files import CorruptFileError, atomic_open
from synthtl.filtering.store import filter_dir, find_kept, read_cost, read_kept, read_scores
from synthtl.reporting.collect import GenSet
from synthtl.reporting.render import Col, Table

THUMB = 96
LABEL_W = 150


@dataclass
class FilterRun:
    set_id: str
    set_folder: Path
    name: str
    summary: dict  # its kept list of the largest volume (kept/<V>.json)
    rows: list[dict]  # the score rows of the images that list covers, each with "kept"
    cost: dict  # every scoring session (`store.read_cost`)
    set_label: str = ""  # what the set is: "dataset, prompt style, guidance" (its folder id when unknown)

    @property
    def label(self) -> str:
        return f"{self.set_label or self.set_id}, filter {self.name}"


def collect_filters(gensets: list[GenSet]) -> tuple[list[FilterRun], list[str]]:
    """Every filter of the study's sets (its kept list of the largest volume), and why others cannot be read."""
    found, problems = [], []
    for g in gensets:
        for name, file in find_kept(g.folder).items():
            try:
                summary = read_kept(g.folder, name, int(file.stem))
                chosen = set(summary["paths"])
                rows = [{**r, "kept": r["path"] in chosen} for r in read_scores(filter_dir(g.folder, name)).values()
                        if r["index"] < summary["per_class"]]
            except (DataError, CorruptFileError, ValueError, KeyError) as e:  # a damaged or foreign filter folder
                problems.append(f"{g.id}/{name}: {e if isinstance(e, SynthTLError) else f'unreadable ({e!r})'}")
                continue
            what = ", ".join(str(x) for x in (g.labels.get("dataset"), g.labels.get("prompt")) if x)
            what += f", guidance {g.labels['guidance']:g}" if isinstance(g.labels.get("guidance"), int | float) else ""
            found.append(FilterRun(g.id, g.folder, name, summary, rows, read_cost(filter_dir(g.folder, name)), what))
    return found, problems


def keep_table(filters: list[FilterRun]) -> Table:
    """Per filter and class: images scored and kept, the keep rate, and how often the scorer's top-1 is the class."""
    def pct(c: dict, k: str) -> float:
        return 100.0 * c[k] / c["scored"] if c["scored"] else 0.0

    raw = []
    for f in filters:
        s = f.summary
        lines = sorted(s["counts"].items()) + [("all classes", {
            k: sum(c[k] for c in s["counts"].values()) for k in ("scored", "kept", "top1")})]
        raw += [{"set": f.set_id, "filter": f.name, "method": s["method"], "score": s["score"],
                 "rule": s["keep"]["rule"], "value": s["keep"]["value"], "class": cls, "scored": c["scored"],
                 "kept": c["kept"], "keep_rate": pct(c, "kept"), "top1_rate": pct(c, "top1"), "identity": s["filter"],
                 "per_class": s["per_class"], "_label": f.label} for cls, c in lines]
    cols = [Col("set, filter", "_label"), Col("method", "method"), Col("rule", ("rule", "value"), "{}={}".format),
            Col("class", "class"), Col("scored", "scored"), Col("kept", "kept"),
            Col("kept %", "keep_rate", "{:.1f}".format), Col("top-1 %", "top1_rate", "{:.1f}".format)]
    note = ("Ours, beyond the paper (as in He et al. ICLR'23, DISEF, ALIA, SaSPA): each filter's kept list of its "
            "largest volume. top-1 = images the scoring model puts in their own class.")
    return Table("filter_keep", "Synthetic-image filters: keep rate per class", cols, raw, note)


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
        draw.text((4, y + THUMB // 2), f"{name[:22]} ({len(by_class[name])})", fill="black")
        for j, r in enumerate(sorted(by_class[name], key=lambda r: (r["score"], r["index"]))[:per_row]):
            sheet.paste(_thumb(f.set_folder / r["image"]), (LABEL_W + j * THUMB, y))
            draw.text((LABEL_W + j * THUMB + 2, y + THUMB), f"{r['score']:.3g}", fill="black")
    with atomic_open(path, "wb") as out:
        sheet.save(out, format="PNG")
    return path
