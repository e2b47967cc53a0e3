"""The named datasets, read from their official files (the layout torchvision's downloaders produce under `root`) with
their standard train/test splits and readable class names. Where a dataset ships no official split (Caltech-101,
EuroSAT, SUN397 without its Partitions files) the split is a fixed rule over the file names (`_rule_split`)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from synthtl.data import safe_pickle
from synthtl.data.imagelist import ImageList
from synthtl.data.images import hidden, is_image_file
from synthtl.errors import ConfigError, DataError
from synthtl.files import atomic_open, content_sha256, write_json
from synthtl.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and (maybe) download one dataset."""

    title: str  # display name
    marker: str  # path under root whose presence means the dataset is there
    build: Callable[[Path, str, Path], ImageList]  # (root, "train" (train or trainval) or "test", work_dir)
    source: str  # where the files come from, shown when they are missing
    download: str = ""  # the torchvision class that can download it, or "" if it cannot
    train_split: str = "train"  # what the dataset calls the split used for training
    checksums: tuple[tuple[str, str], ...] = ()  # (path under root, published MD5): checked before reading


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def classnames(name: str) -> list[str]:
    """The shipped human-readable class names of a named dataset, in label order."""
    return _lines(resources.files("synthtl.data").joinpath("classnames", f"{name}.txt"))


def _require(path: Path, name: str, root: Path) -> Path:
    """`path`, a file of dataset `name` under `root`; a missing one is refused saying where to get it."""
    if not path.exists():
        spec = DATASETS.get(name)
        how = (", or data.download=true to let torchvision fetch it (needs internet)" if spec.download else "")
        raise DataError(
            f"dataset {name!r} not found: {path} does not exist. Get it from {spec.source} and set "
            f"data.root to the folder that contains {spec.marker.split('/')[0]!r} (now {root}){how}.")
    return path


def _lines(path) -> list[str]:  # a Path or a package resource
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _make(root: Path, items: list[tuple[str, int]], classes: list[str], name: str, split: str) -> ImageList:
    """The list, with the shipped class names (another class count means the files are not the release)."""
    names = classnames(name)
    if len(names) != len(classes):
        raise DataError(f"dataset {name!r} has {len(classes)} classes on disk but synthtl ships {len(names)} class "
                        "names; the files under data.root are not the standard release")
    return ImageList.of(root, items, classes, names, f"{name}/{split}")


def _rule_split(per_class: list[list[str]], split: str, n_train: Callable[[int], int]) -> list[tuple[str, int]]:
    """(path, label) pairs of a split by the hash rule: each class's first n_train(n) paths in SHA-1 order train."""
    out = []
    for label, paths in enumerate(per_class):
        ordered = sorted(paths, key=lambda p: hashlib.sha1(p.encode("utf-8", "surrogateescape")).hexdigest())
        k = n_train(len(ordered))
        out += [(p, label) for p in sorted(ordered[:k] if split == "train" else ordered[k:])]
    return out


def _by_rule(root: Path, split: str, work: Path, name: str, n_train: Callable[[int], int],
             exclude: str = "") -> ImageList:
    """A dataset without an official split: the images directly in each class folder of its marker, by the hash rule."""
    base = _require(root / DATASETS.get(name).marker, name, root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != exclude and not hidden(p.name))
    per_class = [[f"{c}/{f.name}" for f in (base / c).iterdir() if is_image_file(f.name) and not hidden(f.name)]
                 for c in classes]
    return _make(base, _rule_split(per_class, split, n_train), classes, name, split)


# 30 training images per class, the rest for test (the common protocol); EuroSAT: 80/20.
_caltech101 = functools.partial(_by_rule, name="caltech101", n_train=lambda n: min(30, n - 1),
                                exclude="BACKGROUND_Google")
_eurosat = functools.partial(_by_rule, name="eurosat", n_train=lambda n: (n * 4) // 5)


def _aircraft(root: Path, split: str, work: Path) -> ImageList:
    base = root / "fgvc-aircraft-2013b" / "data"
    classes = _lines(_require(base / "variants.txt", "aircraft", root))
    index = {c: i for i, c in enumerate(classes)}
    listed = base / f"images_variant_{'trainval' if split == 'train' else 'test'}.txt"
    rows = (line.split(" ", 1) for line in _lines(listed))
    return _make(base, [(f"images/{i}.jpg", index[v]) for i, v in rows], classes, "aircraft", split)


def _cars(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "stanford_cars"
    meta = loadmat(_require(base / "devkit" / "cars_meta.mat", "cars", root), squeeze_me=True)
    classes = [str(c) for c in meta["class_names"].tolist()]
    annos, folder = ((base / "devkit" / "cars_train_annos.mat", "cars_train") if split == "train"
                     else (base / "cars_test_annos_withlabels.mat", "cars_test"))
    annotations = np.atleast_1d(loadmat(_require(annos, "cars", root), squeeze_me=True)["annotations"])
    return _make(base, [(f"{folder}/{a['fname']}", int(a["class"]) - 1) for a in annotations], classes, "cars", split)


def _food101(root: Path, split: str, work: Path) -> ImageList:
    base = root / "food-101"
    meta = json.loads(_require(base / "meta" / f"{split}.json", "food101", root).read_text())
    classes = sorted(meta)
    return _make(base, [(f"images/{rel}.jpg", i) for i, c in enumerate(classes) for rel in meta[c]], classes,
                 "food101", split)


def _dtd(root: Path, split: str, work: Path, partition: int = 1) -> ImageList:
    base = root / "dtd" / "dtd"
    _require(base / "labels" / f"test{partition}.txt", "dtd", root)
    classes = sorted(p.name for p in (base / "images").iterdir() if p.is_dir() and not hidden(p.name))
    index = {c: i for i, c in enumerate(classes)}
    files = [f"train{partition}.txt", f"val{partition}.txt"] if split == "train" else [f"test{partition}.txt"]
    # train = train1 + val1 (the usual trainval protocol); test = test1
    items = [(f"images/{line}", index[line.split("/")[0]]) for f in files for line in _lines(base / "labels" / f)]
    return _make(base, items, classes, "dtd", split)


def _pets(root: Path, split: str, work: Path) -> ImageList:
    base = root / "oxford-iiit-pet"
    ann = _require(base / "annotations" / ("trainval.txt" if split == "train" else "test.txt"), "pets", root)
    items, raw = [], {}
    for line in ann.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            image_id, label = line.split()[:2]
            items.append((f"images/{image_id}.jpg", int(label) - 1))
            raw[int(label) - 1] = image_id.rsplit("_", 1)[0]
    names = classnames("pets")
    return _make(base, items, [raw.get(i, names[i].replace(" ", "_")) for i in range(37)], "pets", split)


def _sun397(root: Path, split: str, work: Path) -> ImageList:
    base = root / "SUN397"
    classes = _lines(_require(base / "ClassName.txt", "sun397", root))
    index = {c: i for i, c in enumerate(classes)}  # ids look like "/a/abbey"
    part_name = "Training_01.txt" if split == "train" else "Testing_01.txt"
    for part_dir in (base / "Partitions", root / "Partitions", base):
        if (part_dir / part_name).is_file():  # the official partition 1 (50 train / 50 test per class)
            rels = [line.lstrip("/") for line in _lines(part_dir / part_name)]
            return _make(base, [(rel, index["/" + rel.rsplit("/", 1)[0]]) for rel in rels], classes, "sun397", split)
    # No Partitions files: 50/50 per class by the hash rule (documented in `synthtl datasets`).
    per_class = [[f"{c}/{p.name}" for p in (base / c).glob("sun_*.jpg")] if (base / c).is_dir() else []
                 for c in (c.lstrip("/") for c in classes)]
    return _make(base, _rule_split(per_class, split, lambda n: min(50, n // 2)), classes, "sun397", split)


def _flowers102(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "flowers-102"
    setid = loadmat(_require(base / "setid.mat", "flowers102", root), squeeze_me=True)
    labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
    keys = ("trnid", "valid") if split == "train" else ("tstid",)  # train = train + val (2,040 images)
    ids = sorted(int(i) for k in keys for i in np.atleast_1d(setid[k]))
    items = [(f"jpg/image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids]
    return _make(base, items, [str(i) for i in range(1, 103)], "flowers102", split)


def _dogs(root: Path, split: str, work: Path) -> ImageList:
    from scipy.io import loadmat

    base = root / "stanford_dogs"
    name = "train_list.mat" if split == "train" else "test_list.mat"
    lists = next((d / name for d in (base, base / "lists") if (d / name).is_file()), base / name)
    mat = loadmat(_require(lists, "dogs", root), squeeze_me=True)
    files = [str(f) for f in np.atleast_1d(mat["file_list"])]
    labels = [int(y) - 1 for y in np.atleast_1d(mat["labels"])]
    classes = sorted({f.split("/")[0] for f in files})
    if len(classes) != 120:
        classes = sorted(p.name for p in (base / "Images").iterdir() if p.is_dir())
    return _make(base, [(f"Images/{f}", y) for f, y in zip(files, labels, strict=True)], classes, "dogs", split)


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
    return _make(base, items, classes, "cub200", split)


def _materialize(out: Path, arrays: np.ndarray, labels: list[int], classes: list[str]) -> list[tuple[str, int]]:
    """Writes in-memory uint8 HWC (or HW) images as PNG files once; returns (relative path, label) pairs."""
    items = [(f"{classes[y]}/{i:05d}.png", int(y)) for i, y in enumerate(labels)]
    if not (out / "complete.json").is_file():
        for (rel, _), arr in zip(items, arrays, strict=True):
            with atomic_open(out / rel, "wb") as f:
                Image.fromarray(arr).save(f, format="PNG")
        write_json(out / "complete.json", {"images": len(items)})
    return items


def _cifar(root: Path, split: str, work: Path, which: str) -> ImageList:
    folder = _require(root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python"), which, root)
    if which == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files, meta_file, label_key, names_key = [split], "meta", "fine_labels", "fine_label_names"
    batches = [safe_pickle.load(folder / f) for f in files]  # pickles: read without running code (`safe_pickle`)
    labels = [y for d in batches for y in d[label_key]]
    classes = list(safe_pickle.load(folder / meta_file)[names_key])
    arrays = np.vstack([d["data"] for d in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    out = work / f"{which}-png" / split
    return _make(out, _materialize(out, arrays, labels, classes), classes, which, split)


def _digits(root: Path, split: str, work: Path) -> ImageList:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): the offline demo's real dataset."""
    classes = [str(i) for i in range(10)]
    out = work / "digits-png"
    if not (out / "complete.json").is_file():  # written once; no need to import scikit-learn again
        from sklearn.datasets import load_digits

        d = load_digits()
        _materialize(out, (d.images * (255.0 / 16.0)).round().astype(np.uint8), [int(t) for t in d.target], classes)
    per_class = [[f"{c}/{p.name}" for p in (out / c).glob("*.png")] for c in classes]  # any order: the rule sorts
    return _make(out, _rule_split(per_class, split, lambda n: n // 2), classes, "digits", split)  # 50/50 hash rule


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
DATASETS.add("cub200", DatasetSpec("CUB-200-2011", "CUB_200_2011/images.txt", _cub200, "the CUB_200_2011 archive"))
# The MD5 of each file of the official archives, as published with them (and checked by torchvision).
CIFAR10_MD5 = tuple((f"cifar-10-batches-py/{f}", md5) for f, md5 in (
    ("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"), ("test_batch", "40351d587109b95175f43aff81a1287e"),
    ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")))
CIFAR100_MD5 = tuple((f"cifar-100-python/{f}", md5) for f, md5 in (
    ("train", "16019d7e3df5f24257cddd939b257f8d"), ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    ("meta", "7973b15100ade9c7d40fb424638fde48")))
DATASETS.add("cifar10", DatasetSpec("CIFAR-10", "cifar-10-batches-py", functools.partial(_cifar, which="cifar10"),
                                    "the CIFAR-10 python archive", "CIFAR10", checksums=CIFAR10_MD5))
DATASETS.add("cifar100", DatasetSpec("CIFAR-100", "cifar-100-python", functools.partial(_cifar, which="cifar100"),
                                     "the CIFAR-100 python archive", "CIFAR100", checksums=CIFAR100_MD5))
DATASETS.add("eurosat", DatasetSpec("EuroSAT RGB (80/20)", "eurosat/2750", _eurosat, "the EuroSAT RGB archive",
                                    "EuroSAT"))
DATASETS.add("digits", DatasetSpec("scikit-learn digits (bundled, offline)", "", _digits,
                                   "scikit-learn (bundled; nothing to download)"))


def verify_checksums(name: str, spec: DatasetSpec, root: Path) -> None:
    """Refuses a file whose MD5 is not the published one before anything reads it, naming the opt-out for users'
    own re-packed files (digests are cached by file state)."""
    for rel, md5 in spec.checksums:
        path = root / rel
        if path.is_file() and content_sha256(path, algo="md5") != md5:
            raise DataError(f"{path} is not the official {spec.title} file (its MD5 differs from the published "
                            f"{md5}); replace it with the file from {spec.source}, or set data.verify_checksums=false "
                            "if you re-packed the files yourself (they are still read without running code)")


# The arguments each torchvision class downloads with (one call by default, without any).
_DOWNLOAD_ARGS = {"FGVCAircraft": {"split": "trainval"}, "Food101": {"split": "train"}, "DTD": {"split": "train"},
                  "OxfordIIITPet": {"split": "trainval"}, "Flowers102": {"split": "train"}, "CIFAR10": {"train": True},
                  "CIFAR100": {"train": True}}


def download_dataset(name: str, spec: DatasetSpec, root: Path) -> None:
    """Lets torchvision fetch a dataset's archives into `root`, unless its files are there already."""
    if not spec.download:
        raise ConfigError(f"dataset {name!r} cannot be downloaded automatically; get {spec.source} and set data.root")
    if spec.marker and (root / spec.marker).exists():
        return
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(tvd, spec.download)(str(root), **_DOWNLOAD_ARGS.get(spec.download, {}), download=True)
    except Exception as e:  # network errors come in many types (URLError, HTTPError, OSError, RuntimeError)
        raise DataError(f"downloading {name!r} with torchvision failed ({type(e).__name__}: {e}). Without internet, "
                        f"copy {spec.source} into {root} by hand and run without data.download") from e
