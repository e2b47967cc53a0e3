"""The plan of a generated set, written before any image: plan.json (identity, per_class and one small record per
class) from which every image's row derives, plus manifest.jsonl, the same rows one per line for people and tools.

Every image's seed is derived from (base seed, class index, image index), so any row can be regenerated alone and
the first k rows of each class form the k-per-class subset. The plan's identity (generator, prompts, style, seed,
classes) is stored in plan.json; asking for a different identity in the same folder is refused, while asking for
more images per class extends the plan. Nothing here holds one Python object per image: a 397 x 3,000 set is
planned, resumed, counted and finished with numpy arrays of its rows' flags. An img2img set (`img2img`) adds its
sources to the identity and each class's sorted source ids (with their content hashes) to its record: image i of a
class starts from source i mod n, so its rows still derive from (class, index, plan).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthtl.config import GenerateConfig
from synthtl.data.synthetic import (
    COMPLETE,
    EXT,
    LAYOUT,
    MANIFEST,
    PLAN,
    PROGRESS_DIR,
    SetRows,
    SetState,
    completion,
    grid_rows,
    image_seed,
    is_complete,
    plan_hash,
    read_state,
    record,
    row_id,
    safe_folder,
)
from synthtl.errors import ConfigError
from synthtl.files import (
    TEMP_GLOB,
    atomic_open,
    drop_damaged_lines,
    exclusive,
    read_json,
    remove_temps,
    repair_jsonl,
    torn_tail,
    write_json,
)

if TYPE_CHECKING:
    from synthtl.generation.img2img import Sources

__all__ = ["EXT", "LOCKS", "PLAN", "image_seed", "is_complete", "row_id", "shard_of"]  # re-exported names

LOCKS = "locks"  # one lock folder per shard: two writers of one shard never interleave
SET_LOCK_WAIT = 600.0  # seconds a shard waits for another's plan/finalize step (a million-row plan takes ~30 s)
VALIDATE_SIDE = 32  # --validate decodes JPEGs at a reduced DCT scale down to this short side (see `_check_file`)
FORMAT = 1  # of the identity: what the images depend on (the file layout is `synthetic.LAYOUT`)


def shard_of(rid: str, num_shards: int) -> int:
    """Stable assignment of a row to one of N shards (disjoint, and their union is every row)."""
    return int(hashlib.sha1(rid.encode()).hexdigest(), 16) % num_shards


def shard_mask(rows: SetRows, shard: int, num_shards: int) -> np.ndarray:
    """Which planned rows belong to this shard."""
    if num_shards == 1:
        return np.ones(len(rows), dtype=bool)
    return np.fromiter((shard_of(row_id(c, i), num_shards) == shard for c, i in zip(rows.cls.tolist(),
                        rows.idx.tolist(), strict=True)), dtype=bool, count=len(rows))


def class_folders(names: list[str]) -> list[str]:
    """Unique, file-system-safe folder names, also on case-insensitive file systems (prompts keep the real names).

    Names whose safe folders differ only in case ("Cat" and "cat") all get a short hash of the exact name, so the
    folder of a class does not depend on which other classes come first.
    """
    folders = [safe_folder(n) for n in names]
    groups: dict[str, int] = {}
    for f in folders:
        groups[f.lower()] = groups.get(f.lower(), 0) + 1
    out = []
    for n, f in zip(names, folders, strict=True):
        if groups[f.lower()] > 1:
            f = f"{f[:55]}-{hashlib.sha1(n.encode()).hexdigest()[:8]}"
        out.append(f)
    if len({f.lower() for f in out}) != len(out):  # a hash collision between distinct names: never in practice
        raise ConfigError(f"classes {names} give clashing folder names {out}; rename a class")
    return out


def identity(cfg: GenerateConfig, classes: list[tuple[str, str]], generator: dict, dtype: str, templates: list[str],
             style_hash: str, extra: dict | None = None) -> dict:
    """What the set's images depend on; `generator` is `pipeline.generator_identity` (never where files live);
    `extra`: the keys of mode=img2img (`img2img.identity`; a text-to-image identity is unchanged by it)."""
    g, p = cfg.generator, cfg.prompts
    return {**(extra or {}), "format": FORMAT, "model": generator["model"], "revision": generator["revision"],
            "scheduler": g.scheduler, "steps": g.steps,
            "guidance": g.guidance, "height": g.height, "width": g.width, "dtype": dtype, "templates": templates,
            "suffix": p.suffix, "negative": p.negative, "style_hash": style_hash, "seed": cfg.seed,
            "classes": [name for _, name in classes], "image_format": cfg.image_format, "quality": cfg.quality,
            "train_copy": cfg.train_copy}


def class_table(classes: list[tuple[str, str]], prompts: list[list[dict]], tokens: list[str],
                sources: Sources | None = None) -> list[dict]:
    """One record per class: id, name, folder, style token, and the prompt record of each template (image i of the
    class uses template i mod len(templates); `prompts.fit_prompt`); with img2img `sources`, also the class's sorted
    source ids and their content hashes (image i starts from source i mod len(sources))."""
    folders = class_folders([n for _, n in classes])
    table = [{"id": cid, "name": name, "folder": folders[c], "token": tokens[c], "prompts": prompts[c]}
             for c, (cid, name) in enumerate(classes)]
    if sources is not None:
        for k, ids, hashes in zip(table, sources.ids, sources.hashes, strict=True):
            k["sources"], k["source_sha256"] = ids, hashes
    return table


def manifest_lines(rows: SetRows, state: SetState | None = None) -> Iterator[str]:
    """The manifest's lines, class-major: `json.dumps(rows.row(p))` for every p, built from per-class pieces.

    With `state`, finished rows are written as `state.completed_row` (status done, the seed used, redraws).
    """
    g, dump = rows.ident, json.dumps
    ext = EXT[g["image_format"]]
    tail = (f', "model": {dump(g["model"])}, "revision": {dump(g["revision"])}, "scheduler": {dump(g["scheduler"])}, '
            f'"steps": {dump(g["steps"])}, "guidance": {dump(g["guidance"])}, "height": {dump(g["height"])}, '
            f'"width": {dump(g["width"])}, "dtype": {dump(g["dtype"])}, "style_hash": {dump(g["style_hash"])}, ')
    for c, k in enumerate(rows.classes):
        # img2img: image i starts from source i mod n (the same fields, in the same place, as `SetRows.row`)
        sources = [f'"source": {dump(s)}, "strength": {dump(g["strength"])}, ' for s in k.get("sources", [])]
        head = (f'", "class_index": {c}, "class_id": {dump(k["id"])}, "class_name": {dump(k["name"])}, '
                f'"folder": {dump(k["folder"])}, "index": ')
        middles = []
        for pr in k["prompts"]:
            requested = f', "requested_prompt": {dump(pr["requested_prompt"])}' if pr["truncated"] else ""
            middles.append(f', "prompt": {dump(pr["prompt"])}, "truncated": {dump(pr["truncated"])}{requested}, '
                           f'"negative_prompt": {dump(g["negative"])}, "template": {pr["template"]}, '
                           f'"token": {dump(k["token"])}, "seed": ')
        image = f'"path": "images/{k["folder"]}/'
        train = f'"train/{k["folder"]}/' if g["train_copy"] else None
        base = c * rows.per_class
        for i in range(rows.per_class):
            p = base + i
            seed, end = image_seed(g["seed"], c, i), '"status": "planned"}\n'
            if state is not None and state.done[p]:
                used = state.extra.get(p, {})
                seed = used.get("seed", seed)
                end = f'"status": "done", "redraws": {used.get("redraws", 0)}}}\n'
            n = f"{i:06d}"
            copy = f'{train}{n}.jpg"' if train else "null"
            source = sources[i % len(sources)] if sources else ""
            yield (f'{{"id": "c{c:05d}-i{n}{head}{i}{middles[i % len(middles)]}{seed}{tail}{source}{image}{n}.{ext}", '
                   f'"train_path": {copy}, {end}')


def write_manifest(folder: Path, rows: SetRows, state: SetState | None = None) -> None:
    """Writes manifest.jsonl atomically, streaming (memory does not grow with the set)."""
    with atomic_open(folder / MANIFEST, "w") as f:
        chunk: list[str] = []
        for line in manifest_lines(rows, state):
            chunk.append(line)
            if len(chunk) >= 8192:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def check_plan(folder: Path, ident: dict) -> dict | None:
    """The folder's plan (None if it has none); a plan of another identity is refused with the differences."""
    plan_file = folder / PLAN
    if not plan_file.is_file():
        return None
    old = read_json(plan_file)
    diff = sorted(k for k in set(old["identity"]) | set(ident) if old["identity"].get(k) != ident.get(k))
    if diff:
        details = "; ".join(f"{k}: planned {old['identity'].get(k)!r}, now {ident.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"{folder} already holds a generated set planned with different settings ({details}). "
                          "Use another out_dir, or the same settings to resume or extend it")
    return old


def planned_rows(folder: Path, ident: dict, per_class: int) -> SetRows | None:
    """The rows of the folder's plan if it already covers `per_class` images per class (nothing to write), else
    None; a plan of another identity is refused."""
    old = check_plan(folder, ident)
    if old is None or old["per_class"] < per_class or old.get("layout") != LAYOUT:
        return None
    return grid_rows(folder, old)


def write_or_check(folder: Path, ident: dict, classes: list[dict], per_class: int,
                   notes: dict | None = None) -> SetRows:
    """Writes plan.json + manifest.jsonl, or checks an existing plan and extends it to `per_class` if larger.

    Call it holding `set_lock`: the first shard to get it plans, every other one finds the plan and only reads it.
    A set planned by an older version (rows only in its manifest) gets its class table added, rows unchanged.
    `notes`: facts for readers such as the report (e.g. {"style_lora": "class"}), kept in plan.json beside the
    identity but not part of it.
    """
    old = check_plan(folder, ident)
    if old is not None:
        if old["per_class"] >= per_class and old.get("layout") == LAYOUT:
            return grid_rows(folder, old)
        per_class = max(per_class, old["per_class"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROGRESS_DIR).mkdir(exist_ok=True)
    if old is None:
        (folder / COMPLETE).unlink(missing_ok=True)  # a record left by some other set is not this plan's
    plan = {"identity": ident, "per_class": per_class, "rows": per_class * len(classes), "layout": LAYOUT,
            "plan_hash": plan_hash(ident), "classes": classes, **(notes or {})}
    rows = grid_rows(folder, plan)
    if old is None or old["per_class"] < per_class:  # rows are prefix-stable: extending keeps every earlier row
        write_manifest(folder, rows)
    if (folder / COMPLETE).is_file():  # an extension: the finished prefixes stay finished, the set is not complete
        rec = read_json(folder / COMPLETE)
        write_json(folder / COMPLETE, {**rec, "per_class": per_class, "total": len(rows), "complete": False,
                                       "prefix": [min(n, per_class) for n in rec["prefix"]]})
    write_json(folder / PLAN, plan)  # last: a reader sees the old plan or the new one
    return rows


def check_out_dir(folder: Path, what: str = "out_dir") -> None:
    """A path that exists as a file cannot hold a set: one clear line instead of a NotADirectoryError."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what}={str(folder)!r} is an existing file; give a folder (new, or a set to resume)")


@contextlib.contextmanager
def set_lock(folder: Path, wait: float | None = None) -> Iterator[None]:
    """The set's writer lock, held for the short steps that touch shared files (plan, finalize, repair)."""
    with exclusive(folder, "generated set", wait=SET_LOCK_WAIT if wait is None else wait):
        yield


def shard_lock(folder: Path, shard: int, num_shards: int) -> contextlib.AbstractContextManager:
    """The lock of one shard, held for its whole run: a second writer of the same shard fails at once."""
    return exclusive(folder / LOCKS / shard_name(shard, num_shards), f"shard {shard}/{num_shards} of {folder}:",
                     wait=0.0)


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:04d}-of-{num_shards:04d}"


def stats_file(folder: Path, shard: int, num_shards: int) -> Path:
    """This shard's cumulative stats (images, seconds, gpus, redraws): every shard writes its own."""
    return folder / PROGRESS_DIR / f"{shard_name(shard, num_shards)}.summary.json"


def finished_file(folder: Path, shard: int, num_shards: int) -> Path:
    """Written when a shard has written all its rows of a plan of `per_class` images per class."""
    return folder / PROGRESS_DIR / f"{shard_name(shard, num_shards)}.finished.json"


def set_stats(folder: Path) -> dict:
    """The work of every shard that ever ran on the set, added up (a torchrun run is N shards)."""
    total = {"shards": 0, "images": 0, "seconds": 0.0, "gpu_seconds": 0.0, "redraws": 0}
    for f in sorted((folder / PROGRESS_DIR).glob("shard-*.summary.json")):
        d = read_json(f)
        total["shards"] += 1
        total["images"] += d["images"]
        total["seconds"] += d["seconds"]
        total["gpu_seconds"] += d["seconds"] * d.get("gpus", 0)
        total["redraws"] += d.get("redraws", 0)
    return total


def remove_shard_temps(folder: Path, rows: SetRows, mine: np.ndarray, shard: int, num_shards: int) -> int:
    """Deletes the temp files a killed writer of this shard left (`atomic_open`'s `.<name>.<random>.tmp`).

    Only this shard's files are touched (its images, training copies and stats), so shards running beside it
    lose nothing. Call it holding `shard_lock`. Returns how many were removed.
    """
    n = 0
    stats = stats_file(folder, shard, num_shards)
    for tmp in stats.parent.glob(f".{stats.name}.*.tmp") if stats.parent.is_dir() else []:
        tmp.unlink(missing_ok=True)
        n += 1
    for c, k in enumerate(rows.classes):
        for parent in (folder / "images" / k["folder"], folder / "train" / k["folder"]):
            if not parent.is_dir():
                continue
            for tmp in parent.glob(TEMP_GLOB):
                target = tmp.name[1:-len(".tmp")].rsplit(".", 1)[0]  # ".000003.jpg.x1y2.tmp" -> "000003.jpg"
                stem = target.split(".")[0]
                if len(stem) == 6 and stem.isdigit() and int(stem) < rows.per_class and \
                        mine[rows.position(c, int(stem))]:
                    tmp.unlink(missing_ok=True)
                    n += 1
    return n


def status(folder: str | os.PathLike) -> dict:
    """done/total per class and overall for a generated set, and the work of all shards added up."""
    folder = Path(folder)
    state = read_state(folder)
    progress = completion(folder, state=state)
    return {"classes": progress["classes"], "done": progress["done"], "total": progress["total"],
            "redraws": sum(r.get("redraws", 0) for p, r in state.extra.items() if state.done[p]),
            "stats": set_stats(folder)}


def mend(folder: Path) -> dict:
    """Mends what kills, full disks and failing disks leave: torn progress-log lines, damaged lines in the middle of a
    progress log (dropped: their images count as not done, and the next run redraws them) and `atomic_open` temp
    files.

    Holds the set's lock and every shard's lock, so it refuses (LockedError naming the holder) while a generation
    writes the set.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(set_lock(folder, wait=0.0))
        for d in sorted((folder / LOCKS).glob("shard-*")):
            stack.enter_context(exclusive(d, f"{d.name} of {folder}:", wait=0.0))
        torn, damaged = {}, {}
        for log in sorted((folder / PROGRESS_DIR).glob("shard-*.jsonl")):
            if torn_tail(log):
                torn[log.name] = repair_jsonl(log)
            lines = drop_damaged_lines(log)
            if lines:
                damaged[log.name] = lines
        if damaged:  # the dropped rows' images are no longer logged as done: the set is not complete any more
            (folder / COMPLETE).unlink(missing_ok=True)
        temps = remove_temps(folder, recursive=True)
    return {"torn": torn, "damaged": damaged, "temps": temps}


def _check_file(path: Path) -> str:
    """"" if the image decodes, "missing" or "corrupt" otherwise."""
    from synthtl.data.images import load_rgb
    from synthtl.errors import BadImageError

    try:
        # A JPEG decoded at 1/8 scale still reads every byte of its entropy-coded data (a truncated or damaged
        # file fails the same way) but skips the full-size inverse DCT: several times faster.
        load_rgb(path, min_short_side=VALIDATE_SIDE)
    except BadImageError as e:
        return "missing" if e.reason == "file not found" else "corrupt"
    return ""


def validate(folder: str | os.PathLike, repair: bool = False, workers: int = 0) -> dict:
    """Decodes every finished image (and its training copy) on all cores; lists missing or corrupt ones.

    With `repair`, torn log lines and leftover temp files are removed first (`mend`), and corrupt files are
    deleted so that the next `synthtl generate` run redraws them (the set's completion record goes with them).

    Args:
        folder: The generated set.
        repair: Mend and delete, as above.
        workers: Decoding threads (0 = one per core; decoding releases the GIL).
    """
    folder = Path(folder)
    mended = mend(folder) if repair else {"torn": {}, "damaged": {}, "temps": 0}
    state = read_state(folder)
    rows = state.rows
    logged = np.flatnonzero(state.logged)
    rels = [rel for p in logged.tolist() for rel in (rows.rel_path(p), rows.rel_path(p, "train_path")) if rel]
    missing, corrupt = [], []
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for rel, verdict in zip(rels, pool.map(_check_file, (folder / r for r in rels), chunksize=64), strict=True):
            if verdict == "missing":
                missing.append(rel)
            elif verdict == "corrupt":
                corrupt.append(rel)
                if repair:
                    (folder / rel).unlink()
    if repair and (missing or corrupt):
        (folder / COMPLETE).unlink(missing_ok=True)  # no longer complete: the next run redraws them, then records
    return {"checked": len(logged), "missing": missing, "corrupt": corrupt, "repaired": repair and bool(corrupt),
            **mended}


def finalize(folder: Path, rows: SetRows, shard: int, num_shards: int, per_class: int) -> bool:
    """Records that this shard wrote all its rows among the first `per_class` of each class; the last of the N
    shards to do so checks the whole set once and writes its completion record (complete.json: the finished prefix
    of each class) and, when every planned row is finished, the manifest with status done and the seeds actually
    used. Returns whether the whole plan is finished.

    Call it holding `set_lock`.
    """
    remove_temps(folder)  # a killed plan or finalize write's temp file (those files are written under this lock only)
    write_json(finished_file(folder, shard, num_shards), {"per_class": per_class})
    if not all(finished_file(folder, s, num_shards).is_file() for s in range(num_shards)):
        return False  # another shard is still writing: it finalizes when it ends
    state = read_state(folder)
    rec = record(state)
    if rec["complete"]:
        write_manifest(folder, rows, state)
    write_json(folder / COMPLETE, rec)
    return rec["complete"]
