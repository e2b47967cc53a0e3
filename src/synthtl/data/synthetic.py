"""Reading synthetic training sets: a generated set (manifest.jsonl + per-shard progress logs) or an image folder.

A generated set's manifest is written before any image; an image counts only once a progress log (or the
consolidated manifest) marks it done, so a reader never sees a planned-but-unwritten or half-written image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthtl.data.datasets import image_folder, readable
from synthtl.data.imagelist import ImageList
from synthtl.errors import DataError
from synthtl.files import CorruptFileError, iter_jsonl, read_json

MANIFEST = "manifest.jsonl"  # one row per planned image, for people and tools (the plan itself is plan.json)
PROGRESS_DIR = "progress"  # per-shard append-only logs: the images written so far
PLAN = "plan.json"  # identity, per_class and one record per class (layout 2): every row derives from it
COMPLETE = "complete.json"  # the completion record (`is_complete`), written when a set's last shard finishes
LAYOUT = 2  # 2: rows derive from plan.json's class table; 1 (older): rows are read from the manifest
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def safe_folder(name: str, max_len: int = 64) -> str:
    """A folder name safe on every file system for a class name (slashes, '..', unicode, very long).

    ASCII letters, digits, '-', '_' and '.' are kept; anything else becomes '_'. A name that had to change
    gets a short hash of the original appended, so two different names never collide.
    """
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_).strip("._") or "class"
    if safe != name or len(safe) > max_len:
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]  # non-UTF-8 folder names too
        safe = f"{safe[: max_len - 9]}-{digest}"
    return safe


def image_seed(base: int, class_index: int, index: int, redraw: int = 0) -> int:
    """The seed of one image (a 63-bit integer); redraws get fresh seeds from the same row."""
    from synthtl.runtime import derive_seed  # here: reading a set needs no torch

    parts = (base, "image", class_index, index) + (("redraw", redraw) if redraw else ())
    return derive_seed(*parts)


def row_id(class_index: int, index: int) -> str:
    return f"c{class_index:05d}-i{index:06d}"


def plan_hash(ident: dict) -> str:
    """A short hash of a plan's identity (what its images depend on)."""
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SetRows:
    """The planned rows of a generated set, compact: row `p` is image `idx[p]` of class `cls[p]`.

    A set planned by this version is a grid (class-major, `per_class` images per class) whose every row field
    derives from (class index, image index) and the plan (plan.json: identity and one small record per class), so no
    row is held in memory. A set planned by an older version (no class table in plan.json) keeps its manifest rows
    as they are (`legacy`); running `synthtl generate` on it again upgrades its plan.
    """

    folder: Path
    ident: dict
    per_class: int
    classes: list[dict]  # per class: id, name, folder, token, prompts (one `fit_prompt` record per template)
    cls: np.ndarray
    idx: np.ndarray
    legacy: list[dict] | None = None
    positions: dict[str, int] | None = None  # legacy only: row id -> position

    def __len__(self) -> int:
        return len(self.cls)

    def position(self, c: int, i: int) -> int:
        return c * self.per_class + i

    def ext(self) -> str:
        return EXT[self.ident["image_format"]]

    def rel_path(self, p: int, key: str = "path") -> str | None:
        """The image (`path`) or training copy (`train_path`) of row p, relative to the set."""
        if self.legacy is not None:
            return self.legacy[p].get(key)
        c, i = divmod(p, self.per_class)
        if key == "path":
            return f"images/{self.classes[c]['folder']}/{i:06d}.{self.ext()}"
        return f"train/{self.classes[c]['folder']}/{i:06d}.jpg" if self.ident["train_copy"] else None

    def row(self, p: int) -> dict:
        """The planned manifest row at position p (the same keys and order as manifest.jsonl)."""
        if self.legacy is not None:
            return dict(self.legacy[p])
        c, i = divmod(p, self.per_class)
        k, g = self.classes[c], self.ident
        pr = k["prompts"][i % len(k["prompts"])]
        extra = {"requested_prompt": pr["requested_prompt"]} if pr["truncated"] else {}
        return {"id": row_id(c, i), "class_index": c, "class_id": k["id"], "class_name": k["name"],
                "folder": k["folder"], "index": i, "prompt": pr["prompt"], "truncated": pr["truncated"], **extra,
                "negative_prompt": g["negative"], "template": pr["template"], "token": k["token"],
                "seed": image_seed(g["seed"], c, i), "model": g["model"], "revision": g["revision"],
                "scheduler": g["scheduler"], "steps": g["steps"], "guidance": g["guidance"], "height": g["height"],
                "width": g["width"], "dtype": g["dtype"], "style_hash": g["style_hash"], **self._source(k, i),
                "path": self.rel_path(p), "train_path": self.rel_path(p, "train_path"), "status": "planned"}

    def _source(self, k: dict, i: int) -> dict:
        """An img2img row's source (image i of a class starts from its source i mod n) and strength; {} otherwise."""
        sources = k.get("sources")
        return {"source": sources[i % len(sources)], "strength": self.ident["strength"]} if sources else {}


def grid_rows(folder: Path, plan: dict) -> SetRows:
    """The rows of a plan written by this version (plan.json with its class table)."""
    n, c = plan["per_class"], len(plan["classes"])
    cls = np.repeat(np.arange(c, dtype=np.int32), n)
    idx = np.tile(np.arange(n, dtype=np.int32), c)
    return SetRows(folder=folder, ident=plan["identity"], per_class=n, classes=plan["classes"], cls=cls, idx=idx)


def read_rows(folder: str | os.PathLike) -> SetRows:
    """The planned rows of a generated set (compact for sets planned by this version; see `SetRows`)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: not a generated set (point at the out_dir of `synthtl generate`)")
    plan = read_json(folder / PLAN) if (folder / PLAN).is_file() else {}
    if plan.get("layout") == LAYOUT:
        return grid_rows(folder, plan)
    rows = list(iter_jsonl(manifest))  # an older set: its rows as they are (re-run generate to upgrade it)
    cls = np.array([r["class_index"] for r in rows], dtype=np.int32)
    idx = np.array([r["index"] for r in rows], dtype=np.int32)
    return SetRows(folder=folder, ident=plan.get("identity", {}), per_class=int(idx.max(initial=-1)) + 1, classes=[],
                   cls=cls, idx=idx, legacy=rows, positions={r["id"]: p for p, r in enumerate(rows)})


# One progress-log line as `append_jsonl` writes it; lines of any other shape take the JSON path below.
_LOG_LINE = re.compile(rb'\{"id": "c(\d{5})-i(\d{6})", "seed": (\d{1,19}), "redraws": (\d{1,9})\}\n')
_CHUNK = 1 << 24  # bytes of a log parsed at a time: bounds memory whatever the log's size


def read_logged(rows: SetRows) -> tuple[np.ndarray, dict[int, dict]]:
    """Which planned rows some shard logged as written (files are written before logging), and the log rows that
    change a planned row (a redraw's seed; every log row of an older set).

    A torn last line (a killed appender, a full disk) is not a finished image; other damage is a CorruptFileError
    naming the file and line.
    """
    logged = np.zeros(len(rows), dtype=bool)
    extra: dict[int, dict] = {}
    progress = rows.folder / PROGRESS_DIR
    logs = sorted(progress.glob("shard-*.jsonl")) if progress.is_dir() else []
    for log in logs:
        line = 0
        with open(log, "rb") as f:
            rest = b""
            while chunk := f.read(_CHUNK):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]  # what follows the last newline waits for the next chunk
                if data:
                    _parse_log(data, log, line, rows, logged, extra)
                    line += data.count(b"\n")
        # `rest` now holds a torn last line (no newline): the append never finished, so it is not counted
    return logged, extra


def _parse_log(data: bytes, log: Path, line: int, rows: SetRows, logged: np.ndarray, extra: dict[int, dict]) -> None:
    """Marks the rows of whole log lines `data` (starting after line `line`) as logged."""
    if rows.legacy is None:
        found = _LOG_LINE.findall(data)
        if len(found) == data.count(b"\n"):  # every line has the usual shape: parse them all at C speed
            if not found:
                return
            a = np.array(found, dtype="S19").astype(np.int64)
            ok = (a[:, 0] < len(rows.classes)) & (a[:, 1] < rows.per_class)  # ids outside the plan are not ours
            pos = a[ok, 0] * rows.per_class + a[ok, 1]
            logged[pos] = True
            if extra:  # a later log row of the same image wins
                for p in set(extra).intersection(pos.tolist()):
                    del extra[p]
            for p, seed, redraws in zip(pos.tolist(), a[ok, 2].tolist(), a[ok, 3].tolist(), strict=True):
                if redraws:
                    extra[p] = {"id": row_id(*divmod(p, rows.per_class)), "seed": seed, "redraws": redraws}
            return
    for n, raw in enumerate(data.splitlines(), start=line + 1):
        if not raw.strip():
            continue
        try:
            r = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptFileError(f"{log}, line {n}: not a JSON row (the file is damaged); run synthtl generate "
                                   f"--validate {Path(log).parent.parent} --repair to drop the line (its image is "
                                   "redrawn by the next run), or restore the file") from None
        p = _position(rows, r.get("id"))
        if p is not None:
            logged[p] = True
            if rows.legacy is not None or r.get("redraws"):
                extra[p] = r
            else:
                extra.pop(p, None)


def _position(rows: SetRows, rid: object) -> int | None:
    if rows.positions is not None:
        return rows.positions.get(rid)
    m = re.fullmatch(r"c(\d{5})-i(\d{6})", rid) if isinstance(rid, str) else None
    if m is None:
        return None
    c, i = int(m[1]), int(m[2])
    return rows.position(c, i) if c < len(rows.classes) and i < rows.per_class else None


def present(rows: SetRows) -> np.ndarray:
    """Whether each planned row's image file exists: one directory listing per class, not one stat per image."""
    out = np.zeros(len(rows), dtype=bool)
    if rows.legacy is not None:
        for p, r in enumerate(rows.legacy):
            out[p] = (rows.folder / r["path"]).is_file()
        return out
    suffix = f".{rows.ext()}"
    width = 6 + len(suffix)
    for c, k in enumerate(rows.classes):
        try:
            names = os.listdir(rows.folder / "images" / k["folder"])
        except FileNotFoundError:
            continue
        base = c * rows.per_class
        for name in names:  # temp files (".000001.jpg.x1y2.tmp") and strays have other shapes
            if len(name) == width and name.endswith(suffix) and name[:6].isdigit():
                i = int(name[:6])
                if i < rows.per_class:
                    out[base + i] = True
    return out


@dataclass(frozen=True)
class SetState:
    """A generated set's rows and which are finished: logged as written (or consolidated as done in an older set's
    manifest) and the image file exists. The one test of "this image is finished"."""

    rows: SetRows
    done: np.ndarray
    logged: np.ndarray  # logged as written (or consolidated), file present or not
    extra: dict[int, dict]  # position -> log row where it changes the planned row (see `read_logged`)

    def completed_row(self, p: int) -> dict:
        """Row p as finished: the seed actually used (after any redraw), its redraw count, status done."""
        return {**self.rows.row(p), "redraws": 0, **self.extra.get(p, {}), "status": "done"}


def read_state(folder: str | os.PathLike) -> SetState:
    """Reads a set's plan, progress logs and image listings once (see `SetState`)."""
    rows = read_rows(folder)
    logged, extra = read_logged(rows)
    if rows.legacy is not None:
        logged |= np.array([r.get("status") == "done" for r in rows.legacy], dtype=bool)
    return SetState(rows=rows, done=logged & present(rows), logged=logged, extra=extra)


def read_progress(folder: str | os.PathLike) -> dict[str, dict]:
    """id -> log row of every image a generation shard logged as written (small sets and tools; see `read_state`)."""
    done: dict[str, dict] = {}
    progress = Path(folder) / PROGRESS_DIR
    if progress.is_dir():
        for log in sorted(progress.glob("shard-*.jsonl")):
            for r in iter_jsonl(log):  # a torn last line (killed appender, full disk) is not a finished image
                done[r["id"]] = r
    return done


def manifest_rows(folder: str | os.PathLike) -> list[dict]:
    """The planned rows of a generated set as dicts (small sets and tools; see `read_rows` for the compact form)."""
    rows = read_rows(folder)
    return list(rows.legacy) if rows.legacy is not None else [rows.row(p) for p in range(len(rows))]


def class_counts(state: SetState, per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(done, planned) images per class index, counting only the first `per_class` of each class when given."""
    rows = state.rows
    keep = rows.idx < per_class if per_class else np.ones(len(rows), dtype=bool)
    n = int(rows.cls.max(initial=-1)) + 1
    return (np.bincount(rows.cls[keep & state.done], minlength=n), np.bincount(rows.cls[keep], minlength=n))


def class_names(rows: SetRows) -> list[str]:
    if rows.legacy is None:
        return [k["name"] for k in rows.classes]
    names: dict[int, str] = {}
    for r in rows.legacy:
        names.setdefault(r["class_index"], r["class_name"])
    return [names.get(c, "") for c in range(int(rows.cls.max(initial=-1)) + 1)]


def completion(folder: str | os.PathLike, per_class: int = 0, state: SetState | None = None) -> dict:
    """How far a generated set is: {"done", "total", "complete", "classes": {name: [done, total]}}.

    Args:
        folder: The generated set.
        per_class: Count only the first k planned images of each class (what a volume study reads); 0 = all.
        state: The set's state if already read.
    """
    state = state or read_state(folder)
    done, total = class_counts(state, per_class)
    classes = {}
    for name, d, t in zip(class_names(state.rows), done.tolist(), total.tolist(), strict=True):
        if t:
            entry = classes.setdefault(name, [0, 0])
            entry[0] += d
            entry[1] += t
    finished, planned = int(done.sum()), int(total.sum())
    return {"done": finished, "total": planned, "complete": finished == planned, "classes": classes}


def iter_completed_rows(folder: str | os.PathLike, state: SetState | None = None) -> Iterator[dict]:
    """The finished rows one at a time, class-major (see `SetState.completed_row`)."""
    state = state or read_state(folder)
    for p in np.flatnonzero(state.done).tolist():
        yield state.completed_row(p)


def completed_rows(folder: str | os.PathLike) -> list[dict]:
    """Manifest rows whose image is written and valid, with the seed actually used (after any redraw)."""
    return list(iter_completed_rows(folder))


def record(state: SetState) -> dict:
    """The completion record (complete.json): per class, how many leading images are finished."""
    rows = state.rows
    grid = state.done.reshape(len(rows.classes), rows.per_class)
    prefix = np.where(grid.all(axis=1), rows.per_class, (~grid).argmax(axis=1))
    return {"plan": plan_hash(rows.ident), "per_class": rows.per_class, "done": int(state.done.sum()),
            "total": len(rows), "complete": bool(state.done.all()), "prefix": prefix.tolist()}


def is_complete(folder: str | os.PathLike, per_class: int = 0) -> bool:
    """Whether the first `per_class` images of every class (0 = every planned image) of a generated set are finished.

    Cheap: reads only the completion record that a generation run writes when the set's last shard finishes
    (complete.json), never the manifest. A set without the record (unfinished, or made by an older version: run
    `synthtl generate` on it again, which finishes or records it) is not complete.
    """
    f = Path(folder) / COMPLETE
    if not f.is_file():
        return False
    rec = read_json(f)
    wanted = per_class or rec["per_class"]
    return wanted <= rec["per_class"] and min(rec["prefix"], default=0) >= wanted


def check_sources(folder: str | os.PathLike, train: ImageList, per_class: int = 0) -> None:
    """Refuses a generated set made by img2img from real images that a run does not train on.

    Its outputs carry their sources into training, so a k-shot run on a set made from other shots (or from the full
    split) would see more real images than its k. `train`: the run's training images (after any few-shot draw and
    validation carve), with the ids the set's plan records (paths in the train listing). `per_class`: the images of
    each class the run reads (0 = all); image i of a class starts from source i mod (its sources), so only the first
    `per_class` sources reach the run.

    Raises:
        DataError: naming how many of the sources the run reads are outside `train`, and a few of them.
    """
    plan_file = Path(folder) / PLAN
    plan = read_json(plan_file) if plan_file.is_file() else {}
    allowed = set(train.paths)
    outside = [s for k in plan.get("classes", []) for s in k.get("sources", [])[:per_class or None]
               if s not in allowed]
    if outside:
        raise DataError(f"generated set {folder} was made by img2img from {len(outside)} real images this run does not "
                        f"train on (e.g. {outside[:3]}): its images would carry them into training. Generate it from "
                        "the run's own training images (the same data.shots with data.split_seed, or data.split_file, "
                        "and data.val_fraction), or train on the split it was made from")


def _match_classes(syn_classes: list[tuple[str, str]], real: ImageList, where: str) -> dict[int, int]:
    """Maps each synthetic class (id, name) to a real class index, one to one.

    Names are compared exactly (case-sensitive: "Cat" and "cat" are two classes, as they are when generating): a
    real class is found by its id, then its readable name, then the safe folder names and readable form derived
    from them (what a class-per-folder synthetic set is named after). Earlier keys win over derived ones.
    """
    lookup: dict[str, int] = {}
    derived = (lambda c, n: c, lambda c, n: n, lambda c, n: safe_folder(c), lambda c, n: safe_folder(n),
               lambda c, n: readable(c))
    for key_of in derived:
        for i, (cid, name) in enumerate(zip(real.classes, real.names, strict=True)):
            lookup.setdefault(key_of(cid, name), i)
    mapping, unknown, taken = {}, [], {}
    for j, (cid, name) in enumerate(syn_classes):
        hit = next((lookup[k] for k in (cid, name) if k and k in lookup), None)
        if hit is None:
            unknown.append(name or cid)
        elif hit in taken:
            raise DataError(f"synthetic set {where}: classes {syn_classes[taken[hit]][1]!r} and {name!r} both match "
                            f"the real class {real.names[hit]!r}; each real class needs exactly one synthetic class")
        else:
            mapping[j] = hit
            taken[hit] = j
    missing = sorted(set(range(real.num_classes)) - set(mapping.values()))
    if unknown or missing:
        msg = [f"synthetic set {where} does not match the classes of {real.name}:"]
        if unknown:
            msg.append(f"{len(unknown)} synthetic classes are not real classes: {unknown[:10]}")
        if missing:
            msg.append(f"{len(missing)} real classes have no synthetic images: {[real.names[i] for i in missing][:10]}")
        raise DataError(" ".join(msg) + ". Generate the set from the same dataset (synthtl generate data.name=...).")
    return mapping


def _generated_items(folder: Path, real: ImageList, per_class: int, allow_partial: bool,
                     record: dict, filter_name: str = "") -> list[tuple[str, int]]:
    """(file training reads, real label) of the first `per_class` finished (and, with a filter, kept) images of each
    class, class-major."""
    state = read_state(folder)
    progress = completion(folder, per_class, state)
    record.update(done=progress["done"], total=progress["total"], partial=not progress["complete"])
    if record["partial"] and not allow_partial:
        raise DataError(f"generated set {folder} is unfinished: {progress['done']} of {progress['total']} planned "
                        "images are done; resume `synthtl generate` to finish it, or set synthetic.allow_partial=true "
                        "to train on the finished images (recorded in result.json)")
    rows = state.rows
    if not state.done.any():
        raise DataError(f"generated set {folder} has no finished images yet; run or resume `synthtl generate`")
    names = class_names(rows)
    ids = [k["id"] for k in rows.classes] if rows.legacy is None else _legacy_ids(rows)
    order = sorted(set(rows.cls[state.done].tolist()))  # classes with a finished image
    mapping = _match_classes([(ids[c] or names[c], names[c]) for c in order], real, str(folder))
    done = np.flatnonzero(state.done)
    done = done[np.lexsort((rows.idx[done], rows.cls[done]))]  # class-major, then image index: "first k"
    starts = np.searchsorted(rows.cls[done], order + [np.iinfo(np.int32).max])
    keep = None
    if filter_name:
        from synthtl.filtering import selection  # lazy: filtering imports this module

        keep, chosen = selection(folder, filter_name, per_class)  # refuses an unfinished or stale filter
        record["filter"] = {"name": filter_name, "identity": chosen, "kept": len(keep)}
    items = []
    for j in range(len(order)):
        mine = done[starts[j]:starts[j + 1]]
        if per_class:
            mine = mine[:per_class]
        if keep is not None:  # the filter's rule applied to the first k images (the volume)
            mine = np.array([p for p in mine.tolist() if rows.rel_path(p) in keep], dtype=mine.dtype)
        y = mapping[j]
        items += [(rows.rel_path(p, "train_path") or rows.rel_path(p), y) for p in mine.tolist()]
    return items


def _legacy_ids(rows: SetRows) -> list[str]:
    ids: dict[int, str] = {}
    for r in rows.legacy or []:
        ids.setdefault(r["class_index"], r.get("class_id", r["class_name"]))
    return [ids.get(c, "") for c in range(int(rows.cls.max(initial=-1)) + 1)]


def load_synthetic(path: str | os.PathLike, real: ImageList, per_class: int = 0,
                   allow_partial: bool = False) -> ImageList:
    """A synthetic training set labelled in the real dataset's label space (see `load_synthetic_set`)."""
    return load_synthetic_set(path, real, per_class, allow_partial)[0]


def load_synthetic_set(path: str | os.PathLike, real: ImageList, per_class: int = 0,
                       allow_partial: bool = False, filter_name: str = "") -> tuple[ImageList, dict]:
    """A synthetic training set labelled in the real dataset's label space, and what was used.

    Args:
        path: A generated set (folder with manifest.jsonl) or a class-per-folder image folder.
        real: The real training list; synthetic classes must match its classes one to one.
        per_class: Keep the first k images of each class (manifest order); 0 = all.
        allow_partial: Use an unfinished generated set (the finished images only) instead of refusing it.
        filter_name: Apply the rule of the set's filter of this name (`synthtl filter`) to the first `per_class`
            images of each class, on its scores (`filtering.selection`): a filtered run trains on fewer images than
            the volume; recorded.

    Returns:
        (images, record) where record = {"path", "generated", "done", "total", "partial", "allow_partial"}: done/total
        count the planned images this use needs (the first `per_class` of each class); put it in result.json.

    Raises:
        DataError: an unfinished generated set without `allow_partial`, classes that do not match, or too few images.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"synthetic.path={str(path)!r} is not a folder; point it at a generated set "
                        "(`synthtl generate`) or a class-per-folder image folder")
    record = {"path": str(folder), "generated": (folder / MANIFEST).is_file(), "done": None, "total": None,
              "partial": False, "allow_partial": allow_partial}
    if record["generated"]:
        items = _generated_items(folder, real, per_class, allow_partial, record, filter_name)
    elif filter_name:
        raise DataError(f"synthetic.filter needs a generated set (`synthtl generate`); {folder} is an image folder")
    else:
        raw = image_folder(folder, tag=f"synthetic:{folder.name}")
        mapping = _match_classes(list(zip(raw.classes, raw.names, strict=True)), real, str(folder))
        items, taken = [], {}
        for p, y in zip(raw.paths, raw.labels, strict=True):  # sorted by path: "first k" = first k file names
            if per_class and taken.get(y, 0) >= per_class:
                continue
            taken[y] = taken.get(y, 0) + 1
            items.append((p, mapping[y]))
    counts = np.bincount(np.array([y for _, y in items], dtype=np.int64), minlength=real.num_classes)  # one pass
    if filter_name:
        empty = [real.names[c] for c in range(real.num_classes) if counts[c] == 0]
        if empty:
            raise DataError(f"filter {filter_name!r} of {folder} keeps no image of {len(empty)} classes (e.g. "
                            f"{empty[:5]}); loosen its keep.* rule or train without synthetic.filter")
    short = [real.names[c] for c in range(real.num_classes) if per_class and not filter_name and counts[c] < per_class]
    if short:
        raise DataError(f"synthetic.per_class={per_class} but {len(short)} classes have fewer finished images in "
                        f"{folder} (e.g. {short[:5]}); generate more or lower synthetic.per_class")
    images = ImageList(root=folder, paths=tuple(p for p, _ in items), labels=tuple(y for _, y in items),
                       classes=real.classes, names=real.names, name=f"synthetic/{folder.name}")
    return images, record
