"""Loading a data config's train or test list: a named dataset (`data.official`), a class-per-folder image folder or a
`path,label` CSV; and the location-free fingerprint of a dataset's content."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synthtl.data.cache import default_cache_dir
from synthtl.data.imagelist import ImageList
from synthtl.data.images import IMAGE_EXTENSIONS, hidden, is_image_file, printable
from synthtl.data.official import DATASETS, classnames, download_dataset, verify_checksums
from synthtl.errors import ConfigError, DataError
from synthtl.runtime import is_main

if TYPE_CHECKING:
    from synthtl.config import DataConfig

SPLITS = ("train", "test")


def default_root() -> Path:
    return Path(os.environ.get("SYNTHTL_DATA", "data"))


def readable(class_id: str) -> str:
    """A prompt-friendly name from a folder name: "black_footed_albatross" -> "black footed albatross"."""
    name = class_id.split(".", 1)[1] if class_id[:3].isdigit() and "." in class_id[:5] else class_id
    return name.replace("_", " ").strip()


@functools.cache  # once per process: load_data lists a dataset several times per run
def _report_ignored(folder: Path, ignored: tuple[str, ...]) -> None:
    """One line naming what a folder listing skipped."""
    if ignored:
        more = f"; and {len(ignored) - 8} more" if len(ignored) > 8 else ""
        print(f"[synthtl] {printable(folder)}: ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'}: "
              f"{'; '.join(ignored[:8])}{more} (names starting with '.' and __MACOSX are skipped; images are "
              f"{' '.join(IMAGE_EXTENSIONS)})")


def _list_class(folder: Path, c: str, ignored: list[str]) -> list[str]:
    """Image files under folder/c at any depth (relative to `folder`, sorted); what it skips goes to `ignored`.
    Links to folders inside the class folder are followed (each real folder once, so a link loop ends); a link that
    leaves it (`cat/up -> ..`) is skipped, and an unreadable folder is reported."""
    found, seen, errors, top = [], set(), [], os.path.realpath(folder / c)
    for dirpath, dirnames, files in os.walk(folder / c, followlinks=True, onerror=errors.append):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        real = os.path.realpath(dirpath)
        if real in seen or os.path.commonpath([top, real]) != top:  # never another class's images under this label
            why = "already listed" if real in seen else "outside the class folder"
            ignored.append(f"{printable(rel_dir)}/ (link to a folder {why})")
            dirnames[:] = []
            continue
        seen.add(real)
        ignored += [f"{printable(rel_dir)}/{printable(d)}/ (hidden folder)" for d in sorted(dirnames) if hidden(d)]
        dirnames[:] = sorted(d for d in dirnames if not hidden(d))
        for f in sorted(files):
            if hidden(f):
                ignored.append(f"{printable(rel_dir)}/{printable(f)} (hidden file)")
            elif is_image_file(f):
                found.append(f"{rel_dir}/{f}")
            else:
                ignored.append(f"{printable(rel_dir)}/{printable(f)} (not an image file name)")
    ignored += [f"{printable(e.filename or c)} (cannot be listed: {e.strerror})" for e in errors]
    return found


def _images_inside(folder: Path, limit: int = 1000) -> int:
    """How many (non-hidden) image files a hidden folder holds at any depth, counting up to `limit`: tells a would-be
    class (a class's images may sit in sub-folders) from a tool folder (`.git`, `__MACOSX` with its `._x.jpg` files)."""
    n = 0
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not hidden(d)]
        n += sum(1 for f in files if not hidden(f) and is_image_file(f))
        if n >= limit:
            break
    return n


def image_folder(folder: Path, classes: list[str] | None = None, tag: str = "") -> ImageList:
    """A class-per-folder image folder. With `classes`, labels follow that order and other folders are an error.
    Hidden names and files without an image extension are skipped and reported (one printed line, and
    `ImageList.ignored`). A hidden folder that holds images beside the class folders (say "..dotdot") and a class
    folder without a single image are errors that name the folder: either would silently change the classes."""
    if not folder.is_dir():
        raise DataError(f"image folder {printable(folder)} does not exist; it must hold one sub-folder of images per "
                        "class")
    found, ignored = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if hidden(entry.name) and entry.is_dir():
            n = _images_inside(Path(entry.path))
            if n:  # it looks like a class: refusing it beats both guesses (a class dropped, or a tool folder taken)
                why = "starts with '.'" if entry.name.startswith(".") else f"is {entry.name!r}"
                raise DataError(f"{printable(folder / entry.name)} holds {n} image file(s) but its name {why}, which "
                                "marks a hidden folder, never a class: rename it if it is a class, or move it out of "
                                "the image folder")
            ignored.append(f"{printable(entry.name)}/ (hidden folder)")
        elif hidden(entry.name):
            ignored.append(f"{printable(entry.name)} (hidden file)")
        elif entry.is_dir():
            found.append(entry.name)
        else:
            ignored.append(f"{printable(entry.name)} (a file beside the class folders)")
    if not found:
        raise DataError(f"image folder {printable(folder)} has no class sub-folders (expected "
                        f"{printable(folder)}/<class>/<image>)" + (f"; it holds only {ignored[:5]}" if ignored else ""))
    classes = found if classes is None else classes
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{printable(folder)} has class folders not in the training classes: "
                        f"{[printable(c) for c in extra[:10]]}")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for c in found:
        paths = _list_class(folder, c, ignored)
        if not paths:
            raise DataError(f"class folder {printable(folder / c)} holds no image files ("
                            + " ".join(IMAGE_EXTENSIONS) + "): add its images or remove the folder (an empty folder "
                            "would still count as a class)")
        items += [(p, index[c]) for p in paths]
    if is_main():
        _report_ignored(folder, tuple(ignored))
    return ImageList.of(folder, sorted(items), classes, map(readable, classes), tag or folder.name, ignored)


def csv_list(path: Path, root: Path, classes: list[str] | None = None, tag: str = "") -> ImageList:
    """A CSV with a `path,label` header; labels are class names (or ids); paths are relative to `root`."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have a header with columns 'path' and 'label' (got {reader.fieldnames})")
        lines = [(r["path"].strip(), r["label"].strip(), reader.line_num) for r in reader]
    if not lines:
        raise DataError(f"{path} has no rows")
    first: dict[str, tuple[str, int]] = {}  # path -> (label, line) of its first row
    for p, lab, n in lines:
        was, m = first.setdefault(p, (lab, n))
        if was != lab:
            raise DataError(f"{path}: {p!r} is listed with two labels, {was!r} (line {m}) and {lab!r} (line {n}); "
                            "keep the right one")
    if len(first) < len(lines):
        twice = next(p for p, _, n in lines if first[p][1] != n)
        print(f"[synthtl] warning: {path} lists {len(lines) - len(first)} path(s) again with the same label (e.g. "
              f"{twice!r}); each counts once")
    labels = {lab for lab, _ in first.values()}
    classes = sorted(labels) if classes is None else classes
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(labels - set(index))
    if unknown:
        raise DataError(f"{path}: labels not among the training classes: {unknown[:10]}")
    items = [(p, index[lab]) for p, (lab, _) in first.items()]
    return ImageList.of(root, items, classes, map(readable, classes), tag or path.stem)


@dataclass(frozen=True)
class Layout:
    """Where a "folder" or "csv" dataset's lists are, and whether official files are checked (`data.*` keys)."""

    train_dir: str = "train"
    test_dir: str = "test"
    train_csv: str = ""
    test_csv: str = ""
    verify_checksums: bool = True


def load_split(name: str, split: str, root: str | os.PathLike = "", work_dir: str | os.PathLike = "",
               download: bool = False, **layout) -> ImageList:
    """The "train" (train or trainval) or "test" list of a registered dataset, "folder" or "csv", under `root` (""
    = $SYNTHTL_DATA or ./data); datasets stored as arrays are written out as PNG files once under `work_dir`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    lay = Layout(**layout)
    root_p = Path(root) if root else default_root()
    if name == "folder":
        train = image_folder(root_p / lay.train_dir, tag="folder/train")
        return train if split == "train" else image_folder(root_p / lay.test_dir, list(train.classes), "folder/test")
    if name == "csv":
        if not lay.train_csv or not lay.test_csv:
            raise ConfigError("data.name=csv needs data.train_csv and data.test_csv (files with a path,label header)")
        train = csv_list(Path(lay.train_csv), root_p, tag="csv/train")
        return train if split == "train" else csv_list(Path(lay.test_csv), root_p, list(train.classes), "csv/test")
    spec = DATASETS.get(name)
    if download:
        download_dataset(name, spec, root_p)
    if lay.verify_checksums:
        verify_checksums(name, spec, root_p)
    return spec.build(root_p, split, Path(work_dir) if work_dir else root_p / ".synthtl")


def load_data(d: DataConfig, split: str, download: bool | None = None) -> ImageList:
    """The train or test list a data config names (datasets stored as arrays are written out under its cache);
    `download` overrides `d.download` (False for readers that must not fetch anything)."""
    cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    return load_split(d.name, split, d.root, cache / "materialized", d.download if download is None else download,
                      train_dir=d.train_dir, test_dir=d.test_dir, train_csv=d.train_csv, test_csv=d.test_csv,
                      verify_checksums=d.verify_checksums)


def dataset_fingerprint(cfg: DataConfig) -> str:
    """A fingerprint of a dataset's content wherever it lives: SHA-256 over the name and, per split, the class ids and
    the sorted (relative path, size or -1 if missing, label) of every image. One stat() per file and no read, so a
    file edited to the same size is not seen (the scan's SHA-256 checks bytes)."""
    h = hashlib.sha256(json.dumps(["synthtl dataset fingerprint", 1, cfg.name]).encode())
    for split in SPLITS:
        images = load_data(cfg, split, download=False)
        h.update((json.dumps([split, list(images.classes)]) + "\n").encode())
        for rel, label in sorted(zip(images.paths, images.labels, strict=True)):
            try:
                size = (images.root / rel).stat().st_size
            except OSError:
                size = -1
            # json.dumps escapes every odd character (newlines, non-UTF-8 bytes): one unambiguous line per file
            h.update((json.dumps([rel, size, label]) + "\n").encode())
    return h.hexdigest()


def dataset_status(root: str | os.PathLike = "") -> list[dict]:
    """One row per registered dataset: name, title, whether its files are under root, train split name."""
    root_p = Path(root) if root else default_root()
    return [{"name": name, "title": spec.title, "present": not spec.marker or (root_p / spec.marker).exists(),
             "path": str(root_p / spec.marker), "classes": len(classnames(name)), "train_split": spec.train_split,
             "download": bool(spec.download)} for name, spec in DATASETS.items()]
