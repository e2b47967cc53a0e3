"""Export a generated set as a Hugging Face `imagefolder` dataset (class folders + metadata.jsonl + card)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from synthtl.data.genset import completed_rows, completion, read_state
from synthtl.errors import ConfigError, DataError
from synthtl.files import atomic_open, write_text

META_KEYS = ("class_name", "class_index", "prompt", "negative_prompt", "seed", "redraws", "model", "revision",
             "scheduler", "steps", "guidance", "height", "width", "dtype", "style_hash", "truncated")
FEATURE_TYPES = {"class_index": "int64", "seed": "int64", "redraws": "int64", "steps": "int64", "height": "int64",
                 "width": "int64", "guidance": "float64", "truncated": "bool"}  # every other metadata key is a string


def export_imagefolder(folder: str | os.PathLike, out: str | os.PathLike, link: bool = True,
                       allow_partial: bool = False) -> dict:
    """Writes `out/train/<class folder>/<image>`, `out/train/metadata.jsonl` and `out/README.md`.

    `datasets.load_dataset(out)` reads `label` as a `ClassLabel` with the class names (declared in the card's YAML,
    else a metadata file makes it a bare int) and one column per generator setting. Images are hard-linked (`link`)
    where possible, else copied; `out` is new or an earlier export of the set. `allow_partial` exports an unfinished
    set's finished images (the card says so). Returns {"images", "done", "total", "partial"}."""
    folder, out = Path(folder), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is an existing file; give a folder for the exported dataset")
    set_state = read_state(folder)
    state = completion(set_state)
    partial = not state["complete"]
    if partial and not allow_partial:
        raise DataError(f"generated set {folder} is unfinished: {state['done']} of {state['total']} planned images are "
                        "done; resume `synthtl generate` to finish it, or pass --allow-partial to export the finished "
                        "images (the dataset card records it)")
    if not set_state.done.any():
        raise DataError(f"{folder} has no finished images to export")
    split, n = out / "train", 0
    with atomic_open(split / "metadata.jsonl", "w") as meta:  # streamed: a million rows never sit in memory
        for r in completed_rows(folder, set_state):
            rel = Path(r["path"]).relative_to("images")
            if not (split / rel).exists():
                (split / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    if not link:
                        raise OSError
                    os.link(folder / r["path"], split / rel)
                except OSError:
                    shutil.copy2(folder / r["path"], split / rel)
            meta.write(json.dumps({"file_name": rel.as_posix(), "label": r["class_index"],
                                   **{k: r.get(k, False if k == "truncated" else None) for k in META_KEYS}}) + "\n")
            n += 1
    names = [k["name"] for k in set_state.rows.classes]
    write_text(out / "README.md", _card(names, set_state.rows.settings, n, state if partial else None))
    return {"images": n, "done": state["done"], "total": state["total"], "partial": partial}


def _card(names: list[str], plan: dict, n: int, partial: dict | None) -> str:
    """The dataset card: YAML that types `label` as a ClassLabel, then the generator settings."""
    features = [{"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(names)}}}}]
    features += [{"name": k, "dtype": FEATURE_TYPES.get(k, "string")} for k in META_KEYS]
    header = {"task_categories": ["image-classification"], "tags": ["synthetic", "stable-diffusion", "synthtl"],
              "configs": [{"config_name": "default", "data_dir": "train", "features": features}]}
    card = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
            f"# Synthetic images ({n} images, {len(names)} classes)", ""]
    if partial:
        card += [f"**Unfinished set**: exported with --allow-partial when {partial['done']} of {partial['total']} "
                 "planned images were done.", ""]
    card += ["Generated with synthtl; every image's prompt, seed and generator settings are in `train/metadata.jsonl`.",
             "", "| setting | value |", "|---|---|"]
    card += [f"| {k} | {v} |" for k, v in plan.items() if k not in ("classes", "templates")]
    return "\n".join(card) + "\n"
