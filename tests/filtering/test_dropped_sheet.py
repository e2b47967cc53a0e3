"""The report's dropped-images sheet of a filter shows exactly the dropped images: per class, those with kept=false,
lowest score first. Tested here against `synthtl.reporting.filters.dropped_sheet` (not edited by the filter work)."""

from pathlib import Path

from PIL import Image

from synthtl.config import FilterConfig, load_config
from synthtl.filtering.run import run_filter
from synthtl.reporting import filters as report_filters


def _colour(k: int) -> tuple[int, int, int]:
    return (30 + 13 * k, 250 - 11 * k, (70 * k) % 256)  # distinct for k < 16, never white


def _cells(sheet: Path, n_rows: int, per_row: int) -> list[list[tuple[int, int, int] | None]]:
    """The centre colour of every thumbnail cell of the sheet, row by row (None for an empty, white cell)."""
    t, row_h = report_filters.THUMB, report_filters.THUMB + 14
    with Image.open(sheet) as im:
        im = im.convert("RGB")
        out = []
        for i in range(n_rows):
            row = [im.getpixel((report_filters.LABEL_W + j * t + t // 2, 20 + i * row_h + t // 2))
                   for j in range(per_row)]
            out.append([None if c == (255, 255, 255) else c for c in row])
    return out


def test_dropped_sheet_shows_exactly_the_dropped_images_lowest_score_first(tiny_set, gen, tmp_path, monkeypatch):
    run_filter(load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={tiny_set['clip']}", "keep.top_k=2",
                                                "progress=false", "device=cpu", "batch_size=8"]))
    rows = report_filters.collect_filters([report_filters.GenSet("setA", gen, {}, {}, 0, 0.0, 0.0, 0)])[0][0].rows
    colour = {gen / r["image"]: _colour(k) for k, r in enumerate(rows)}
    assert len(set(colour.values())) == len(rows)
    # every thumbnail is a flat square of its image's own colour, so the sheet's cells say which image they show
    monkeypatch.setattr(report_filters, "_thumb", lambda p: Image.new("RGB", (report_filters.THUMB,) * 2, colour[p]))
    f = report_filters.FilterRun("setA", gen, "clip", {}, rows, {})
    classes = sorted({r["class_index"] for r in rows})
    for per_row in (8, 2):  # all dropped images fit (3 per class); then only the 2 lowest-scored of each class
        sheet = report_filters.dropped_sheet(f, tmp_path / f"sheet{per_row}.png", per_row=per_row)
        shown = _cells(sheet, len(classes), per_row)
        for c, cells in zip(classes, shown, strict=True):
            dropped = sorted((r for r in rows if r["class_index"] == c and not r["kept"]),
                             key=lambda r: (r["score"], r["index"]))
            assert len(dropped) == 5 - 2
            want = [colour[gen / r["image"]] for r in dropped[:per_row]]
            assert [x for x in cells if x is not None] == want, (c, per_row)
            assert cells[len(want):] == [None] * (per_row - len(want))  # nothing after them
        kept_colours = {colour[gen / r["image"]] for r in rows if r["kept"]}
        assert not kept_colours & {x for cells in shown for x in cells}  # no kept image is shown
