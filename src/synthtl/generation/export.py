"""Export a generated set as a Hugging Face `imagefolder` dataset (class folders + metadata.jsonl)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synthtl.data.synthetic import completed_rows
from synthtl.errors import DataError
from synthtl.files import read_json, write_jsonl, write_text

META_KEYS = ("class_name", "class_index", "prompt", "negative_prompt", "seed", "redraws", "model", "revision",
             "scheduler", "steps", "guidance", "height", "width", "dtype", "style_hash")


def export_imagefolder(folder: str | os.PathLike, out: str | os.PathLike, link: bool = True) -> int:
    """Writes `out/train/<class folder>/<image>` and `out/train/metadata.jsonl`; returns the image count.

    `datasets.load_dataset("imagefolder", data_dir=out)` reads it with an integer `label` (the class index; names in
    `class_name`) and one column per generator setting. (With a metadata file, `datasets` does not infer labels from
    the folders, so the label is written into the metadata.) Files are hard-linked when possible (`link`), else copied.
    """
    folder, out = Path(folder), Path(out)
    rows = completed_rows(folder)
    if not rows:
        raise DataError(f"{folder} has no finished images to export")
    split = out / "train"
    meta = []
    for r in rows:
        rel = Path(r["path"]).relative_to("images")
        dst = split / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                if not link:
                    raise OSError
                os.link(folder / r["path"], dst)
            except OSError:
                shutil.copy2(folder / r["path"], dst)
        meta.append({"file_name": rel.as_posix(), "label": r["class_index"], **{k: r.get(k) for k in META_KEYS}})
    write_jsonl(split / "metadata.jsonl", meta)
    plan = read_json(folder / "plan.json")["identity"] if (folder / "plan.json").is_file() else {}
    card = ["---", "task_categories:", "- image-classification", "tags:", "- synthetic", "- stable-diffusion",
            "- synthtl", "---", "", f"# Synthetic images ({len(meta)} images, {len({m['class_name'] for m in meta})} "
            "classes)", "", "Generated with synthtl; every image's prompt, seed and generator settings are in "
            "`train/metadata.jsonl`.", "", "| setting | value |", "|---|---|"]
    card += [f"| {k} | {v} |" for k, v in plan.items() if k not in ("classes", "templates")]
    write_text(out / "README.md", "\n".join(card) + "\n")
    return len(meta)
