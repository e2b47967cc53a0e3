"""Real downstream datasets by name, with their standard train/test splits and readable class names.

Each parser reads the dataset's own files in the layout torchvision's downloaders produce under `root`, so a
root prepared by torchvision (or by hand from the official archives) works. `download=True` asks torchvision to
fetch the archives where it can. Where a dataset ships no official split (Caltech-101, EuroSAT, SUN397 without
its Partitions files) the split is a fixed, documented rule over the file names, identical on every machine.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthtl.data import safe_pickle
from synthtl.data.cache import default_cache_dir
from synthtl.data.imagelist import ImageList
from synthtl.data.images import IMAGE_EXTENSIONS, is_image_file, printable
from synthtl.errors import ConfigError, DataError
from synthtl.files import write_bytes, write_json
from synthtl.registry import Registry
from synthtl.runtime import is_main

if TYPE_CHECKING:
    from synthtl.config import DataConfig

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and (maybe) download one dataset.

    Attributes:
        title: Display name.
        marker: Path under root whose presence means the dataset is there.
        build: (root, split, work_dir) -> ImageList for split "train" (train or trainval) or "test".
        source: Where the files come from, shown when they are missing.
        download: torchvision class name that can download it, or "" if it cannot.
        train_split: What the dataset calls the split used for training.
        checksums: (path under root, MD5) of each file whose official checksum is published; checked before reading
            (`data.verify_checksums`).
    """

    title: str
    marker: str
    build: Callable[[Path, str, Path], ImageList]
    source: str
    download: str = ""
    train_split: str = "train"
    checksums: tuple[tuple[str, str], ...] = ()


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.names()


def classnames(name: str) -> list[str]:
    """The shipped human-readable class names of a named dataset, in label order."""
    text = resources.files("synthtl.data").joinpath("classnames", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_root() -> Path:
    return Path(os.environ.get("SYNTHTL_DATA", "data"))


def _require(path: Path, name: str, root: Path) -> None:
    if not path.exists():
        spec = DATASETS.get(name)
        how = (", or data.download=true to let torchvision fetch it (needs internet)" if spec.download else "")
        raise DataError(
            f"dataset {name!r} not found: {path} does not exist. Get it from {spec.source} and set "
            f"data.root to the folder that contains {spec.marker.split('/')[0]!r} (now {root}){how}.")


def _names_for(name: str, n: int) -> tuple[str, ...]:
    names = classnames(name)
    if len(names) != n:
        raise DataError(f"dataset {name!r} has {n} classes on disk but synthtl ships {len(names)} class names; "
                        "the files under data.root are not the standard release")
    return tuple(names)


def _hash_order(paths: list[str]) -> list[str]:
    """A machine-independent shuffle: paths ordered by the SHA-1 of their relative path."""
    return sorted(paths, key=lambda p: hashlib.sha1(p.encode("utf-8", "surrogateescape")).hexdigest())


def _rule_split(per_class: list[list[str]], split: str, n_train: Callable[[int], int]) -> list[tuple[str, int]]:
    out = []
    for label, paths in enumerate(per_class):
        ordered = _hash_order(sorted(paths))
        k = n_train(len(ordered))
        chosen = ordered[:k] if split == "train" else ordered[k:]
        out += [(p, label) for p in sorted(chosen)]
    return out


def _make(root: Path, items: list[tuple[str, int]], classes: list[str], names: tuple[str, ...], tag: str) -> ImageList:
    return ImageList(root=root, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                     classes=tuple(classes), names=names, name=tag)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ----------------------------------------------------------------------------------------------------------------
# Parsers (one per dataset); each takes (root, split, work_dir).
# ----------------------------------------------------------------------------------------------------------------
def _aircraft(root: Path, split: str, work: Path) -> ImageList:
    base = root / "fgvc-aircraft-2013b" / "data"
    _require(base / "variants.txt", "aircraft", root)
    classes = [line.strip() for line in (base / "variants.txt").read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for line in (base / f"images_variant_{'trainval' if split == 'train' else 'test'}.txt").read_text().splitlines():
        if line.strip():
            image_id, variant = line.strip().split(" ", 1)
            items.append((f"images/{image_id}.jpg", index[variant]))
    return _make(base, items, classes, _names_for("aircraft", len(classes)), f"aircraft/{split}")


def _cars(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "stanford_cars"
    _require(base / "devkit" / "cars_meta.mat", "cars", root)
    classes = [str(c) for c in loadmat(base / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"].tolist()]
    if split == "train":
        annos, folder = base / "devkit" / "cars_train_annos.mat", "cars_train"
    else:
        annos, folder = base / "cars_test_annos_withlabels.mat", "cars_test"
    _require(annos, "cars", root)
    annotations = np.atleast_1d(loadmat(annos, squeeze_me=True)["annotations"])
    items = [(f"{folder}/{a['fname']}", int(a["class"]) - 1) for a in annotations]
    return _make(base, items, classes, _names_for("cars", len(classes)), f"cars/{split}")


def _food101(root: Path, split: str, work: Path) -> ImageList:
    base = root / "food-101"
    _require(base / "meta" / f"{split}.json", "food101", root)
    meta = json.loads((base / "meta" / f"{split}.json").read_text())
    classes = sorted(meta)
    items = [(f"images/{rel}.jpg", i) for i, c in enumerate(classes) for rel in meta[c]]
    return _make(base, items, classes, _names_for("food101", len(classes)), f"food101/{split}")


def _dtd(root: Path, split: str, work: Path, partition: int = 1) -> ImageList:
    base = root / "dtd" / "dtd"
    _require(base / "labels" / f"test{partition}.txt", "dtd", root)
    classes = sorted(p.name for p in (base / "images").iterdir() if p.is_dir() and not hidden(p.name))
    index = {c: i for i, c in enumerate(classes)}
    files = [f"train{partition}.txt", f"val{partition}.txt"] if split == "train" else [f"test{partition}.txt"]
    items = []
    for fname in files:  # train = train1 + val1 (the usual trainval protocol); test = test1
        for line in (base / "labels" / fname).read_text().splitlines():
            if line.strip():
                cls = line.strip().split("/")[0]
                items.append((f"images/{line.strip()}", index[cls]))
    return _make(base, items, classes, _names_for("dtd", len(classes)), f"dtd/{split}")


def _pets(root: Path, split: str, work: Path) -> ImageList:
    base = root / "oxford-iiit-pet"
    ann = base / "annotations" / ("trainval.txt" if split == "train" else "test.txt")
    _require(ann, "pets", root)
    items, raw = [], {}
    for line in ann.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            image_id, label = line.split()[:2]
            items.append((f"images/{image_id}.jpg", int(label) - 1))
            raw[int(label) - 1] = image_id.rsplit("_", 1)[0]
    names = _names_for("pets", 37)
    classes = [raw.get(i, names[i].replace(" ", "_")) for i in range(37)]
    return _make(base, items, classes, names, f"pets/{split}")


def _sun397(root: Path, split: str, work: Path) -> ImageList:
    base = root / "SUN397"
    _require(base / "ClassName.txt", "sun397", root)
    classes = [line.strip() for line in (base / "ClassName.txt").read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}  # ids look like "/a/abbey"
    part_name = "Training_01.txt" if split == "train" else "Testing_01.txt"
    for part_dir in (base / "Partitions", root / "Partitions", base):
        if (part_dir / part_name).is_file():  # the official partition 1 (50 train / 50 test per class)
            items = []
            for line in (part_dir / part_name).read_text().splitlines():
                if line.strip():
                    rel = line.strip().lstrip("/")
                    items.append((rel, index["/" + rel.rsplit("/", 1)[0]]))
            return _make(base, items, classes, _names_for("sun397", len(classes)), f"sun397/{split}")
    # No Partitions files: 50/50 per class by the hash rule (documented in `synthtl datasets`).
    per_class = []
    for c in classes:
        folder = base / c.lstrip("/")
        per_class.append([f"{c.lstrip('/')}/{p.name}" for p in folder.glob("sun_*.jpg")] if folder.is_dir() else [])
    items = _rule_split(per_class, split, lambda n: min(50, n // 2))
    return _make(base, items, classes, _names_for("sun397", len(classes)), f"sun397/{split}")


def _caltech101(root: Path, split: str, work: Path) -> ImageList:
    base = root / "caltech101" / "101_ObjectCategories"
    _require(base, "caltech101", root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google"
                     and not hidden(p.name))
    per_class = [[f"{c}/{f.name}" for f in (base / c).iterdir() if is_image_file(f.name) and not hidden(f.name)]
                 for c in classes]
    # No official split: 30 training images per class by the hash rule, the rest for test (the common protocol).
    items = _rule_split(per_class, split, lambda n: min(30, n - 1))
    return _make(base, items, classes, _names_for("caltech101", len(classes)), f"caltech101/{split}")


def _flowers102(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "flowers-102"
    _require(base / "setid.mat", "flowers102", root)
    setid = loadmat(base / "setid.mat", squeeze_me=True)
    labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
    keys = ("trnid", "valid") if split == "train" else ("tstid",)  # train = train + val (2,040 images)
    ids = sorted(int(i) for k in keys for i in np.atleast_1d(setid[k]))
    items = [(f"jpg/image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids]
    classes = [str(i) for i in range(1, 103)]
    return _make(base, items, classes, _names_for("flowers102", 102), f"flowers102/{split}")


def _dogs(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "stanford_dogs"
    name = "train_list.mat" if split == "train" else "test_list.mat"
    lists = next((d / name for d in (base, base / "lists") if (d / name).is_file()), base / name)
    _require(lists, "dogs", root)
    mat = loadmat(lists, squeeze_me=True)
    files = [str(f) for f in np.atleast_1d(mat["file_list"])]
    labels = [int(y) - 1 for y in np.atleast_1d(mat["labels"])]
    classes = sorted({f.split("/")[0] for f in files})
    if len(classes) != 120:
        classes = sorted(p.name for p in (base / "Images").iterdir() if p.is_dir())
    items = [(f"Images/{f}", y) for f, y in zip(files, labels, strict=True)]
    return _make(base, items, classes, _names_for("dogs", len(classes)), f"dogs/{split}")


def _cub200(root: Path, split: str, work: Path) -> ImageList:
    base = root / "CUB_200_2011"
    _require(base / "images.txt", "cub200", root)

    def table(fname: str) -> dict[str, str]:
        rows = (line.split(" ", 1) for line in (base / fname).read_text().splitlines() if line.strip())
        return {k: v.strip() for k, v in rows}

    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = [v for _, v in sorted(table("classes.txt").items(), key=lambda kv: int(kv[0]))]
    want = "1" if split == "train" else "0"
    items = [(f"images/{images[k]}", int(labels[k]) - 1) for k in sorted(images, key=int) if is_train[k] == want]
    return _make(base, items, classes, _names_for("cub200", len(classes)), f"cub200/{split}")


def _eurosat(root: Path, split: str, work: Path) -> ImageList:
    base = root / "eurosat" / "2750"
    _require(base, "eurosat", root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not hidden(p.name))
    per_class = [[f"{c}/{f.name}" for f in (base / c).iterdir() if is_image_file(f.name) and not hidden(f.name)]
                 for c in classes]
    items = _rule_split(per_class, split, lambda n: (n * 4) // 5)  # no official split: 80/20 by the hash rule
    return _make(base, items, classes, _names_for("eurosat", len(classes)), f"eurosat/{split}")


def _materialize(out: Path, arrays: np.ndarray, labels: list[int], classes: list[str]) -> list[tuple[str, int]]:
    """Writes in-memory uint8 HWC(or HW) images as PNG files once; returns (relative path, label) pairs."""
    from PIL import Image

    items = [(f"{classes[y]}/{i:05d}.png", int(y)) for i, y in enumerate(labels)]
    done = out / "complete.json"
    if not done.is_file():
        import io

        for (rel, _), arr in zip(items, arrays, strict=True):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            write_bytes(out / rel, buf.getvalue())
        write_json(done, {"images": len(items)})
    return items


def _cifar(root: Path, split: str, work: Path, which: str) -> ImageList:
    folder = root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    _require(folder, which, root)
    if which == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files, meta_file, label_key, names_key = [split], "meta", "fine_labels", "fine_label_names"
    data, labels = [], []
    for f in files:  # pickles: read without running code (`safe_pickle`)
        d = safe_pickle.load(folder / f)
        data.append(d["data"])
        labels += list(d[label_key])
    classes = list(safe_pickle.load(folder / meta_file)[names_key])
    arrays = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    out = work / f"{which}-png" / split
    items = _materialize(out, arrays, labels, classes)
    return _make(out, items, classes, _names_for(which, len(classes)), f"{which}/{split}")


def _digits(root: Path, split: str, work: Path) -> ImageList:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): the offline demo's real dataset."""
    classes = [str(i) for i in range(10)]
    out = work / "digits-png"
    if (out / "complete.json").is_file():  # written once; no need to import scikit-learn again
        all_items = sorted((f"{c}/{p.name}", int(c)) for c in classes for p in (out / c).glob("*.png"))
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        arrays = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        all_items = _materialize(out, arrays, [int(t) for t in d.target], classes)
    per_class = [[p for p, y in all_items if y == c] for c in range(10)]
    items = _rule_split(per_class, split, lambda n: n // 2)  # fixed 50/50 split by the hash rule
    return _make(out, items, classes, _names_for("digits", 10), f"digits/{split}")


DATASETS.add("aircraft", DatasetSpec("FGVC-Aircraft (variants)", "fgvc-aircraft-2013b/data/variants.txt", _aircraft,
                                     "the FGVC-Aircraft 2013b archive", "FGVCAircraft", "trainval"))
DATASETS.add("cars", DatasetSpec("Stanford Cars", "stanford_cars/devkit/cars_meta.mat", _cars,
                                 "the Stanford Cars images + devkit + cars_test_annos_withlabels.mat"))
DATASETS.add("food101", DatasetSpec("Food-101", "food-101/meta/train.json", _food101, "the Food-101 archive",
                                    "Food101"))
DATASETS.add("dtd", DatasetSpec("Describable Textures (partition 1)", "dtd/dtd/labels/test1.txt", _dtd,
                                "the DTD archive", "DTD", "train1+val1"))
DATASETS.add("pets", DatasetSpec("Oxford-IIIT Pets", "oxford-iiit-pet/annotations/trainval.txt", _pets,
                                 "the Oxford-IIIT Pet images + annotations archives", "OxfordIIITPet", "trainval"))
DATASETS.add("sun397", DatasetSpec("SUN397 (partition 1)", "SUN397/ClassName.txt", _sun397,
                                   "the SUN397 archive plus Partitions.zip extracted into SUN397/", "SUN397"))
DATASETS.add("caltech101", DatasetSpec("Caltech-101 (30/class train)", "caltech101/101_ObjectCategories",
                                       _caltech101, "the Caltech-101 archive", "Caltech101"))
DATASETS.add("flowers102", DatasetSpec("Oxford Flowers-102", "flowers-102/setid.mat", _flowers102,
                                       "the Flowers-102 images + imagelabels.mat + setid.mat", "Flowers102",
                                       "train+val"))
DATASETS.add("dogs", DatasetSpec("Stanford Dogs", "stanford_dogs/Images", _dogs,
                                 "the Stanford Dogs images.tar and lists.tar extracted into stanford_dogs/"))
DATASETS.add("cub200", DatasetSpec("CUB-200-2011", "CUB_200_2011/images.txt", _cub200,
                                   "the CUB_200_2011 archive"))
# The MD5 of each file of the official archives, as published with them (and checked by torchvision).
CIFAR10_MD5 = (("cifar-10-batches-py/data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("cifar-10-batches-py/data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("cifar-10-batches-py/data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("cifar-10-batches-py/data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("cifar-10-batches-py/data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
               ("cifar-10-batches-py/test_batch", "40351d587109b95175f43aff81a1287e"),
               ("cifar-10-batches-py/batches.meta", "5ff9c542aee3614f3951f8cda6e48888"))
CIFAR100_MD5 = (("cifar-100-python/train", "16019d7e3df5f24257cddd939b257f8d"),
                ("cifar-100-python/test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
                ("cifar-100-python/meta", "7973b15100ade9c7d40fb424638fde48"))
DATASETS.add("cifar10", DatasetSpec("CIFAR-10", "cifar-10-batches-py", lambda r, s, w: _cifar(r, s, w, "cifar10"),
                                    "the CIFAR-10 python archive", "CIFAR10", checksums=CIFAR10_MD5))
DATASETS.add("cifar100", DatasetSpec("CIFAR-100", "cifar-100-python", lambda r, s, w: _cifar(r, s, w, "cifar100"),
                                     "the CIFAR-100 python archive", "CIFAR100", checksums=CIFAR100_MD5))
DATASETS.add("eurosat", DatasetSpec("EuroSAT RGB (80/20)", "eurosat/2750", _eurosat, "the EuroSAT RGB archive",
                                    "EuroSAT"))
DATASETS.add("digits", DatasetSpec("scikit-learn digits (bundled, offline)", "", _digits,
                                   "scikit-learn (bundled; nothing to download)"))


# ----------------------------------------------------------------------------------------------------------------
# Generic formats
# ----------------------------------------------------------------------------------------------------------------
def readable(class_id: str) -> str:
    """A prompt-friendly name from a folder name: "black_footed_albatross" -> "black footed albatross"."""
    name = class_id.split(".", 1)[1] if class_id[:3].isdigit() and "." in class_id[:5] else class_id
    return name.replace("_", " ").strip()


TOOL_FOLDERS = ("__MACOSX",)  # what unzipping a macOS archive adds beside the data (AppleDouble "._x.jpg" files)


def hidden(name: str) -> bool:
    """Whether a folder or file name is skipped when listing images: it starts with "." (.git, .ipynb_checkpoints,
    .DS_Store, macOS "._x.jpg") or is a tool folder such as __MACOSX: the rule `ls`, git and the Hugging Face
    imagefolder loader follow. Every skipped entry is reported, and a hidden folder holding images where classes
    are expected is an error (`image_folder`): a class is never dropped silently."""
    return name.startswith(".") or name in TOOL_FOLDERS


_REPORTED: set[str] = set()  # listings already reported by this process (load_data runs several times per run)


def _report_ignored(folder: Path, ignored: list[str]) -> None:
    """One line (rank 0, once per process) naming what a folder listing skipped."""
    if not ignored or not is_main():
        return
    line = (f"[synthtl] {printable(folder)}: ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'}: "
            + "; ".join(ignored[:8]) + (f"; and {len(ignored) - 8} more" if len(ignored) > 8 else "")
            + " (names starting with '.' and __MACOSX are skipped; images are " + " ".join(IMAGE_EXTENSIONS) + ")")
    if line not in _REPORTED:
        _REPORTED.add(line)
        print(line)


def _list_class(folder: Path, c: str, ignored: list[str]) -> list[str]:
    """Image files under folder/c at any depth (relative to `folder`, sorted); what it skips goes to `ignored`.

    Symbolic links to folders are followed (each real folder once, so a link loop ends); an unreadable sub-folder
    is reported, not dropped silently.
    """
    found, seen = [], set()
    errors: list[OSError] = []
    for dirpath, dirnames, files in os.walk(folder / c, followlinks=True, onerror=errors.append):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        real = os.path.realpath(dirpath)
        if real in seen:
            ignored.append(f"{printable(rel_dir)}/ (link to a folder already listed)")
            dirnames[:] = []
            continue
        seen.add(real)
        for d in sorted(dirnames):
            if hidden(d):
                ignored.append(f"{printable(rel_dir)}/{printable(d)}/ (hidden folder)")
        dirnames[:] = sorted(d for d in dirnames if not hidden(d))
        for f in sorted(files):
            if hidden(f):
                ignored.append(f"{printable(rel_dir)}/{printable(f)} (hidden file)")
            elif is_image_file(f):
                found.append(f"{rel_dir}/{f}")
            else:
                ignored.append(f"{printable(rel_dir)}/{printable(f)} (not an image file name)")
    for e in errors:
        ignored.append(f"{printable(e.filename or c)} (cannot be listed: {e.strerror})")
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

    Hidden names (see `hidden`) and files without an image extension are skipped and reported (one printed line,
    and `ImageList.ignored`). A hidden folder that holds images beside the class folders (say "..dotdot") and a
    class folder without a single image are errors that name the folder: either would silently change the classes.
    """
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
    if classes is None:
        classes = found
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
    items.sort()
    _report_ignored(folder, ignored)
    return ImageList(root=folder, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                     classes=tuple(classes), names=tuple(readable(c) for c in classes), name=tag or folder.name,
                     ignored=tuple(ignored))


def csv_list(path: Path, root: Path, classes: list[str] | None = None, tag: str = "") -> ImageList:
    """A CSV with a `path,label` header; labels are class names (or ids); paths are relative to `root`."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have a header with columns 'path' and 'label' (got {reader.fieldnames})")
        rows = [(r["path"].strip(), r["label"].strip()) for r in reader]
    if not rows:
        raise DataError(f"{path} has no rows")
    if classes is None:
        classes = sorted({lab for _, lab in rows})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for _, lab in rows} - set(index))
    if unknown:
        raise DataError(f"{path}: labels not among the training classes: {unknown[:10]}")
    items = [(p, index[lab]) for p, lab in rows]
    return _make(root, items, classes, tuple(readable(c) for c in classes), tag or path.stem)


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------
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
    """The train or test ImageList of a dataset.

    Args:
        name: A registered dataset, "folder" or "csv".
        split: "train" (the dataset's train or trainval split) or "test".
        root: Folder holding the dataset ("" = $SYNTHTL_DATA or ./data).
        work_dir: Where datasets stored as arrays are written out as PNG files once.
        download: Let torchvision download the dataset first.
        **layout: `Layout` keys: train_dir, test_dir, train_csv, test_csv, verify_checksums.
    """
    _check_split(split)
    lay = Layout(**layout)
    root_p = Path(root) if root else default_root()
    work = Path(work_dir) if work_dir else root_p / ".synthtl"
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
        _download(name, spec, root_p)
    if lay.verify_checksums:
        verify_checksums(name, spec, root_p)
    return spec.build(root_p, split, work)


def verify_checksums(name: str, spec: DatasetSpec, root: Path) -> None:
    """Checks each file with a published checksum (before anything reads it); the digests are cached by file state.

    Raises:
        DataError: a file whose MD5 is not the official one, naming the opt-out for users' own re-packed files.
    """
    from synthtl.files import content_sha256

    for rel, md5 in spec.checksums:
        path = root / rel
        if path.is_file() and content_sha256(path, algo="md5") != md5:
            raise DataError(f"{path} is not the official {spec.title} file (its MD5 differs from the published "
                            f"{md5}); replace it with the file from {spec.source}, or set data.verify_checksums=false "
                            "if you re-packed the files yourself (they are still read without running code)")


def load_data(d: DataConfig, split: str, download: bool | None = None) -> ImageList:
    """The train or test list a data config names; datasets stored as arrays are written out under its cache.

    Args:
        d: The `data` section of a fine-tuning, generation or style config.
        split: "train" or "test".
        download: Override `d.download` (False for readers that must not fetch anything).
    """
    cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    return load_split(d.name, split, d.root, cache / "materialized", d.download if download is None else download,
                      train_dir=d.train_dir, test_dir=d.test_dir, train_csv=d.train_csv, test_csv=d.test_csv,
                      verify_checksums=d.verify_checksums)


def dataset_fingerprint(cfg: DataConfig) -> str:
    """A fingerprint of a dataset's content that does not depend on where it lives (data.root, data.cache_dir).

    SHA-256 over the dataset name and, for the train and test lists, the class ids and the sorted (path relative to
    the list's root, size in bytes, label) of every image. A copy under another root keeps its fingerprint; adding,
    removing, renaming, relabelling or resizing a file changes it. It costs one stat() per file (no image is read)
    (a study's expansion looks each dataset up once: `identity.Resolver`), so a file edited to the same size is not
    seen (the scan's SHA-256 checks bytes).
    A listed file that is missing counts with size -1.
    """
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


def _download(name: str, spec: DatasetSpec, root: Path) -> None:
    if not spec.download:
        raise ConfigError(f"dataset {name!r} cannot be downloaded automatically; get {spec.source} and set data.root")
    if spec.marker and (root / spec.marker).exists():
        return
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.download)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for split in {"FGVCAircraft": ("trainval",), "Food101": ("train",), "DTD": ("train",),
                      "OxfordIIITPet": ("trainval",), "Flowers102": ("train",), "CIFAR10": (True,),
                      "CIFAR100": (True,)}.get(spec.download, (None,)):
            if split is None:
                cls(str(root), download=True)
            elif isinstance(split, bool):
                cls(str(root), train=split, download=True)
            else:
                cls(str(root), split=split, download=True)
    except Exception as e:  # network errors come in many types (URLError, HTTPError, OSError, RuntimeError)
        raise DataError(f"downloading {name!r} with torchvision failed ({type(e).__name__}: {e}). Without internet, "
                        f"copy {spec.source} into {root} by hand and run without data.download") from e


def dataset_status(root: str | os.PathLike = "") -> list[dict]:
    """One row per registered dataset: name, title, whether its files are under root, train split name."""
    root_p = Path(root) if root else default_root()
    rows = []
    for name, spec in DATASETS.items():
        present = True if not spec.marker else (root_p / spec.marker).exists()
        rows.append({"name": name, "title": spec.title, "present": present, "path": str(root_p / spec.marker),
                     "classes": len(classnames(name)), "train_split": spec.train_split,
                     "download": bool(spec.download)})
    return rows
