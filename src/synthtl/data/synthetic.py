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
from synthtl.files import iter_jsonl

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
            for r in iter_jsonl(log):  # a torn last line (killed appender, full disk) is not a finished image
                done[r["id"]] = r
    return done


def manifest_rows(folder: str | os.PathLike) -> list[dict]:
    """The planned rows of a generated set; a folder without a manifest is a one-line DataError."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: not a generated set (point at the out_dir of `synthtl generate`)")
    return list(iter_jsonl(manifest))


def is_done(row: dict, done: dict[str, dict], folder: Path) -> bool:
    """The one test of "this image is finished": logged (or consolidated) as done, and its file exists."""
    return (row.get("status") == "done" or row["id"] in done) and (folder / row["path"]).is_file()


def completion(folder: str | os.PathLike, per_class: int = 0) -> dict:
    """How far a generated set is: {"done", "total", "complete", "classes": {name: [done, total]}}.

    Args:
        folder: The generated set.
        per_class: Count only the first k planned images of each class (what a volume study reads); 0 = all.
    """
    folder = Path(folder)
    rows = manifest_rows(folder)
    done = read_progress(folder)
    classes: dict[str, list[int]] = {}
    for r in rows:
        if per_class and r["index"] >= per_class:
            continue
        entry = classes.setdefault(r["class_name"], [0, 0])
        entry[0] += int(is_done(r, done, folder))
        entry[1] += 1
    finished = sum(d for d, _ in classes.values())
    total = sum(t for _, t in classes.values())
    return {"done": finished, "total": total, "complete": finished == total, "classes": classes}


def completed_rows(folder: str | os.PathLike) -> list[dict]:
    """Manifest rows whose image is written and valid, with the seed actually used (after any redraw)."""
    folder = Path(folder)
    rows = manifest_rows(folder)
    done = read_progress(folder)
    out = []
    for row in rows:
        if is_done(row, done, folder):
            out.append({**row, **done.get(row["id"], {}), "status": "done"})
    return out


def _match_classes(syn_classes: list[tuple[str, str]], real: ImageList, where: str) -> dict[int, int]:
    """Maps each synthetic class (id, name) to a real class index, one to one.

    Names are compared exactly (case-sensitive: "Cat" and "cat" are two classes, as they are when generating): a
    real class is found by its id, then its readable name, then the safe folder names and readable form derived
    from them (what a class-per-folder synthetic set is named after). Earlier keys win over derived ones.
    """
    lookup: dict[str, int] = {}
    derived = (lambda c, n: c, lambda c, n: n, lambda c, n: safe_folder(c), lambda c, n: safe_folder(n),
               lambda c, n: readable(c))
    for key_of in derived:
        for i, (cid, name) in enumerate(zip(real.classes, real.names, strict=True)):
            lookup.setdefault(key_of(cid, name), i)
    mapping, unknown, taken = {}, [], {}
    for j, (cid, name) in enumerate(syn_classes):
        hit = next((lookup[k] for k in (cid, name) if k and k in lookup), None)
        if hit is None:
            unknown.append(name or cid)
        elif hit in taken:
            raise DataError(f"synthetic set {where}: classes {syn_classes[taken[hit]][1]!r} and {name!r} both match "
                            f"the real class {real.names[hit]!r}; each real class needs exactly one synthetic class")
        else:
            mapping[j] = hit
            taken[hit] = j
    missing = sorted(set(range(real.num_classes)) - set(mapping.values()))
    if unknown or missing:
        msg = [f"synthetic set {where} does not match the classes of {real.name}:"]
        if unknown:
            msg.append(f"{len(unknown)} synthetic classes are not real classes: {unknown[:10]}")
        if missing:
            msg.append(f"{len(missing)} real classes have no synthetic images: {[real.names[i] for i in missing][:10]}")
        raise DataError(" ".join(msg) + ". Generate the set from the same dataset (synthtl generate data.name=...).")
    return mapping


def load_synthetic(path: str | os.PathLike, real: ImageList, per_class: int = 0,
                   allow_partial: bool = False) -> ImageList:
    """A synthetic training set labelled in the real dataset's label space (see `load_synthetic_set`)."""
    return load_synthetic_set(path, real, per_class, allow_partial)[0]


def load_synthetic_set(path: str | os.PathLike, real: ImageList, per_class: int = 0,
                       allow_partial: bool = False) -> tuple[ImageList, dict]:
    """A synthetic training set labelled in the real dataset's label space, and what was used.

    Args:
        path: A generated set (folder with manifest.jsonl) or a class-per-folder image folder.
        real: The real training list; synthetic classes must match its classes one to one.
        per_class: Keep the first k images of each class (manifest order); 0 = all.
        allow_partial: Use an unfinished generated set (the finished images only) instead of refusing it.

    Returns:
        (images, record) where record = {"path", "generated", "done", "total", "partial", "allow_partial"}: done/total
        count the planned images this use needs (the first `per_class` of each class); put it in result.json.

    Raises:
        DataError: an unfinished generated set without `allow_partial`, classes that do not match, or too few images.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"synthetic.path={str(path)!r} is not a folder; point it at a generated set "
                        "(`synthtl generate`) or a class-per-folder image folder")
    record = {"path": str(folder), "generated": (folder / MANIFEST).is_file(), "done": None, "total": None,
              "partial": False, "allow_partial": allow_partial}
    if record["generated"]:
        state = completion(folder, per_class)
        record.update(done=state["done"], total=state["total"], partial=not state["complete"])
        if record["partial"] and not allow_partial:
            raise DataError(f"generated set {folder} is unfinished: {state['done']} of {state['total']} planned images "
                            "are done; resume `synthtl generate` to finish it, or set synthetic.allow_partial=true to "
                            "train on the finished images (recorded in result.json)")
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
    images = ImageList(root=folder, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                       classes=real.classes, names=real.names, name=f"synthetic/{folder.name}")
    return images, record
