"""Atomic file writes, JSON/JSONL helpers, hashing and provenance."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from synthtl import faults
from synthtl.errors import SynthTLError

_UMASK = os.umask(0)  # os.umask is the only way to read it: set, then put it back
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give: mkstemp's 0600 would hide results from collaborators


class DiskFullError(SynthTLError):
    """No space left on the device: nothing half-written was kept."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", fsync: bool = True) -> Iterator[Any]:
    """Writes a temp file in the same folder, then `os.replace`s it over `path`: a kill leaves the old or the new file;
    a full disk raises `DiskFullError`. `fsync=False` (files rebuilt each run) skips the flush (still atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _FILE_MODE)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            faults.point("write", path=path)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device while writing {path}; free space and re-run "
                                "(finished work is kept, the unfinished file was discarded)") from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


class CorruptFileError(SynthTLError):
    """A file of ours is damaged somewhere other than a torn last line."""


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Streams a JSONL file's rows; a torn last line is ignored, other damage is a `CorruptFileError` (file, line)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return  # torn tail: the append never finished
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CorruptFileError(f"{path}, line {n}: not a JSON row (the file is damaged); restore it, delete "
                                       "the line, or delete the file to rebuild it") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a JSONL file (see `iter_jsonl`: a torn last line is ignored, other damage is an error)."""
    return list(iter_jsonl(path))


def torn_tail(path: str | os.PathLike) -> int:
    """How many bytes at the end of `path` follow its last newline (0 for a missing or intact file)."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:  # backwards, 64 KiB at a time
            start = max(0, end - (1 << 16))
            f.seek(start)
            if (cut := f.read(end - start).rfind(b"\n")) >= 0:
                return size - start - cut - 1
            end = start
    return size


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cuts a torn last line off an append-only JSONL file; returns the bytes removed (0 if it was intact)."""
    n = torn_tail(path)
    if n:
        os.truncate(path, os.path.getsize(path) - n)
    return n


def drop_damaged_lines(path: str | os.PathLike) -> list[int]:
    """Atomically rewrites an append-only JSONL file without its damaged lines (not JSON rows) and torn last line;
    returns the dropped line numbers ([] and no rewrite when every line is a row)."""
    bad: list[int] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # a torn tail: cut below with the rest
            try:
                json.loads(raw) if raw.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad.append(n)
    if not bad:
        repair_jsonl(path)
        return []
    with open(path, "rb") as src, atomic_open(path, "wb") as dst:
        for n, raw in enumerate(src, start=1):
            if raw.endswith(b"\n") and n not in bad:
                dst.write(raw)
    return bad


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict], fsync: bool = True) -> None:
    """Appends complete rows, then fsyncs. A torn last line from an earlier kill is cut first; a failed append (e.g.
    a full disk) is cut back, so the file never ends mid-row."""
    data = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows).encode()
    repair_jsonl(path)
    start = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, start)
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device while appending to {path}; free space and re-run "
                                "(the log was cut back to its last complete row)") from e
        raise


TEMP_GLOB = ".*.tmp"  # what `atomic_open` leaves behind when its process is killed mid-write


def remove_temps(folder: str | os.PathLike, recursive: bool = False, min_age_s: float = 0.0) -> int:
    """Deletes (and counts) the temp files a kill left in `folder`. Call it under the folder's lock; without one,
    `min_age_s` spares younger files (a live writer's exists for milliseconds)."""
    folder = Path(folder)
    found = folder.rglob(TEMP_GLOB) if recursive else folder.glob(TEMP_GLOB)
    n, now = 0, time.time()
    for p in found:
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile: its writer finished
            if p.is_file() and not (min_age_s and now - p.stat().st_mtime < min_age_s):
                p.unlink(missing_ok=True)
                n += 1
    return n


class LockedError(SynthTLError):
    """Another process is writing the same place."""


LOCK_NAME = ".synthtl.lock"


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str, wait: float = 0.0) -> Iterator[None]:
    """Holds `folder`'s writer lock (an OS file lock: a killed holder releases it); a second writer waits `wait` s, then
    fails with the holder's host, pid and command (written beside the lock)."""
    import socket
    import sys

    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(f"{what} {folder} is being written by {lock_holder(folder)}; wait for it to finish or stop "
                          "it, then re-run (two writers never share a folder)") from None
    try:
        with contextlib.suppress(OSError):
            _holder_file(folder).write_text(f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])})\n")
        yield
    finally:
        lock.release()


def _holder_file(folder: Path) -> Path:
    return folder / f"{LOCK_NAME}.holder"


def lock_holder(folder: str | os.PathLike) -> str:
    """Who holds `folder`'s writer lock, as its holder wrote it (pid, host, command), or "another process"."""
    try:
        return _holder_file(Path(folder)).read_text().strip() or "another process"
    except OSError:
        return "another process"


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cache_home() -> Path:
    """synthtl's cache folder: $SYNTHTL_CACHE, else ~/.cache/synthtl."""
    return Path(os.environ.get("SYNTHTL_CACHE") or Path.home() / ".cache" / "synthtl")


_DIGESTS: dict[str, str] = {}  # the digests this process has computed or read
MEMO_MIN_BYTES = 1 << 24  # smaller files are re-hashed once per process: cheaper than reading and rewriting the memo


def content_sha256(path: str | os.PathLike, algo: str = "sha256") -> str:
    """A file's digest, cached by (absolute path, size, mtime_ns, inode) in this process and, for files of at least
    `MEMO_MIN_BYTES`, in `cache_home()/file-digests.json`: a 4 GB checkpoint is read once, an in-place change is never
    missed, a broken cache only costs a re-hash, and the memo (rewritten whole) keeps a row per large file only."""
    p = Path(path)
    st = p.stat()
    key = f"{algo}|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if key in _DIGESTS:
        return _DIGESTS[key]
    if st.st_size < MEMO_MIN_BYTES:
        _DIGESTS[key] = sha256_file(p, algo=algo)
        return _DIGESTS[key]
    memo_file = cache_home() / "file-digests.json"
    memo = {}
    with contextlib.suppress(OSError, ValueError):
        memo = read_json(memo_file)
    if key not in memo:
        memo[key] = sha256_file(p, algo=algo)
        with contextlib.suppress(OSError, SynthTLError):
            write_json(memo_file, memo)
    _DIGESTS[key] = memo[key]
    return memo[key]


class UnsafeFileError(SynthTLError):
    """A PyTorch file that is damaged, or holds more than tensors and plain data (loading it could run code)."""


def load_torch(path: str | os.PathLike, what: str, fix: str) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain data, never code. A damaged or unsafe file is one
    `UnsafeFileError` naming the file, `what` it should be and the `fix` (PyTorch's reason: its cause, `--verbose`)."""
    import pickle

    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # UnpicklingError (unsafe or not a pickle), RuntimeError (a damaged zip), EOFError, ...
        unsafe = isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e)
        why = ("holds objects other than tensors and plain data, and synthtl never loads what could run code"
               if unsafe else f"is damaged or not a PyTorch file ({type(e).__name__})")
        raise UnsafeFileError(f"{path} is not a {what}: it {why}; {fix} (--verbose shows PyTorch's reason)") from e


def git_sha(here: Path | None = None) -> str:
    """synthtl's git commit, "-dirty" with changes, "unknown" outside git. `--no-optional-locks`: a run never writes
    into the code's folder, not even `.git/index.lock`."""
    here = here or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
