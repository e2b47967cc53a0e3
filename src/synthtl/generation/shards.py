"""Shards of a generated set (files: `data.genset`): locks, row assignment, completion, `generate --status/--validate`.
One writer per shard (a lock); steps touching shared files run under the set's lock; a rerun removes temp files."""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from synthtl.data import genset
from synthtl.data.genset import COMPLETE, PROGRESS_DIR, SetRows, read_state, shard_name, write_manifest
from synthtl.errors import BadImageError
from synthtl.files import TEMP_GLOB, drop_damaged_lines, exclusive, remove_temps, repair_jsonl, write_json

LOCKS = "locks"  # one lock folder per shard: two writers of one shard never interleave
SET_LOCK_WAIT = 600.0  # seconds a shard waits for another's plan/finalize step (a million-row plan takes ~30 s)
VALIDATE_SIDE = 32  # --validate decodes JPEGs at a reduced DCT scale down to this short side (see `_check_file`)
VALIDATE_CHUNK = 4096  # images checked per batch of thread-pool tasks


def shard_of(rid: str, num_shards: int) -> int:
    """Stable assignment of a row to one of N shards (disjoint, and their union is every row)."""
    return int(hashlib.sha1(rid.encode()).hexdigest(), 16) % num_shards


def shard_mask(rows: SetRows, shard: int, num_shards: int) -> np.ndarray:
    if num_shards == 1:
        return np.ones(len(rows), dtype=bool)
    return np.fromiter((shard_of(genset.row_id(c, i), num_shards) == shard for c, i in zip(rows.cls.tolist(),
                        rows.idx.tolist(), strict=True)), dtype=bool, count=len(rows))


def set_lock(folder: Path, wait: float | None = None) -> contextlib.AbstractContextManager:
    """The set's writer lock, held for the short steps that touch shared files (plan, finalize, repair)."""
    return exclusive(folder, "generated set", wait=SET_LOCK_WAIT if wait is None else wait)


def shard_lock(folder: Path, shard: int, num_shards: int) -> contextlib.AbstractContextManager:
    """The lock of one shard, held for its whole run: a second writer of the same shard fails at once."""
    return exclusive(folder / LOCKS / shard_name(shard, num_shards), f"shard {shard}/{num_shards} of {folder}:")


def finished_file(folder: Path, shard: int, num_shards: int) -> Path:
    """Written when a shard has written all its rows of a plan of `per_class` images per class."""
    return folder / PROGRESS_DIR / f"{shard_name(shard, num_shards)}.finished.json"


def remove_shard_temps(folder: Path, rows: SetRows, mine: np.ndarray) -> int:
    """Deletes this shard's temp files from a kill (only its own: shards beside it lose nothing); hold `shard_lock`."""
    temps = []
    for c, k in enumerate(rows.classes):
        for parent in (folder / "images" / k["folder"], folder / "train" / k["folder"]):
            for tmp in parent.glob(TEMP_GLOB) if parent.is_dir() else []:
                stem = tmp.name[1:].split(".")[0]  # ".000003.jpg.x1y2.tmp" -> "000003"
                if len(stem) == 6 and stem.isdigit() and int(stem) < rows.per_class and \
                        mine[rows.position(c, int(stem))]:
                    temps.append(tmp)
    for tmp in temps:
        tmp.unlink(missing_ok=True)
    return len(temps)


def status(folder: str | os.PathLike) -> dict:
    """done/total per class and overall for a generated set, and the work of all shards added up."""
    state = read_state(Path(folder))
    progress = genset.completion(state)
    return {"classes": progress["classes"], "done": progress["done"], "total": progress["total"],
            "redraws": sum(r["redraws"] for p, r in state.redrawn.items() if state.done[p]),
            "stats": genset.set_stats(Path(folder))}


def mend(folder: Path) -> dict:
    """Mends what kills and full or failing disks leave: torn or damaged progress-log lines (dropped: the next run
    redraws their images) and temp files. Takes the set's and every shard's lock: LockedError while a run writes."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(set_lock(folder, wait=0.0))
        for d in sorted((folder / LOCKS).glob("shard-*")):
            stack.enter_context(exclusive(d, f"{d.name} of {folder}:", wait=0.0))
        torn, damaged = {}, {}
        for log in sorted((folder / PROGRESS_DIR).glob("shard-*.jsonl")):
            if cut := repair_jsonl(log):
                torn[log.name] = cut
            if lines := drop_damaged_lines(log):
                damaged[log.name] = lines
        if damaged:  # the dropped rows' images are no longer logged as done: the set is not complete any more
            (folder / COMPLETE).unlink(missing_ok=True)
        temps = remove_temps(folder, recursive=True)
    return {"torn": torn, "damaged": damaged, "temps": temps}


def _check_file(path: Path) -> str:
    """"" if the image decodes, "missing" or "corrupt" otherwise."""
    from synthtl.data.images import load_rgb

    try:
        # A JPEG at 1/8 scale still reads all its entropy-coded data (damage fails alike) but skips the full IDCT.
        load_rgb(path, min_short_side=VALIDATE_SIDE)
    except BadImageError as e:
        return "missing" if e.reason == "file not found" else "corrupt"
    return ""


def validate(folder: str | os.PathLike, repair: bool = False, workers: int = 0) -> dict:
    """Decodes every finished image and training copy (`workers` threads, 0: one per core); lists missing or corrupt
    ones. `repair`: `mend` first, then delete corrupt files (and the completion record) so the next run redraws them."""
    folder = Path(folder)
    mended = mend(folder) if repair else {"torn": {}, "damaged": {}, "temps": 0}
    state = read_state(folder)
    logged, found = np.flatnonzero(state.logged), {"missing": [], "corrupt": []}
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(logged), VALIDATE_CHUNK):  # a chunk's futures at a time: memory stays flat
            rels = [rel for p in logged[start:start + VALIDATE_CHUNK].tolist()
                    for rel in (state.rows.rel_path(p), state.rows.rel_path(p, "train_path")) if rel]
            for rel, verdict in zip(rels, pool.map(_check_file, (folder / r for r in rels)), strict=True):
                if verdict:
                    found[verdict].append(rel)
    missing, corrupt = found["missing"], found["corrupt"]
    if repair:
        for rel in corrupt:
            (folder / rel).unlink()
        if missing or corrupt:
            (folder / COMPLETE).unlink(missing_ok=True)  # no longer complete: the next run redraws them, then records
    return {"checked": len(logged), "missing": missing, "corrupt": corrupt, "repaired": repair and bool(corrupt),
            **mended}


def finalize(folder: Path, rows: SetRows, shard: int, num_shards: int, per_class: int) -> bool:
    """Records that this shard wrote its rows among the first `per_class` of each class; the last of the N shards
    checks the set once and writes complete.json (each class's finished prefix) and, when every planned row is done,
    the manifest (status done, seeds used). Returns whether the plan is finished. Call it holding `set_lock`."""
    remove_temps(folder)  # a killed plan or finalize write's temp file (those files are written under this lock only)
    write_json(finished_file(folder, shard, num_shards), {"per_class": per_class})
    if not all(finished_file(folder, s, num_shards).is_file() for s in range(num_shards)):
        return False  # another shard is still writing: it finalizes when it ends
    state = read_state(folder)
    rec = genset.completion_record(state)
    if rec["complete"]:
        write_manifest(folder, rows, state)
    write_json(folder / COMPLETE, rec)
    return rec["complete"]
