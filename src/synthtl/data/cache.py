"""First-use scan of an image list: content hashes, bad-image detection and a pre-resized JPEG copy.

The scan decodes every image once, records the SHA-256 of its bytes (for the train/test overlap check) and,
when asked, writes a copy whose short side is `short_side` as JPEG q95. Training then reads the small copies,
which is what makes the data loader keep up with the GPU. Scans are resumable (an append-only log) and
invalidated per file when a source file's size or mtime changes.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.errors import BadImageError, DataError
from synthtl.files import append_jsonl, read_jsonl, sha256_bytes, write_bytes
from synthtl.runtime import is_main


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHTL_CACHE", Path.home() / ".cache" / "synthtl"))


@dataclass(frozen=True)
class ScanResult:
    """The usable images (pointing at the resized copies when cached), their content hashes, the skipped files."""

    images: ImageList
    hashes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)
    source: ImageList  # the same usable images at their original location


def _key(images: ImageList) -> str:
    h = hashlib.sha1(str(images.root.resolve()).encode())
    for p in images.paths:
        h.update(p.encode() + b"\n")
    return f"{images.name.replace('/', '-') or 'images'}-{h.hexdigest()[:12]}"


def resized_jpeg(img: Image.Image, short_side: int, quality: int = 95) -> bytes:
    """JPEG bytes of `img` with its short side reduced to `short_side` (never enlarged)."""
    w, h = img.size
    s = min(w, h)
    if s > short_side:
        scale = short_side / s
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _cached_name(rel: str) -> str:
    return rel + ".jpg"


def scan_images(images: ImageList, cache_dir: str | os.PathLike = "", short_side: int | None = 256,
                on_bad: str = "error", workers: int = 4, progress: bool = True) -> ScanResult:
    """Scans `images` once (resuming an earlier partial scan) and returns the usable ones.

    Args:
        images: The list to scan.
        cache_dir: Cache root ("" = $SYNTHTL_CACHE or ~/.cache/synthtl).
        short_side: Write resized copies with this short side; None = hashes and checks only.
        on_bad: "error" raises `BadImageError` naming the first unreadable file; "skip" drops it.
        workers: Decoding threads.
        progress: Show a progress bar (rank 0 only).
    """
    base = (Path(cache_dir) if cache_dir else default_cache_dir()) / "scans" / _key(images)
    base.mkdir(parents=True, exist_ok=True)
    log = base / "scan.jsonl"
    resized_dir = base / f"s{short_side}" if short_side else None
    done: dict[str, dict] = {r["path"]: r for r in read_jsonl(log)} if log.is_file() else {}

    def stat_sig(rel: str) -> list[int] | None:
        try:
            st = (images.root / rel).stat()
            return [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            return None

    def fresh(rel: str) -> bool:
        row = done.get(rel)
        if row is None or row.get("sig") != stat_sig(rel):
            return False
        return not (row["ok"] and resized_dir is not None and not (resized_dir / _cached_name(rel)).is_file())

    def work(rel: str) -> dict:
        path = images.root / rel
        sig = stat_sig(rel)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {"path": rel, "sig": sig, "ok": False, "reason": "file not found", "sha256": ""}
        digest = sha256_bytes(data)
        try:
            img = load_rgb(path, data, min_short_side=short_side or 0)
        except BadImageError as e:
            return {"path": rel, "sig": sig, "ok": False, "reason": e.reason, "sha256": digest}
        if resized_dir is not None:
            write_bytes(resized_dir / _cached_name(rel), resized_jpeg(img, short_side))
        return {"path": rel, "sig": sig, "ok": True, "reason": "", "sha256": digest, "size": list(img.size)}

    todo = [rel for rel in dict.fromkeys(images.paths) if not fresh(rel)]
    if todo:
        bar = tqdm(total=len(todo), desc=f"scan {images.name}", unit="img", disable=not (progress and is_main()))
        batch: list[dict] = []
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for row in pool.map(work, todo):
                done[row["path"]] = row
                batch.append(row)
                bar.update()
                if len(batch) >= 256:
                    append_jsonl(log, batch)
                    batch = []
                if not row["ok"] and on_bad == "error":
                    append_jsonl(log, batch)
                    pool.shutdown(cancel_futures=True)
                    raise BadImageError(str(images.root / row["path"]), row["reason"])
        append_jsonl(log, batch)
        bar.close()
    keep, skipped = [], []
    for i, rel in enumerate(images.paths):
        row = done[rel]
        if row["ok"]:
            keep.append(i)
        elif on_bad == "error":
            raise BadImageError(str(images.root / rel), row["reason"])
        else:
            skipped.append((rel, row["reason"]))
    if not keep:
        raise DataError(f"{images.name}: none of the {len(images)} images under {images.root} could be read")
    source = images.subset(keep)
    used = source
    if resized_dir is not None:
        used = replace(source, root=resized_dir, paths=tuple(_cached_name(p) for p in source.paths))
    hashes = tuple(done[images.paths[i]]["sha256"] for i in keep)
    return ScanResult(images=used, hashes=hashes, skipped=tuple(skipped), source=source)


def find_overlap(train: ScanResult, test: ScanResult) -> list[tuple[str, str]]:
    """(train path, test path) pairs whose file bytes are identical."""
    test_by_hash: dict[str, str] = {}
    for p, h in zip(test.source.paths, test.hashes, strict=True):
        test_by_hash.setdefault(h, p)
    return [(p, test_by_hash[h]) for p, h in zip(train.source.paths, train.hashes, strict=True) if h in test_by_hash]


def check_overlap(train: ScanResult, test: ScanResult, allow: bool) -> int:
    """Raises if any train image is byte-identical to a test image, unless `allow`; returns the count."""
    pairs = find_overlap(train, test)
    if pairs and not allow:
        examples = "; ".join(f"{a} == {b}" for a, b in pairs[:5])
        raise DataError(f"{len(pairs)} training images are byte-identical to test images ({examples}). Training on "
                        "test images inflates accuracy: remove them, or set data.allow_overlap=true to proceed "
                        "(the count is recorded in result.json)")
    return len(pairs)
