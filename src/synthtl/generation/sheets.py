"""Contact sheets: per class, a row of real images above rows of synthetic images from one or more sets."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from synthtl.data.genset import class_folders, read_state
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.errors import BadImageError
from synthtl.files import atomic_open

THUMB = 128
LABEL_W = 150
FONT_PX = 18  # row labels readable at the sheet's size (PIL's default bitmap font is 11 px)


def _thumb(path: Path) -> Image.Image:
    try:
        return ImageOps.fit(load_rgb(path), (THUMB, THUMB), Image.Resampling.BICUBIC)
    except BadImageError:
        return Image.new("RGB", (THUMB, THUMB), (255, 0, 255))


def contact_sheets(sets: list[tuple[str, str | os.PathLike]], out: str | os.PathLike, per_row: int = 8,
                   real: ImageList | None = None, classes: list[str] | None = None) -> list[Path]:
    """One PNG per class in `out`: a labelled row of `real` images (if given; matched by readable class name), then a
    row per (label, generated-set folder) of `sets`, e.g. [("single", "gen/a"), ("DSI", "gen/b")]; `per_row` images
    each, for `classes` (default: every class of the first set)."""
    by_set = []
    for label, folder in sets:
        rows: dict[str, list[Path]] = {}
        state = read_state(folder)
        done = np.flatnonzero(state.done)
        of_class = state.rows.cls[done]
        for c in np.unique(of_class).tolist():  # the first `per_row` finished images of each class, nothing more
            for p in done[of_class == c][:per_row].tolist():
                r = state.completed_row(p)
                rows.setdefault(r["class_name"], []).append(Path(folder) / r["path"])
        by_set.append((label, rows))
    names = classes or list(by_set[0][1]) if by_set else list(classes or [])
    real_by_name: dict[str, list[Path]] = {}
    for i, y in enumerate(real.labels if real is not None else []):
        real_by_name.setdefault(real.names[y], []).append(real.path(i))
    written = []
    for name, file in zip(names, class_folders(names), strict=True):  # unique even where "Cat" and "cat" clash
        lines = ([("real", real_by_name.get(name, []))] if real is not None else [])
        lines += [(label, rows.get(name, [])) for label, rows in by_set]
        sheet = Image.new("RGB", (LABEL_W + per_row * THUMB, len(lines) * THUMB + 24), "white")
        draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=FONT_PX)
        draw.text((4, 2), name, fill="black", font=font)
        for row_i, (label, paths) in enumerate(lines):
            y = 24 + row_i * THUMB
            draw.multiline_text((6, y + 8), "\n".join(textwrap.wrap(label, 13)[:5]), fill="black", font=font)
            for j, p in enumerate(paths[:per_row]):
                sheet.paste(_thumb(p), (LABEL_W + j * THUMB, y))
        written.append(Path(out) / f"{file}.png")
        with atomic_open(written[-1], "wb") as f:
            sheet.save(f, format="PNG")
    return written
