"""The training side of a synthetic set: a generated set (`data.genset`) or a class-per-folder image folder, labelled
in the real dataset's label space. Only finished images count, never a planned-but-unwritten or half-written one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthtl.data.datasets import image_folder, readable
from synthtl.data.genset import PLAN, completion, read_plan, read_state, safe_folder
from synthtl.data.imagelist import ImageList
from synthtl.errors import DataError


def check_sources(folder: str | os.PathLike, train: ImageList, per_class: int = 0) -> None:
    """Refuses a generated set made by img2img from real images that the run's `train` images (after any few-shot
    draw and validation carve) lack: its outputs carry their sources into training. Image i of a class starts from
    source i mod (its sources), so with `per_class` images per class read (0 = all) only that many sources count."""
    plan = read_plan(folder)
    allowed = set(train.paths)
    outside = [s for k in plan.get("classes", []) for s in k.get("sources", [])[:per_class or None]
               if s not in allowed]
    if outside:
        raise DataError(f"generated set {folder} was made by img2img from {len(outside)} real images this run does not "
                        f"train on (e.g. {outside[:3]}): its images would carry them into training. Generate it from "
                        "the run's own training images (the same data.shots with data.split_seed, or data.split_file, "
                        "and data.val_fraction), or train on the split it was made from")


def needs_scan(path: str | os.PathLike, short_side: int | None) -> bool:
    """Whether a synthetic set's training files need the data cache's first-use scan (`cache.scan_images`).
    A generated set needs none when its training copies are already what the cache would hold: synthtl wrote every
    finished file itself (`synthtl generate --validate` checks them; the loader names or skips a damaged one), and a
    training copy (an upright RGB JPEG) no longer than the cache's `short_side` is what the scan would hard-link
    unchanged. With no cache the scan would only check and hash, and the hashes of synthetic images feed nothing."""
    if not (Path(path) / PLAN).is_file():
        return True
    side = read_plan(path)["settings"]["train_copy"]
    return short_side is not None and not 0 < side <= short_side


def _match_classes(syn_classes: list[tuple[str, str]], real: ImageList, where: str) -> dict[int, int]:
    """Maps each synthetic class (id, name) to a real class index, one to one. Names are compared exactly ("Cat" and
    "cat" are two classes): a real class is found by its id, its readable name, then the safe folder names and readable
    form derived from them (what a class-per-folder set is named after); earlier keys win over derived ones."""
    lookup: dict[str, int] = {}
    for keys in (real.classes, real.names, map(safe_folder, real.classes), map(safe_folder, real.names),
                 map(readable, real.classes)):
        for i, key in enumerate(keys):
            lookup.setdefault(key, i)
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


def _generated_items(folder: Path, real: ImageList, per_class: int, allow_partial: bool, record: dict,
                     kept: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(files training reads, their real labels) of the first `per_class` finished images of each class (only those
    in `kept`, a filter's kept list, when given), class-major."""
    state = read_state(folder)
    progress = completion(state, per_class)
    record.update(done=progress["done"], total=progress["total"], partial=not progress["complete"])
    if record["partial"] and not allow_partial:
        raise DataError(f"generated set {folder} is unfinished: {progress['done']} of {progress['total']} planned "
                        "images are done; resume `synthtl generate` to finish it, or set synthetic.allow_partial=true "
                        "to train on the finished images (recorded in result.json)")
    rows = state.rows
    if not state.done.any():
        raise DataError(f"generated set {folder} has no finished images yet; run or resume `synthtl generate`")
    order = sorted(set(rows.cls[state.done].tolist()))  # classes with a finished image
    mapping = _match_classes([(rows.classes[c]["id"] or rows.classes[c]["name"], rows.classes[c]["name"])
                              for c in order], real, str(folder))
    done = np.flatnonzero(state.done)  # class-major, then image index: "first k"
    starts = np.searchsorted(rows.cls[done], order + [np.iinfo(np.int32).max])
    key = "train_path" if rows.settings["train_copy"] else "path"
    paths, labels = [], []  # labels: real class indices
    for j, c in enumerate(order):
        mine = (done[starts[j]:starts[j + 1]][:per_class or None] - c * rows.per_class).tolist()  # image indices
        train = rows.rel_paths(c, mine, key)
        if kept is not None:
            train = [t for t, p in zip(train, rows.rel_paths(c, mine), strict=True) if p in kept]
        paths += train
        labels += [mapping[j]] * len(train)
    return paths, np.array(labels, dtype=np.int64)


def load_synthetic_set(path: str | os.PathLike, real: ImageList, per_class: int = 0, allow_partial: bool = False,
                       kept: set[str] | None = None) -> tuple[ImageList, dict]:
    """A synthetic training set labelled like `real` (classes matched one to one), and its record for result.json.
    `path`: a generated set or a class-per-folder image folder; `per_class`: the first k images of each class (0 =
    all; the record's done/total count those); `allow_partial`: use an unfinished generated set's finished images
    instead of refusing it; `kept`: a filter's kept list (manifest paths, `filtering.store.read_kept`), which drops
    images from the first `per_class`."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"synthetic.path={str(path)!r} is not a folder; point it at a generated set "
                        "(`synthtl generate`) or a class-per-folder image folder")
    record = {"path": str(folder), "generated": (folder / PLAN).is_file(), "done": None, "total": None,
              "partial": False, "allow_partial": allow_partial}
    if record["generated"]:
        paths, labels = _generated_items(folder, real, per_class, allow_partial, record, kept)
    else:
        raw = image_folder(folder, tag=f"synthetic:{folder.name}")
        mapping = _match_classes(list(zip(raw.classes, raw.names, strict=True)), real, str(folder))
        keep = sorted(i for idx in raw.by_class() for i in idx[:per_class or None])  # the first k file names
        paths, labels = [raw.paths[i] for i in keep], np.array([mapping[raw.labels[i]] for i in keep], dtype=np.int64)
    counts = np.bincount(labels, minlength=real.num_classes)
    short = [real.names[c] for c in range(real.num_classes) if per_class and kept is None and counts[c] < per_class]
    if short:
        raise DataError(f"synthetic.per_class={per_class} but {len(short)} classes have fewer finished images in "
                        f"{folder} (e.g. {short[:5]}); generate more or lower synthetic.per_class")
    empty = [real.names[c] for c in range(real.num_classes) if counts[c] == 0]
    if empty and kept is not None:
        raise DataError(f"the filter's kept list of {folder} keeps no image of {len(empty)} classes (e.g. "
                        f"{empty[:5]}); loosen its keep.* rule or train without synthetic.filter")
    return ImageList(root=folder, paths=tuple(paths), labels=tuple(labels.tolist()), classes=real.classes,
                     names=real.names, name=f"synthetic/{folder.name}"), record
