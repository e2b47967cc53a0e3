"""Few-shot subsets and validation splits, written as inspectable split files (image ids + checksum)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from synthtl.config import DataConfig
from synthtl.data.imagelist import ImageList
from synthtl.errors import DataError
from synthtl.files import read_json, write_json
from synthtl.runtime import is_main

SPLIT_FORMAT = 1


def fewshot_indices(images: ImageList, shots: int, seed: int) -> tuple[list[int], list[str]]:
    """k images per class drawn with `seed`; returns (sorted indices, classes that had fewer than k)."""
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for c, idx in enumerate(images.by_class()):
        if len(idx) < shots:
            short.append(images.classes[c])
        chosen += [idx[t] for t in rng.permutation(len(idx))[:shots]]
    return sorted(chosen), short


def train_indices(images: ImageList, data: DataConfig, seed: int) -> tuple[list[int], list[str]]:
    """The one few-shot selection: (sorted indices into the listing, classes with fewer than k images). Fine-tuning,
    style learning and `synthtl split` all call it on the listing (before any image is decoded), so that the same
    (data config, seed) gives them the same k shots even when some images later prove unreadable."""
    if data.split_file:
        return read_split(data.split_file, images), []
    if not data.shots:
        return list(range(len(images))), []
    chosen, short = fewshot_indices(images, data.shots, seed)
    if short and is_main():
        shorts = set(short)
        counts = [c for n, c in zip(images.classes, images.class_counts(), strict=True) if n in shorts]
        print(f"[synthtl] warning: data.shots={data.shots} but {len(short)} of {images.num_classes} classes have "
              f"fewer training images (smallest: {min(counts)}); those classes use all their images (listed as "
              "few_shot_short_classes in the split file and result.json)")
    return chosen, short


def stratified_val(images: ImageList, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): `fraction` of each class (at least one) goes to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c, idx in enumerate(images.by_class()):
        if not idx:
            continue
        n_val = max(1, round(len(idx) * fraction))
        if n_val >= len(idx):
            raise DataError(f"class {images.classes[c]!r} has {len(idx)} training images: too few to carve a "
                            f"validation split with data.val_fraction={fraction}; lower it or use more shots")
        perm = rng.permutation(len(idx))
        val += [idx[p] for p in perm[:n_val]]
        train += [idx[p] for p in perm[n_val:]]
    return sorted(train), sorted(val)


def checksum(ids: list[str], labels: list[int]) -> str:
    h = hashlib.sha256()
    for i, y in zip(ids, labels, strict=True):
        h.update(f"{i}\t{y}\n".encode("utf-8", "surrogateescape"))  # ids that are not UTF-8 keep their bytes
    return h.hexdigest()


def write_split(path: str | os.PathLike, images: ImageList, indices: list[int], **meta: object) -> None:
    """Writes the chosen images as a split file: their ids (relative paths), labels, class list and checksum."""
    ids = [images.paths[i] for i in indices]
    labels = [images.labels[i] for i in indices]
    write_json(path, {"format": SPLIT_FORMAT, "source": images.name, "classes": list(images.classes),
                      "count": len(ids), **meta, "checksum": checksum(ids, labels), "ids": ids, "labels": labels})


def read_split(path: str | os.PathLike, images: ImageList) -> list[int]:
    """Indices into `images` of a split file's ids, after checking its checksum, classes and labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    d = read_json(path)
    ids, labels = d.get("ids", []), d.get("labels", [])
    if checksum(ids, labels) != d.get("checksum"):
        raise DataError(f"split file {path} fails its checksum: it was edited or truncated; regenerate it with "
                        "`synthtl split`")
    if d.get("classes") and list(d["classes"]) != list(images.classes):
        raise DataError(f"split file {path} was made for other classes than {images.name}")
    where = {p: i for i, p in enumerate(images.paths)}
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataError(f"split file {path} names {len(missing)} images not in {images.name} "
                        f"(e.g. {missing[:3]}); was it made for another dataset or root?")
    wrong = [i for i, y in zip(ids, labels, strict=True) if images.labels[where[i]] != y]
    if wrong:
        raise DataError(f"split file {path} gives other labels than the dataset for {wrong[:3]}")
    return [where[i] for i in ids]
