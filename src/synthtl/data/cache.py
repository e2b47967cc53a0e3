"""First-use scan of an image list: content hashes, bad-image detection and a pre-resized JPEG copy.

The scan decodes every image once, records the SHA-256 of its bytes (for the train/test overlap check) and,
when asked, writes a copy whose short side is `short_side` as JPEG q95 (an RGB JPEG already that small, such as a
generated set's training copy, is hard-linked instead of re-encoded). One cache per image folder: every list drawn
from a folder (each volume of a generated set, each few-shot draw) shares its rows and copies, which are per file.
Training then reads the small copies, which is what makes the data loader keep up with the GPU. Scans are
resumable (an append-only log) and invalidated per file when a source file's size or mtime changes.

One writer per dataset: the scan holds the cache folder's lock (`synthtl.files.exclusive`) while it decodes and
appends, so parallel jobs of a study that share a dataset never both write. A job that finds the cache being built
prints a line naming the builder and waits for it (up to `SCAN_LOCK_WAIT_S`), then reuses what it built. Jobs that
find the scan complete take no lock at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb, printable
from synthtl.errors import BadImageError, DataError
from synthtl.files import (
    LOCK_NAME,
    CorruptFileError,
    DiskFullError,
    LockedError,
    append_jsonl,
    cache_home,
    exclusive,
    iter_jsonl,
    remove_temps,
    sha256_bytes,
    write_bytes,
)
from synthtl.runtime import is_main

CACHE_FORMAT = 2  # 2: hashed copy names, EXIF orientation applied; a new format never reuses an old scan
SCAN_LOCK_WAIT_S = 2 * 3600  # how long a job waits for another job building the same cache: a scan of ~100k
# images takes minutes (an hour on a slow network disk); a dead builder releases the lock at once, so only a hung
# one makes the wait run out, and then the error names it.


def default_cache_dir() -> Path:
    return cache_home()


@dataclass(frozen=True)
class ScanResult:
    """The usable images (pointing at the resized copies when cached), their content hashes, the skipped files."""

    images: ImageList
    hashes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason)
    source: ImageList  # the same usable images at their original location


def _fs_bytes(name: str) -> bytes:
    """A path as the bytes the file system holds: names that are not UTF-8 arrive as lone surrogates."""
    return name.encode("utf-8", "surrogateescape")


def _key(images: ImageList) -> str:
    """One cache per folder of images, not per list: every subset of a folder (each `synthetic.per_class` of a volume
    study, each few-shot draw) shares one scan log and one copy of each file (rows and copies are per file)."""
    h = hashlib.sha1(f"format {CACHE_FORMAT}\n".encode())
    h.update(os.fsencode(images.root.resolve()))
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


def _link_or_copy(src: Path, data: bytes, dst: Path) -> None:
    """`dst` as a hard link to `src` (no bytes copied), else a copy of `data`; atomic either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.link{os.getpid()}.tmp"  # `remove_temps` clears it if a kill leaves it
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        write_bytes(dst, data)


def _cached_name(rel: str) -> str:
    """The resized copy's name: a hash of the source path, so that any legal source name (non-UTF-8 bytes, 255 bytes
    long) gives a short legal one; two-letter sub-folders keep folders small."""
    h = hashlib.sha1(_fs_bytes(rel)).hexdigest()
    return f"{h[:2]}/{h}.jpg"


def _line_number(path: Path, row: int) -> int:
    """The line of the `row`-th (0-based) row of a JSONL file (`iter_jsonl` skips blank lines)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                if row == 0:
                    return n
                row -= 1
    return 0


def _read_log(log: Path) -> dict[str, dict]:
    """path -> latest row of a scan log. A torn last line is ignored; any other damage names the file and line."""
    done: dict[str, dict] = {}
    if not log.is_file():
        return done
    for i, row in enumerate(iter_jsonl(log)):
        if not (isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("ok"), bool)
                and isinstance(row.get("sha256"), str) and isinstance(row.get("reason", ""), str)):
            raise CorruptFileError(f"{log}, line {_line_number(log, i)}: not a scan row (the file is damaged); delete "
                                   "the file to rescan the dataset")
        done[row["path"]] = row
    return done


@contextlib.contextmanager
def _writer_lock(base: Path) -> Iterator[None]:
    """Holds the cache folder's writer lock; says whom it waits for when another job holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(base, "data cache", wait=0))
        except LockedError:
            if is_main():
                try:
                    holder = (base / f"{LOCK_NAME}.holder").read_text().strip() or "another process"
                except OSError:
                    holder = "another process"
                print(f"[synthtl] data cache {base} is being built by {holder}; waiting for it to finish "
                      f"(up to {SCAN_LOCK_WAIT_S // 3600} h)", flush=True)
            stack.enter_context(exclusive(base, "data cache", wait=SCAN_LOCK_WAIT_S))
        remove_temps(base, recursive=True)  # copies a killed scan left half-written; no live writer now
        yield


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

    def stat_sig(rel: str) -> list[int] | None:
        try:
            st = (images.root / rel).stat()
            return [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            return None

    def fresh(rel: str, done: dict[str, dict]) -> bool:
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
        except OSError as e:  # e.g. permission denied: skippable like an unreadable image, never a traceback
            return {"path": rel, "sig": sig, "ok": False, "reason": f"cannot be read ({e.strerror})", "sha256": ""}
        digest = sha256_bytes(data)
        try:
            img = load_rgb(path, data, min_short_side=short_side or 0)
        except BadImageError as e:
            return {"path": rel, "sig": sig, "ok": False, "reason": e.reason, "sha256": digest}
        if resized_dir is not None:
            if _small_plain_jpeg(data, short_side):  # e.g. a generated set's 256-px training copy: link, no re-encode
                _link_or_copy(path, data, resized_dir / _cached_name(rel))
            else:
                write_bytes(resized_dir / _cached_name(rel), resized_jpeg(img, short_side))
        return {"path": rel, "sig": sig, "ok": True, "reason": "", "sha256": digest, "size": list(img.size)}

    unique = list(dict.fromkeys(images.paths))
    done = _read_log(log)
    if any(not fresh(rel, done) for rel in unique):
        with _writer_lock(base):
            done = _read_log(log)  # another job may have scanned while this one waited
            todo = [rel for rel in unique if not fresh(rel, done)]
            if todo:
                _scan_todo(todo, work, log, done, images, on_bad, workers, progress)
    keep, skipped = [], []
    for i, rel in enumerate(images.paths):
        row = done[rel]
        if row["ok"]:
            keep.append(i)
        elif on_bad == "error":
            raise BadImageError(printable(images.root / rel), row["reason"])
        else:
            skipped.append((rel, row["reason"]))
    if not keep:
        raise DataError(f"{images.name}: none of the {len(images)} images under {printable(images.root)} could be "
                        "read")
    source = images.subset(keep)
    used = source
    if resized_dir is not None:
        used = replace(source, root=resized_dir, paths=tuple(_cached_name(p) for p in source.paths))
    hashes = tuple(done[images.paths[i]]["sha256"] for i in keep)
    return ScanResult(images=used, hashes=hashes, skipped=tuple(skipped), source=source)


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
                append_jsonl(log, rows)
            if not row["ok"] and on_bad == "error":
                raise BadImageError(printable(images.root / row["path"]), row["reason"])
        rows, batch = batch, []
        append_jsonl(log, rows)
    finally:
        # On an error (a full disk, an interrupt) stop decoding at once instead of finishing every queued image,
        # and keep the rows finished since the last append; a full disk may refuse them too (the next scan redoes
        # whatever the log lacks).
        pool.shutdown(wait=True, cancel_futures=True)
        if batch:
            with contextlib.suppress(OSError, DiskFullError):
                append_jsonl(log, batch)
        bar.close()


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
