"""Reading synthetic training sets: a generated set (manifest.jsonl + per-shard progress logs) or an image folder.

A generated set's manifest is written before any image; an image counts only once a progress log (or the
consolidated manifest) marks it done, so a reader never sees a planned-but-unwritten or half-written image.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from synthtl.data.datasets import image_folder, readable
from synthtl.data.imagelist import ImageList
from synthtl.errors import DataError
from synthtl.files import read_jsonl

MANIFEST = "manifest.jsonl"
PROGRESS_DIR = "progress"


def safe_folder(name: str, max_len: int = 64) -> str:
    """A folder name safe on every file system for a class name (slashes, '..', unicode, very long).

    ASCII letters, digits, '-', '_' and '.' are kept; anything else becomes '_'. A name that had to change
    gets a short hash of the original appended, so two different names never collide.
    """
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_).strip("._") or "class"
    if safe != name or len(safe) > max_len:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        safe = f"{safe[: max_len - 9]}-{digest}"
    return safe


def read_progress(folder: str | os.PathLike) -> dict[str, dict]:
    """id -> log row of every image a generation shard logged as written (files are written before logging)."""
    done: dict[str, dict] = {}
    progress = Path(folder) / PROGRESS_DIR
    if progress.is_dir():
        for log in sorted(progress.glob("shard-*.jsonl")):
            for r in read_jsonl(log):
                done[r["id"]] = r
    return done


def completed_rows(folder: str | os.PathLike) -> list[dict]:
    """Manifest rows whose image is written and valid, with the seed actually used (after any redraw)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{folder} has no {MANIFEST}; is it a generated set? (`synthtl generate` writes one)")
    rows = read_jsonl(manifest)
    done = read_progress(folder)
    out = []
    for row in rows:
        if (row.get("status") == "done" or row["id"] in done) and (folder / row["path"]).is_file():
            out.append({**row, **done.get(row["id"], {}), "status": "done"})
    return out


def _match_classes(syn_classes: list[tuple[str, str]], real: ImageList, where: str) -> dict[int, int]:
    """Maps each synthetic class (id, name) to a real class index by id, readable name or safe folder name."""
    lookup: dict[str, int] = {}
    for i, (cid, name) in enumerate(zip(real.classes, real.names, strict=True)):
        for key in (cid, name, safe_folder(cid), safe_folder(name), readable(cid)):
            lookup.setdefault(key.lower(), i)
    mapping, unknown = {}, []
    for j, (cid, name) in enumerate(syn_classes):
        hit = next((lookup[k.lower()] for k in (cid, name) if k and k.lower() in lookup), None)
        if hit is None:
            unknown.append(name or cid)
        else:
            mapping[j] = hit
    missing = sorted(set(range(real.num_classes)) - set(mapping.values()))
    if unknown or missing:
        msg = [f"synthetic set {where} does not match the classes of {real.name}:"]
        if unknown:
            msg.append(f"{len(unknown)} synthetic classes are not real classes: {unknown[:10]}")
        if missing:
            msg.append(f"{len(missing)} real classes have no synthetic images: {[real.names[i] for i in missing][:10]}")
        raise DataError(" ".join(msg) + ". Generate the set from the same dataset (synthtl generate data.name=...).")
    return mapping


def load_synthetic(path: str | os.PathLike, real: ImageList, per_class: int = 0) -> ImageList:
    """A synthetic training set labelled in the real dataset's label space.

    Args:
        path: A generated set (folder with manifest.jsonl) or a class-per-folder image folder.
        real: The real training list; synthetic classes must match its classes one to one.
        per_class: Keep the first k images of each class (manifest order); 0 = all.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"synthetic.path={str(path)!r} is not a folder; point it at a generated set "
                        "(`synthtl generate`) or a class-per-folder image folder")
    if (folder / MANIFEST).is_file():
        rows = completed_rows(folder)
        if not rows:
            raise DataError(f"generated set {folder} has no finished images yet; run or resume `synthtl generate`")
        classes: dict[int, tuple[str, str]] = {}
        for r in rows:
            classes.setdefault(r["class_index"], (r.get("class_id", r["class_name"]), r["class_name"]))
        order = sorted(classes)
        mapping = _match_classes([classes[c] for c in order], real, str(folder))
        to_real = {c: mapping[j] for j, c in enumerate(order)}
        rows.sort(key=lambda r: (r["class_index"], r["index"]))
        items, taken = [], {c: 0 for c in order}
        for r in rows:
            if per_class and taken[r["class_index"]] >= per_class:
                continue
            taken[r["class_index"]] += 1
            rel = r.get("train_path") or r["path"]
            items.append((rel, to_real[r["class_index"]]))
    else:
        raw = image_folder(folder, tag=f"synthetic:{folder.name}")
        mapping = _match_classes(list(zip(raw.classes, raw.names, strict=True)), real, str(folder))
        items, taken = [], {}
        for p, y in zip(raw.paths, raw.labels, strict=True):  # sorted by path: "first k" = first k file names
            if per_class and taken.get(y, 0) >= per_class:
                continue
            taken[y] = taken.get(y, 0) + 1
            items.append((p, mapping[y]))
    short = [real.names[c] for c in range(real.num_classes) if per_class and
             sum(1 for _, y in items if y == c) < per_class]
    if short:
        raise DataError(f"synthetic.per_class={per_class} but {len(short)} classes have fewer finished images in "
                        f"{folder} (e.g. {short[:5]}); generate more or lower synthetic.per_class")
    return ImageList(root=folder, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                     classes=real.classes, names=real.names, name=f"synthetic/{folder.name}")
