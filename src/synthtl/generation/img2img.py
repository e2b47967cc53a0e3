"""mode=img2img (ours, beyond the paper; "real guidance": He et al. ICLR'23, DA-Fusion ICLR'24, DISEF, Diff-Mix
CVPR'24): each image starts from a real training image of its class noised to `img2img.strength`, then is denoised
with text-to-image's prompt and per-image seed.

Sources: the class's training images (fine-tuning's few-shot selection, `data.splits.train_indices`, less any
val_fraction carve); image i uses source i mod n_c sorted by id (its train-listing path), so rows stay a function of
(class, index, plan). Each source's id and content hash are in the plan and the identity. A test image is never a
source, whatever data.allow_overlap says: byte-identical (SHA-256) or near-duplicate (perceptual hash) ones are refused.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from synthtl.config import GenerateConfig
from synthtl.data.cache import ScanResult, default_cache_dir, find_overlap, scan_images
from synthtl.data.datasets import load_data
from synthtl.data.genset import PLAN
from synthtl.data.images import load_rgb, printable
from synthtl.data.splits import stratified_val, train_indices
from synthtl.errors import ConfigError, DataError
from synthtl.files import read_json

SOURCE_FIT = "short-side-bicubic-center-crop"  # how a source becomes height x width (part of the identity)
HASH_CHARS = 16  # hex digits of each source's SHA-256 kept in plan.json (64 bits: a changed file is caught)
LOAD_THREADS = 4  # sources of a batch decoded in parallel (decoding releases the GIL)


@dataclass(frozen=True)
class Sources:
    """The sources of every generated class: ids sorted (relative to `root`) and their content hashes."""

    root: Path  # the train listing's root
    ids: list[list[str]]
    hashes: list[list[str]]  # SHA-256 of each file's bytes, first HASH_CHARS hex digits


def _split_seed(cfg: GenerateConfig) -> int:
    d = cfg.data
    if not ((d.shots and not d.split_file) or d.val_fraction):
        return 0  # nothing is drawn: the seed is not used
    if d.split_seed < 0:
        # Fine-tuning falls back to its run seed; a set has none, and a guess could pick other shots than its runs.
        raise ConfigError(f"mode=img2img with data.shots={d.shots} / data.val_fraction={d.val_fraction} needs "
                          "data.split_seed: set it to the fine-tuning runs' data.split_seed (or their seed when that "
                          "is -1), or give their data.split_file")
    return d.split_seed


def refuse_near_test_copies(sources, test, name: str) -> None:
    """DataError for a source within `leak_hash_bits` (the report's near-duplicate threshold) of a test image."""
    from synthtl.config import ReportConfig
    from synthtl.metrics.leakage import hash_files, hash_pairs

    bits = ReportConfig().leak_hash_bits
    src_h, src_ok, _ = hash_files([sources.root / p for p in sources.paths])
    test_h, test_ok, _ = hash_files([test.root / p for p in test.paths])
    i, j, d = hash_pairs(src_h[src_ok], test_h[test_ok], max_bits=bits)
    if len(i):
        src, near = [sources.paths[k] for k in src_ok.nonzero()[0]], [test.paths[k] for k in test_ok.nonzero()[0]]
        raise DataError(f"img2img source {printable(src[i[0]])} of {name} is a near-copy of the test image "
                        f"{printable(near[j[0]])} (perceptual hashes {int(d[0])} of 64 bits apart, the report's "
                        f"near-duplicate threshold is {bits}; {len(set(i.tolist()))} such sources): a test image can "
                        "never be a source; remove it from the train split, or give a data.split_file without it")


def select_sources(cfg: GenerateConfig, classes: list[tuple[str, str]]) -> Sources:
    """Each class's sources (`classes`: (id, name) in generation order), checked against the test split."""
    d = cfg.data
    seed = _split_seed(cfg)
    train_list, test_list = load_data(d, "train", download=False), load_data(d, "test", download=False)
    listed, _ = train_indices(train_list, d, seed)  # the one few-shot selection (listing order)
    cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()

    def scan(images):  # the data cache's scan: SHA-256 of the bytes, unreadable files per data.on_bad_image
        return scan_images(images, cache, short_side=None, on_bad=d.on_bad_image, workers=max(1, d.num_workers),
                           progress=cfg.progress)

    train_scan = scan(train_list.subset(listed))
    chosen = train_scan.source  # the readable shots in listing order: what a fine-tuning run trains on
    sha = dict(zip(chosen.paths, train_scan.hashes, strict=True))
    if d.val_fraction > 0:  # the same carve as fine-tuning: a validation image is not a training image
        chosen = chosen.subset(stratified_val(chosen, d.val_fraction, seed)[0])
    used = ScanResult(images=chosen, hashes=tuple(sha[p] for p in chosen.paths), skipped=(), source=chosen)
    pairs = find_overlap(used, scan(test_list))
    if pairs:
        src, test = pairs[0]
        raise DataError(f"img2img source {printable(src)} of {train_list.name} is byte-identical to the test image "
                        f"{printable(test)} ({len(pairs)} such sources): a test image can never be a source; remove "
                        "it from the train split, or give a data.split_file without it")
    refuse_near_test_copies(chosen, scan(test_list).source, train_list.name)
    label_of = {cid: y for y, cid in enumerate(train_list.classes)}
    per_label: dict[int, list[str]] = {}
    for p, y in zip(chosen.paths, chosen.labels, strict=True):
        per_label.setdefault(y, []).append(p)
    ids = []
    for cid, name in classes:
        ids.append(sorted(per_label.get(label_of.get(cid, -1), [])))
        if not ids[-1]:
            raise DataError(f"class {name!r} has no readable training image in {train_list.name} to start img2img "
                            "from; add images, or leave the class out (classes=...)")
    return Sources(root=train_list.root, ids=ids, hashes=[[sha[p][:HASH_CHARS] for p in mine] for mine in ids])


def identity(cfg: GenerateConfig, sources: Sources) -> dict:
    """The keys img2img adds to a set's identity (a text-to-image set's identity has none of them); "sources" is one
    hash of every class's (ids, content hashes)."""
    blob = json.dumps([[i, h] for i, h in zip(sources.ids, sources.hashes, strict=True)])
    return {"mode": "img2img", "strength": cfg.img2img.strength, "source_fit": SOURCE_FIT,
            "sources": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def refuse_other_sources(folder: Path, settings: dict, sources: Sources) -> None:
    """Refuses a set planned from other sources, naming the first that differs (the settings check shows hashes)."""
    plan = read_json(folder / PLAN) if (folder / PLAN).is_file() else None
    if plan is None or plan["settings"].get("sources") in (None, settings["sources"]):
        return
    what = "the sources differ"
    for k, ids, hashes in zip(plan.get("classes", []), sources.ids, sources.hashes, strict=False):
        old = dict(zip(k.get("sources", []), k.get("source_sha256", []), strict=True))
        now = dict(zip(ids, hashes, strict=True))
        sid = next((s for s in sorted(set(old) | set(now)) if old.get(s) != now.get(s)), None)
        if sid is not None:
            what = f"source {sid!r} of class {k['name']!r} " + (
                "was planned but is no longer a training image" if sid not in now else
                "is a training image the plan did not have" if sid not in old else
                "has changed bytes since it was planned")
            break
    raise ConfigError(f"{folder} was planned from other img2img sources ({what}). Use another out_dir, or the "
                      "same data settings (data.shots, data.split_seed, data.split_file, data.val_fraction) and files "
                      "to resume or extend it")


def pipeline(pipe):
    """The image-to-image pipeline sharing a loaded one's weights, tokenizer (with style token) and scheduler."""
    from diffusers import AutoPipelineForImage2Image

    try:
        out = AutoPipelineForImage2Image.from_pipe(pipe)
    except ValueError as e:
        raise ConfigError(f"mode=img2img: {type(pipe).__name__} has no image-to-image pipeline in diffusers "
                          f"({e}); use a Stable Diffusion 1.x/2.x or SDXL generator") from e
    out.set_progress_bar_config(disable=True)
    for name, value in vars(pipe).items():  # what synthtl attached (e.g. the style LoRA switched per class)
        if name.startswith("synthtl_"):
            setattr(out, name, value)
    return out


def load_sources(root: Path, rows: list[dict], width: int, height: int) -> list[Image.Image]:
    """A batch's sources at the generator's size (SOURCE_FIT: bicubic scale to cover, then centre crop)."""
    def fit(row: dict) -> Image.Image:
        return ImageOps.fit(load_rgb(root / row["source"]), (width, height), Image.Resampling.BICUBIC)

    with ThreadPoolExecutor(min(LOAD_THREADS, len(rows))) as pool:
        return list(pool.map(fit, rows))
