"""The on-disk format of a generated set: the one module that reads and writes it.

    <set>/
      identity.json          what the set is (`synthtl.identity`: its generate config, by declared identity)
      plan.json              per_class, the settings its images were made with, one record per class (folder, token,
                             prompts, img2img sources); every row derives from it and (class index, image index)
      manifest.jsonl         one row per planned image for people and tools, written by `SetRows.row` (never read)
      progress/shard-i-of-N.jsonl   append-only: {"id", "seed", "redraws"} of every image written (file first)
      progress/cost-shard-i-of-N.jsonl   append-only: that shard's work per batch; shard-i-of-N.finished.json when
                                         it wrote all its rows
      complete.json          the completion record (finished prefix per class), written by the last shard to finish
      images/<class folder>/000000.jpg, train/<class folder>/000000.jpg (the training copy)

An image is finished when a progress log says so and its file exists. Nothing here holds one Python object per
image: a 397 x 3,000 set is planned, counted and finished with numpy arrays of its rows' flags.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthtl.errors import ConfigError, DataError
from synthtl.files import CorruptFileError, atomic_open, iter_jsonl, read_json, write_json
from synthtl.identity import refusal

MANIFEST = "manifest.jsonl"
PROGRESS_DIR = "progress"
PLAN = "plan.json"
COMPLETE = "complete.json"
LAYOUT = 3  # of plan.json; a set in another layout is refused (re-run generate in a new out_dir)
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def safe_folder(name: str, max_len: int = 64) -> str:
    """A folder name safe on every file system for a class name (slashes, '..', unicode, very long); a changed name
    gets a short hash of the original appended, so two different names never collide."""
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_).strip("._") or "class"
    if safe != name or len(safe) > max_len:
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]  # non-UTF-8 folder names too
        safe = f"{safe[: max_len - 9]}-{digest}"
    return safe


def class_folders(names: list[str]) -> list[str]:
    """Unique, file-system-safe folder names, also on case-insensitive file systems (prompts keep the real names):
    names whose safe folders differ only in case ("Cat", "cat") all get a short hash of the exact name, so the folder
    of a class does not depend on which other classes come first."""
    folders = [safe_folder(n) for n in names]
    groups = Counter(f.lower() for f in folders)
    out = [f"{f[:55]}-{hashlib.sha1(n.encode()).hexdigest()[:8]}" if groups[f.lower()] > 1 else f
           for n, f in zip(names, folders, strict=True)]
    if len({f.lower() for f in out}) != len(out):  # a hash collision between distinct names: never in practice
        raise ConfigError(f"classes {names} give clashing folder names {out}; rename a class")
    return out


def image_seed(base: int, class_index: int, index: int, redraw: int = 0) -> int:
    """The seed of one image (a 63-bit integer); redraws get fresh seeds from the same row."""
    from synthtl.runtime import derive_seed  # here: reading a set needs no torch

    return derive_seed(base, "image", class_index, index, *(("redraw", redraw) if redraw else ()))


def row_id(class_index: int, index: int) -> str:
    return f"c{class_index:05d}-i{index:06d}"


def plan_hash(settings: dict) -> str:
    """A short hash of the settings a set's images were made with."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SetRows:
    """The planned rows of a generated set: row p is image p % per_class of class p // per_class (class-major).
    Every field of a row derives from (class index, image index) and plan.json, so no row is held in memory."""

    folder: Path
    settings: dict  # what the images were made with (plan.json "settings")
    per_class: int
    classes: list[dict]  # per class: id, name, folder, token, prompts (one `fit_prompt` record per template)

    def __len__(self) -> int:
        return self.per_class * len(self.classes)

    @functools.cached_property
    def cls(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.classes), dtype=np.int32), self.per_class)

    @functools.cached_property
    def idx(self) -> np.ndarray:
        return np.tile(np.arange(self.per_class, dtype=np.int32), len(self.classes))

    def position(self, c: int, i: int) -> int:
        return c * self.per_class + i

    def rel_path(self, p: int, key: str = "path") -> str | None:
        """The image (`path`) or training copy (`train_path`) of row p, relative to the set."""
        c, i = divmod(p, self.per_class)
        return self.rel_paths(c, (i,), key)[0]

    def rel_paths(self, c: int, indices: Iterable[int], key: str = "path") -> list[str | None]:
        """`rel_path` of images `indices` of class c: a million paths in about a second."""
        folder = self.classes[c]["folder"]
        if key == "path":
            head, tail = f"images/{folder}/", f".{EXT[self.settings['image_format']]}"
        elif self.settings["train_copy"]:
            head, tail = f"train/{folder}/", ".jpg"
        else:
            return [None for _ in indices]
        return [f"{head}{i:06d}{tail}" for i in indices]

    def row(self, p: int) -> dict:
        """The planned manifest row at position p: what manifest.jsonl holds, in its key order."""
        c, i = divmod(p, self.per_class)
        k, g = self.classes[c], self.settings
        pr = k["prompts"][i % len(k["prompts"])]
        sources = k.get("sources")
        return {"id": row_id(c, i), "class_index": c, "class_id": k["id"], "class_name": k["name"],
                "folder": k["folder"], "index": i, "prompt": pr["prompt"], "truncated": pr["truncated"],
                **({"requested_prompt": pr["requested_prompt"]} if pr["truncated"] else {}),
                "negative_prompt": g["negative"], "template": pr["template"], "token": k["token"],
                "seed": image_seed(g["seed"], c, i), "model": g["model"], "revision": g["revision"],
                "scheduler": g["scheduler"], "steps": g["steps"], "guidance": g["guidance"], "height": g["height"],
                "width": g["width"], "dtype": g["dtype"], "style_hash": g["style_hash"],
                **({"source": sources[i % len(sources)], "strength": g["strength"]} if sources else {}),
                "path": self.rel_path(p), "train_path": self.rel_path(p, "train_path"), "status": "planned"}


def rows_of(folder: Path, plan: dict) -> SetRows:
    return SetRows(folder, plan["settings"], plan["per_class"], plan["classes"])


def read_plan(folder: str | os.PathLike) -> dict:
    """plan.json of a generated set; a folder that is not one, or is one in another layout, is refused."""
    folder = Path(folder)
    if not (folder / PLAN).is_file():
        raise DataError(f"{folder} has no {PLAN}: not a generated set (point at the out_dir of `synthtl generate`)")
    plan = read_json(folder / PLAN)
    if plan.get("layout") != LAYOUT:
        raise DataError(f"{folder} was written by another version of synthtl (plan layout {plan.get('layout')}, this "
                        f"one reads {LAYOUT}); generate the set again into a new out_dir")
    return plan


def read_rows(folder: str | os.PathLike) -> SetRows:
    return rows_of(Path(folder), read_plan(folder))


# ------------------------------------------------------------------------------------------------- finished images
# One progress-log line as `append_jsonl` writes it; lines of any other shape take the JSON path below.
_LOG_LINE = re.compile(rb'\{"id": "c(\d{5})-i(\d{6})", "seed": (\d{1,19}), "redraws": (\d{1,9})\}\n')
_CHUNK = 1 << 24  # bytes of a log parsed at a time: bounds memory whatever the log's size


def read_logged(rows: SetRows) -> tuple[np.ndarray, dict[int, dict]]:
    """Which planned rows some shard logged as written (files are written before logging), and the log rows of
    redrawn images (their seed and redraw count). A torn last line (a killed appender, a full disk) is not a finished
    image; other damage is a CorruptFileError naming the file and line."""
    logged = np.zeros(len(rows), dtype=bool)
    redrawn: dict[int, dict] = {}
    for log in sorted((rows.folder / PROGRESS_DIR).glob("shard-*.jsonl")):
        line, rest = 0, b""
        with open(log, "rb") as f:
            while chunk := f.read(_CHUNK):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]  # what follows the last newline waits for the next chunk
                _parse_log(data, log, line, rows, logged, redrawn)
                line += data.count(b"\n")
    return logged, redrawn


def _parse_log(data: bytes, log: Path, line: int, rows: SetRows, logged: np.ndarray, redrawn: dict) -> None:
    """Marks the rows of whole log lines `data` (starting after line `line`) as logged."""
    found = _LOG_LINE.findall(data)
    if len(found) != data.count(b"\n"):  # a line of another shape: find the damaged one, by number
        for n, raw in enumerate(data.splitlines(), start=line + 1):
            if raw.strip() and not _LOG_LINE.fullmatch(raw + b"\n"):
                raise CorruptFileError(f"{log}, line {n}: not a progress row (the file is damaged); run synthtl "
                                       f"generate --validate {log.parent.parent} --repair to drop the line (its image "
                                       "is redrawn by the next run), or restore the file")
    c, i = _digits(b"".join([f[0] for f in found]), 5), _digits(b"".join([f[1] for f in found]), 6)
    ok = (c < len(rows.classes)) & (i < rows.per_class)  # ids outside the plan are not ours
    pos = c * rows.per_class + i
    logged[pos[ok]] = True
    for p in set(redrawn).intersection(pos[ok].tolist()):  # a later log row of the same image wins
        del redrawn[p]
    for k, (_, _, seed, redraws) in enumerate(found):  # the seeds of redrawn images only
        if redraws != b"0" and ok[k] and int(redraws):
            redrawn[int(pos[k])] = {"seed": int(seed), "redraws": int(redraws)}


def _digits(text: bytes, width: int) -> np.ndarray:
    """The numbers written in `text`, `width` ASCII digits each, with no separator (what a regex found)."""
    d = np.frombuffer(text, dtype=np.uint8).reshape(-1, width).astype(np.int64) - ord("0")
    return d @ 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)


def present(rows: SetRows) -> np.ndarray:
    """Whether each planned row's image file exists: one directory listing per class, not one stat per image."""
    out = np.zeros(len(rows), dtype=bool)
    # An image's whole name among the listing's names joined by NUL (which no file name holds); temp files
    # (".000001.jpg.x1y2.tmp") and strays have other shapes.
    name = re.compile(rf"(?<![^\0])([0-9]{{6}}){re.escape('.' + EXT[rows.settings['image_format']])}(?![^\0])")
    for c, k in enumerate(rows.classes):
        try:
            found = name.findall("\0".join(os.listdir(rows.folder / "images" / k["folder"])))
        except FileNotFoundError:
            continue
        i = _digits("".join(found).encode("ascii"), 6)
        out[c * rows.per_class + i[i < rows.per_class]] = True
    return out


@dataclass(frozen=True)
class SetState:
    """A set's rows and which are finished (logged as written, and the file exists): the one test of "finished"."""

    rows: SetRows
    done: np.ndarray
    logged: np.ndarray  # logged as written, file present or not
    redrawn: dict[int, dict]  # position -> {"seed", "redraws"} of the images drawn again

    def completed_row(self, p: int) -> dict:
        """Row p as finished: the seed actually used (after any redraw), its redraw count, status done."""
        return {**self.rows.row(p), "redraws": 0, **self.redrawn.get(p, {}), "status": "done"}


def read_state(folder: str | os.PathLike) -> SetState:
    """Reads a set's plan, progress logs and image listings once (see `SetState`)."""
    rows = read_rows(folder)
    logged, redrawn = read_logged(rows)
    return SetState(rows=rows, done=logged & present(rows), logged=logged, redrawn=redrawn)


def completion(state: SetState, per_class: int = 0) -> dict:
    """How far a set is: {"done", "total", "complete", "classes": {name: [done, total]}}, counting only the first
    `per_class` planned images of each class when given (what a volume study reads)."""
    rows = state.rows
    keep = rows.idx < per_class if per_class else np.ones(len(rows), dtype=bool)
    done = np.bincount(rows.cls[keep & state.done], minlength=len(rows.classes))
    total = np.bincount(rows.cls[keep], minlength=len(rows.classes))
    classes = {k["name"]: [d, t] for k, d, t in zip(rows.classes, done.tolist(), total.tolist(), strict=True) if t}
    return {"done": int(done.sum()), "total": int(total.sum()), "complete": bool(done.sum() == total.sum()),
            "classes": classes}


def completed_rows(folder: str | os.PathLike, state: SetState | None = None) -> Iterator[dict]:
    """The finished rows one at a time, class-major (see `SetState.completed_row`)."""
    state = state or read_state(folder)
    yield from map(state.completed_row, np.flatnonzero(state.done).tolist())


def completion_record(state: SetState) -> dict:
    """complete.json: per class, how many leading images are finished."""
    rows = state.rows
    grid = state.done.reshape(len(rows.classes), rows.per_class)
    prefix = np.where(grid.all(axis=1), rows.per_class, (~grid).argmax(axis=1))
    return {"plan": plan_hash(rows.settings), "per_class": rows.per_class, "done": int(state.done.sum()),
            "total": len(rows), "complete": bool(state.done.all()), "prefix": prefix.tolist()}


def is_complete(folder: str | os.PathLike, per_class: int = 0) -> bool:
    """Whether the first `per_class` images of every class (0 = every planned image) are finished. Cheap: reads only
    the completion record that the last shard to finish writes (complete.json), never a log."""
    f = Path(folder) / COMPLETE
    if not f.is_file():
        return False
    rec = read_json(f)
    wanted = per_class or rec["per_class"]
    return wanted <= rec["per_class"] and min(rec["prefix"], default=0) >= wanted


# ---------------------------------------------------------------------------------------------------- the plan
def class_table(classes: list[tuple[str, str]], prompts: list[list[dict]], tokens: list[str],
                sources=None) -> list[dict]:
    """One record per class: id, name, folder, style token, a prompt record per template (image i uses template i mod
    their count) and, with img2img `sources`, the sorted source ids and hashes (image i starts from source i mod n)."""
    folders = class_folders([n for _, n in classes])
    table = [{"id": cid, "name": name, "folder": folders[c], "token": tokens[c], "prompts": prompts[c]}
             for c, (cid, name) in enumerate(classes)]
    for k, ids, hashes in zip(table, sources.ids, sources.hashes, strict=True) if sources is not None else ():
        k["sources"], k["source_sha256"] = ids, hashes
    return table


def write_manifest(folder: Path, rows: SetRows, state: SetState | None = None) -> None:
    """manifest.jsonl, atomically and streaming: every planned row, or finished as `state` says when given."""
    with atomic_open(folder / MANIFEST, "w") as f:
        f.writelines(json.dumps(state.completed_row(p) if state is not None and state.done[p] else rows.row(p)) + "\n"
                     for p in range(len(rows)))


def check_settings(folder: Path, settings: dict) -> dict | None:
    """The folder's plan (None if it has none); a plan made with other settings is refused naming them (e.g. a set
    planned in fp16 on a GPU, resumed in fp32 on a CPU)."""
    if not (folder / PLAN).is_file():
        return None
    old = read_plan(folder)
    diff = sorted(k for k in set(old["settings"]) | set(settings) if old["settings"].get(k) != settings.get(k))
    if diff:
        raise refusal(folder, "a generated set", diff, old["settings"], settings)
    return old


def write_or_extend(folder: Path, settings: dict, classes: list[dict], per_class: int,
                    notes: dict | None = None) -> SetRows:
    """Writes plan.json and manifest.jsonl, or extends an existing plan to `per_class` images per class (rows are
    prefix-stable: every earlier row stays). Call it holding the set's lock. `notes`: facts for readers such as the
    report (e.g. {"style_lora": "class"}), kept in plan.json beside the settings."""
    old = check_settings(folder, settings)
    if old is not None and old["per_class"] >= per_class:
        return rows_of(folder, old)
    (folder / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    if old is None:
        (folder / COMPLETE).unlink(missing_ok=True)  # a record left by some other set is not this plan's
    plan = {"layout": LAYOUT, "per_class": per_class, "rows": per_class * len(classes),
            "plan_hash": plan_hash(settings), "settings": settings,
            "classes": old["classes"] if old else classes, **(notes or {})}
    rows = rows_of(folder, plan)
    write_manifest(folder, rows)
    if (folder / COMPLETE).is_file():  # an extension: the finished prefixes stay finished, the set is not complete
        rec = read_json(folder / COMPLETE)
        write_json(folder / COMPLETE, {**rec, "per_class": per_class, "total": len(rows), "complete": False,
                                       "prefix": [min(n, per_class) for n in rec["prefix"]]})
    write_json(folder / PLAN, plan)  # last: a reader sees the old plan or the new one
    return rows


# ------------------------------------------------------------------------------------------------------ shards
def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:04d}-of-{num_shards:04d}"


def cost_file(folder: Path, shard: int, num_shards: int) -> Path:
    """A shard's cost log: one row per batch it wrote (images, seconds since the row before, redraws, gpus), appended
    right after the batch's progress rows, so that a kill loses the cost of the batch in flight only."""
    return folder / PROGRESS_DIR / f"cost-{shard_name(shard, num_shards)}.jsonl"


def set_stats(folder: Path) -> dict:
    """The work of every shard that ever ran on the set, added up (a torchrun run is N shards)."""
    total = {"shards": 0, "images": 0, "seconds": 0.0, "gpu_seconds": 0.0, "redraws": 0}
    for f in sorted((folder / PROGRESS_DIR).glob("cost-shard-*.jsonl")):
        total["shards"] += 1
        for r in iter_jsonl(f):  # a torn last line (a kill mid-append) is ignored
            for k, v in (("images", r["images"]), ("seconds", r["seconds"]),
                         ("gpu_seconds", r["seconds"] * r["gpus"]), ("redraws", r["redraws"])):
                total[k] += v
    return total
