"""First-use scan of an image list: content hashes (for the train/test overlap check), bad-image detection and a
pre-resized JPEG q95 copy, which training reads so that the loader keeps up with the GPU.

One cache per image folder, with rows and copies per file, so every list drawn from a folder (each volume of a
generated set, each few-shot draw) shares them. Scans resume from an append-only log and redo a changed file; one
job at a time writes (under the cache folder's lock), and jobs that find the scan complete take no lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from synthtl import files
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb, printable
from synthtl.errors import BadImageError, DataError
from synthtl.runtime import is_main

CACHE_FORMAT = 2  # 2: hashed copy names, EXIF orientation applied; a new format never reuses an old scan
# How long a job waits for another one building the same cache: a scan of ~100k images takes minutes (an hour on a
# slow network disk); a dead builder releases the lock at once, so only a hung one makes the wait run out.
SCAN_LOCK_WAIT_S = 2 * 3600
default_cache_dir = files.cache_home  # $SYNTHTL_CACHE or ~/.cache/synthtl


@dataclass(frozen=True)
class ScanResult:
    """The usable images (pointing at the resized copies when cached), their content hashes, the skipped files."""

    images: ImageList
    hashes: tuple[str, ...]  # empty for a generated set read without a scan (`synthetic.needs_scan`)
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)
    source: ImageList  # the same usable images at their original location


def _key(images: ImageList) -> str:
    """The cache folder of the list's root folder (not of the list: subsets share it)."""
    h = hashlib.sha1(f"format {CACHE_FORMAT}\n".encode() + os.fsencode(images.root.resolve()))
    # The readable part is only a hint for people browsing the cache: kept short and plain for any file system.
    hint = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "-" for ch in images.name)[:40]
    return f"{hint or 'images'}-{h.hexdigest()[:12]}"


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


def _small_plain_jpeg(data: bytes, short_side: int) -> bool:
    """An RGB JPEG, upright as stored (no EXIF rotation), with short side <= short_side: already what the copy
    would be, so re-encoding it would only lose quality and time."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only
            return (im.format == "JPEG" and im.mode == "RGB" and min(im.size) <= short_side
                    and im.getexif().get(0x0112, 1) == 1)
    except (OSError, SyntaxError, ValueError):
        return False


def _write_copy(dst: Path, data: bytes, link: Path | None = None) -> None:
    """Writes a cached copy atomically, as a hard link to `link` if it can (no bytes copied), else `data`; without an
    fsync of its own, which made a scan wait for the disk once per image: the scan log, fsynced per batch, records the
    copy's size, and a copy that a crash left empty or short does not match it, so the next scan redoes it."""
    if link is not None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.link{os.getpid()}.tmp"  # `remove_temps` clears it if a kill leaves it
        try:
            tmp.unlink(missing_ok=True)
            os.link(link, tmp)
            os.replace(tmp, dst)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    with files.atomic_open(dst, "wb", fsync=False) as f:
        f.write(data)


def _cached_name(rel: str) -> str:
    """The resized copy's name: a hash of the source path, so that any legal source name (non-UTF-8 bytes, 255 bytes
    long) gives a short legal one; two-letter sub-folders keep folders small."""
    h = hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()  # the bytes the file system holds
    return f"{h[:2]}/{h}.jpg"


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:  # missing, or a link loop: read_bytes says which
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_log(log: Path) -> dict[str, dict]:
    """path -> latest row of a scan log. A torn last line is ignored; any other damage names the file and line."""
    done: dict[str, dict] = {}
    if not log.is_file():
        return done
    for i, row in enumerate(files.iter_jsonl(log)):
        if not (isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("ok"), bool)
                and isinstance(row.get("sha256"), str) and isinstance(row.get("reason", ""), str)):
            with open(log, "rb") as f:  # row i is on the i-th line that is not blank (`iter_jsonl` skips those)
                lines = [n for n, raw in enumerate(f, 1) if raw.strip()]
            raise files.CorruptFileError(f"{log}, line {lines[i]}: not a scan row (the file is damaged); delete the "
                                         "file to rescan the dataset")
        done[row["path"]] = row
    return done


@contextlib.contextmanager
def _writer_lock(base: Path) -> Iterator[None]:
    """Holds the cache folder's writer lock; says whom it waits for when another job holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(files.exclusive(base, "data cache", wait=0))
        except files.LockedError:
            if is_main():
                print(f"[synthtl] data cache {base} is being built by {files.lock_holder(base)}; waiting for it to "
                      f"finish (up to {SCAN_LOCK_WAIT_S // 3600} h)", flush=True)
            stack.enter_context(files.exclusive(base, "data cache", wait=SCAN_LOCK_WAIT_S))
        files.remove_temps(base, recursive=True)  # copies a killed scan left half-written; no live writer now
        yield


def _scan_one(root: Path, resized_dir: Path | None, short_side: int | None, rel: str) -> dict:
    """The scan-log row of one file (after writing its resized copy when `resized_dir` is given)."""
    path = root / rel
    row = {"path": rel, "sig": _signature(path), "ok": False, "reason": "", "sha256": ""}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {**row, "reason": "file not found"}
    except OSError as e:  # e.g. permission denied: skippable like an unreadable image, never a traceback
        return {**row, "reason": f"cannot be read ({e.strerror})"}
    row["sha256"] = files.sha256_bytes(data)
    try:
        img = load_rgb(path, data, min_short_side=short_side or 0)
    except BadImageError as e:
        return {**row, "reason": e.reason}
    if resized_dir is None:
        return {**row, "ok": True, "size": list(img.size)}
    link = _small_plain_jpeg(data, short_side)  # e.g. a generated set's 256-px training copy: link, no re-encode
    data = data if link else resized_jpeg(img, short_side)
    _write_copy(resized_dir / _cached_name(rel), data, path if link else None)
    return {**row, "ok": True, "size": list(img.size), "copy": len(data)}


def scan_images(images: ImageList, cache_dir: str | os.PathLike = "", short_side: int | None = 256,
                on_bad: str = "error", workers: int = 4, progress: bool = True) -> ScanResult:
    """Scans `images` once (resuming an earlier partial scan) and returns the usable ones. `cache_dir` "" is
    $SYNTHTL_CACHE or ~/.cache/synthtl; `short_side` None writes no resized copies (hashes and checks only); `on_bad`
    "error" raises `BadImageError` naming the first unreadable file, "skip" drops it."""
    base = (Path(cache_dir) if cache_dir else default_cache_dir()) / "scans" / _key(images)
    base.mkdir(parents=True, exist_ok=True)
    log = base / "scan.jsonl"
    resized_dir = base / f"s{short_side}" if short_side else None

    def stale(rel: str, done: dict[str, dict]) -> bool:  # no row for the file as it is now, or its copy is not there
        row = done.get(rel)
        if row is None or row.get("sig") != _signature(images.root / rel):
            return True
        if not row["ok"] or resized_dir is None:
            return False
        try:  # a copy a crash left short (rows of old scans have no size)
            size = (resized_dir / _cached_name(rel)).stat().st_size
        except FileNotFoundError:
            return True
        return size != row.get("copy", size)

    unique = list(dict.fromkeys(images.paths))
    done = _read_log(log)
    if any(stale(rel, done) for rel in unique):
        with _writer_lock(base):
            done = _read_log(log)  # another job may have scanned while this one waited
            todo = [rel for rel in unique if stale(rel, done)]
            if todo:
                work = functools.partial(_scan_one, images.root, resized_dir, short_side)
                _scan_todo(todo, work, log, done, images, on_bad, workers, progress)
    keep = [i for i, rel in enumerate(images.paths) if done[rel]["ok"]]
    bad = [(rel, done[rel]["reason"]) for rel in images.paths if not done[rel]["ok"]]
    if bad and on_bad == "error":
        raise BadImageError(printable(images.root / bad[0][0]), bad[0][1])
    if not keep:
        raise DataError(f"{images.name}: none of the {len(images)} images under {printable(images.root)} could be "
                        "read")
    source = images.subset(keep)
    used = source if resized_dir is None else replace(source, root=resized_dir,
                                                      paths=tuple(_cached_name(p) for p in source.paths))
    hashes = tuple(done[images.paths[i]]["sha256"] for i in keep)
    return ScanResult(images=used, hashes=hashes, skipped=tuple(bad), source=source)


def _scan_todo(todo: list[str], work: Callable[[str], dict], log: Path, done: dict[str, dict], images: ImageList,
               on_bad: str, workers: int, progress: bool) -> None:
    """Decodes `todo` on threads, appending rows to the log in batches (the caller holds the writer lock)."""
    bar = tqdm(total=len(todo), desc=f"scan {images.name}", unit="img", disable=not (progress and is_main()))
    batch: list[dict] = []
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        for row in pool.map(work, todo):
            done[row["path"]] = row
            batch.append(row)
            bar.update()
            if len(batch) >= 256 or (not row["ok"] and on_bad == "error"):
                rows, batch = batch, []  # an append that fails is not retried below: its rows are redone next time
                files.append_jsonl(log, rows)
            if not row["ok"] and on_bad == "error":
                raise BadImageError(printable(images.root / row["path"]), row["reason"])
        rows, batch = batch, []
        files.append_jsonl(log, rows)
    finally:
        # On an error (a full disk, an interrupt) stop decoding at once instead of finishing every queued image,
        # and keep the rows finished since the last append; a full disk may refuse them too (the next scan redoes
        # whatever the log lacks).
        pool.shutdown(wait=True, cancel_futures=True)
        if batch:
            with contextlib.suppress(OSError, files.DiskFullError):
                files.append_jsonl(log, batch)
        bar.close()


def find_overlap(train: ScanResult, test: ScanResult) -> list[tuple[str, str]]:
    """(train path, test path) pairs whose file bytes are identical."""
    test_by_hash = dict(zip(test.hashes[::-1], test.source.paths[::-1], strict=True))  # the first path of each hash
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
