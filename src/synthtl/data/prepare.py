"""Setting up a fine-tuning run's data: splits, first-use scan and cache, overlap check, few-shot, synthetic set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from synthtl.config import FinetuneConfig
from synthtl.data.cache import ScanResult, check_overlap, scan_images
from synthtl.data.datasets import load_data
from synthtl.data.genset import PLAN
from synthtl.data.imagelist import ImageList
from synthtl.data.images import printable
from synthtl.data.splits import stratified_val, train_indices, write_split
from synthtl.data.synthetic import check_sources, load_synthetic_set, needs_scan
from synthtl.errors import ConfigError, DataError
from synthtl.filtering.store import read_kept
from synthtl.runtime import is_main


@dataclass
class RunData:
    """Everything a strategy trains and evaluates on (images point at the resized cache when enabled)."""

    train: ImageList
    test: ImageList
    val: ImageList | None = None
    synthetic: ImageList | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_files: dict[str, list[str]] = field(default_factory=dict)
    overlap: int = 0
    short_classes: list[str] = field(default_factory=list)  # few-shot classes with fewer than k images
    ignored: dict[str, list[str]] = field(default_factory=dict)  # entries the listing skipped (hidden, not images)
    synthetic_record: dict | None = None  # the generated set used: path, done/total, partial, allow_partial

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def split_seed(cfg: FinetuneConfig) -> int:
    return cfg.data.split_seed if cfg.data.split_seed >= 0 else cfg.seed


def _scan(images: ImageList, cfg: FinetuneConfig) -> ScanResult:
    d = cfg.data
    return scan_images(images, d.cache_dir, short_side=d.cache_short_side if d.cache else None, on_bad=d.on_bad_image,
                       workers=max(1, d.num_workers), progress=cfg.progress)


def prepare_data(cfg: FinetuneConfig, run_dir: Path, needs_synthetic: bool) -> RunData:
    """Loads, scans and splits the real data (and the synthetic set), writing split files into the run folder."""
    d = cfg.data
    train_list, test_list = load_data(d, "train"), load_data(d, "test")
    seed = split_seed(cfg)
    if train_list.num_classes < 2:
        raise DataError(f"{train_list.name} has {train_list.num_classes} class(es) ({list(train_list.names)}): a "
                        "classifier needs at least 2; add a folder of images per class")
    listed, short = train_indices(train_list, d, seed)  # on the listing: the same shots as style learning
    train_scan, test_scan = _scan(train_list, cfg), _scan(test_list, cfg)
    source = train_scan.source  # the readable images, in listing order
    unreadable = [printable(c) for c, k in zip(source.classes, source.class_counts(), strict=True) if k == 0]
    if unreadable:  # data.on_bad_image=skip skipped every image of these classes
        raise DataError(f"no readable training image in {len(unreadable)} class(es) (e.g. {unreadable[:5]}): every "
                        "image of theirs was skipped as unreadable (listed in the scan); replace them or remove the "
                        "class folder")
    where = {p: j for j, p in enumerate(source.paths)}
    idx = [where[train_list.paths[i]] for i in listed if train_list.paths[i] in where]  # unreadable shots: skipped
    name = f"{source.name}" + (f"/{d.shots}-shot" if d.shots else "")
    train, train_src = train_scan.images.subset(idx, name), source.subset(idx, name)
    write = is_main()  # under torchrun every rank draws the same split; one writes it
    val, trained_on, kept, carved = None, train_src, list(range(len(train_src))), {}
    if d.val_fraction > 0:
        kept, va = stratified_val(train_src, d.val_fraction, seed)
        val, train, trained_on = train.subset(va, f"{train.name}/val"), train.subset(kept), train_src.subset(kept)
        carved = {"val_removed": len(va)}
        if write:
            write_split(run_dir / "splits" / "val.json", train_src, va, kind="val", fraction=d.val_fraction, seed=seed)
    if write:
        write_split(run_dir / "splits" / "train.json", train_src, kept, kind="train", shots=d.shots, seed=seed,
                    short_classes=short, **carved)
    used = ScanResult(images=train, hashes=tuple(train_scan.hashes[i] for i in idx), skipped=(), source=train_src)
    overlap = check_overlap(used, test_scan, d.allow_overlap)
    scans = {"train": train_scan, "test": test_scan}
    syn_record = None
    if needs_synthetic or cfg.synthetic.path:
        scans["synthetic"], syn_record = _synthetic(cfg, source, trained_on)
    return RunData(train=train, test=test_scan.images, val=val,
                   synthetic=scans["synthetic"].images if "synthetic" in scans else None,
                   skipped={k: len(s.skipped) for k, s in scans.items()},
                   skipped_files={k: [printable(p) for p, _ in s.skipped] for k, s in scans.items()}, overlap=overlap,
                   short_classes=short, ignored={"train": list(train_list.ignored), "test": list(test_list.ignored)},
                   synthetic_record=syn_record)


def _synthetic(cfg: FinetuneConfig, source: ImageList, trained_on: ImageList) -> tuple[ScanResult, dict]:
    """The scanned synthetic set labelled like `source` (the readable real train listing), and its record."""
    s = cfg.synthetic
    if not s.path:
        raise ConfigError(f"strategy {cfg.strategy!r} trains on synthetic images: set synthetic.path to a "
                          "generated set (`synthtl generate`) or a class-per-folder image folder")
    if (Path(s.path) / PLAN).is_file():  # an img2img set carries its real sources in
        check_sources(s.path, trained_on, s.per_class)
    kept = read_kept(s.path, s.filter, s.per_class) if s.filter else None  # the immutable kept list of this volume
    images, record = load_synthetic_set(s.path, source, s.per_class, s.allow_partial,
                                        set(kept["paths"]) if kept else None)
    if kept:
        record["filter"] = {"name": s.filter, "filter": kept["filter"], "kept_list": kept["digest"],
                            "per_class": kept["per_class"], "kept": kept["kept"]}
    if needs_scan(s.path, cfg.data.cache_short_side if cfg.data.cache else None):
        return _scan(images, cfg), record
    # The training copies are read where they are: the bytes the cache would hard-link. No hashes (none are used).
    return ScanResult(images=images, hashes=(), skipped=(), source=images), record
