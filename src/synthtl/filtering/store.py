"""The files of a filter, and reading them: what `synthtl filter` writes beside a generated set.

    <set>/filters/<name>/
        spec.json        the filter's config (keys that change results), the scoring model's identity and the set's
                         plan identity; written once, before the first score
        scores.jsonl     append-only log, one row per manifest row (keyed by the manifest's "id"): score, own-class
                         probability and logit, top-1 prediction. A kill leaves at most a torn last line (ignored)
        cost.jsonl       append-only log, one row per scored batch: its session, images, wall and GPU seconds
                         (the first batch of a session also carries the model's loading); summed into filter.json
        decisions.jsonl  one row per manifest row: score, rank in its class, kept or not (written at the end)
        filter.json      written last, so its presence means "finished": counts per class, identity, digests

The manifest itself is never rewritten. Reading needs no model (no torch): the report and the training data reader
use these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from synthtl.data.synthetic import MANIFEST, completed_rows
from synthtl.data.synthetic import plan_hash as _hash_of_plan
from synthtl.errors import DataError
from synthtl.files import CorruptFileError, iter_jsonl, read_json, read_jsonl, sha256_file

FILTERS = "filters"
SPEC = "spec.json"
SCORES = "scores.jsonl"
COST = "cost.jsonl"
DECISIONS = "decisions.jsonl"
SUMMARY = "filter.json"
FORMAT = 1


def filter_dir(set_dir: str | os.PathLike, name: str) -> Path:
    return Path(set_dir) / FILTERS / name


def image_of(row: dict) -> str:
    """The file of a manifest row that training reads (its resized copy if the set has one), relative to the set."""
    return row.get("train_path") or row["path"]


def rows_digest(rows: list[dict]) -> str:
    """What a filter covered: a hash of the finished rows' ids, paths and seeds (after any redraw)."""
    parts = sorted(f"{r['id']}\t{r['path']}\t{r.get('seed')}" for r in rows)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def plan_hash(set_dir: str | os.PathLike) -> str:
    """A hash of the set's plan identity (generator, prompts, seed, classes): a re-planned set is another set."""
    return _hash_of_plan(read_json(Path(set_dir) / "plan.json")["identity"])


def read_scores(folder: Path) -> dict[str, dict]:
    """id -> score row of every row logged so far (a torn last line is ignored; a repeated id is damage)."""
    path = folder / SCORES
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for r in iter_jsonl(path):
        if r["id"] in out:
            raise CorruptFileError(f"{path} scores row {r['id']} twice (was it edited or written by two processes?); "
                                   f"delete {folder} and re-run `synthtl filter`")
        out[r["id"]] = r
    return out


def has_scores(folder: Path) -> bool:
    """Whether a filter's score log holds at least one whole row (reads only its first line)."""
    path = folder / SCORES
    if path.is_file():
        for _ in iter_jsonl(path):
            return True
    return False


def read_cost(folder: Path) -> dict:
    """Cost of every scoring session of a filter so far, summed from its cost log: sessions, images scored, wall and
    GPU seconds. A killed session counts up to its last logged batch."""
    path = folder / COST
    rows = list(iter_jsonl(path)) if path.is_file() else []
    return {"sessions": len({r["session"] for r in rows}), "scored": sum(r["scored"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows), "gpu_seconds": sum(r["gpu_seconds"] for r in rows)}


def filter_cost(summary: dict) -> dict:
    """The cumulative cost in a filter.json: sessions, scored, seconds, gpu_seconds.

    A filter.json written before cost was cumulative has only its last session ("session"); that is all it can
    give (one session; GPU seconds = wall seconds on a CUDA device, as one GPU scored).
    """
    if "cost" in summary:
        return summary["cost"]
    s = summary.get("session", {})
    seconds = float(s.get("seconds", 0.0))
    return {"sessions": 1 if s else 0, "scored": int(s.get("scored", 0)), "seconds": seconds,
            "gpu_seconds": seconds if str(s.get("device", "")).startswith("cuda") else 0.0}


def find_filters(set_dir: str | os.PathLike) -> list[str]:
    """Names of the finished filters of a generated set (folders with filter.json), sorted."""
    return sorted(p.parent.name for p in (Path(set_dir) / FILTERS).glob(f"*/{SUMMARY}"))


# (set, filter name[, volume]) -> (the state of the files read, what was read from them): a study asks about one filter
# for each of its runs, and a run asks twice (its inputs, its data); reading a set's rows and hashing a decisions file
# once per state of those files serves them all.
_CURRENT: dict[tuple, tuple[tuple, dict | DataError]] = {}
_SELECTIONS: dict[tuple, tuple[tuple, tuple[set[str], str]]] = {}


def _stamps(set_dir: Path, name: str) -> tuple:
    """(name, mtime, size) of every file a filter's check reads: its summary and decisions, the set's plan and
    progress logs (a set extended or redrawn changes them)."""
    from synthtl.data.synthetic import PLAN, PROGRESS_DIR

    folder = filter_dir(set_dir, name)
    out = []
    for f in [folder / SUMMARY, folder / DECISIONS, set_dir / PLAN, *sorted((set_dir / PROGRESS_DIR).glob("*.jsonl"))]:
        try:
            st = f.stat()
            out.append((f.name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((f.name, None))
    return tuple(out)


def read_filter(set_dir: str | os.PathLike, name: str, check_current: bool = True) -> dict:
    """A finished filter's filter.json, checked against its decisions file and (by default) the set as it is now.

    With `check_current`, the answer (or the refusal) is remembered per state of the files it reads (`_stamps`).

    Raises:
        DataError: no such finished filter, a decisions file that is not the one the filter wrote, or a set that has
            changed (extended, redrawn) since the filter ran; each message names the command that fixes it.
    """
    set_dir = Path(set_dir)
    if not check_current:
        return _read_filter(set_dir, name, False)
    key, stamps = (str(set_dir.resolve()), name), _stamps(set_dir, name)
    if key not in _CURRENT or _CURRENT[key][0] != stamps:
        try:
            _CURRENT[key] = (stamps, _read_filter(set_dir, name, True))
        except DataError as e:  # a refusal is remembered too: a study asks once per run reading the filter
            _CURRENT[key] = (stamps, e)
    found = _CURRENT[key][1]
    if isinstance(found, DataError):
        raise type(found)(*found.args) from None  # a fresh one: re-raising the same object would grow its traceback
    return found


def _read_filter(set_dir: Path, name: str, check_current: bool) -> dict:
    folder = filter_dir(set_dir, name)
    if not (set_dir / MANIFEST).is_file():
        raise DataError(f"{set_dir} is not a generated set (no {MANIFEST}); filters live in <set>/{FILTERS}/<name>")
    if not (folder / SUMMARY).is_file():
        have = find_filters(set_dir)
        if folder.is_dir() and not has_scores(folder):  # a run that failed at start (bad model, device) left its lock
            raise DataError(f"filter {name!r} of {set_dir} has not scored any image yet: run `synthtl filter "
                            f"{set_dir} name={name} ...` (finished filters of this set: {', '.join(have) or 'none'})")
        state = "unfinished (re-run the same `synthtl filter` command to finish it)" if folder.is_dir() else "missing"
        raise DataError(f"filter {name!r} of {set_dir} is {state}; finished filters of this set: "
                        f"{', '.join(have) or 'none'} (`synthtl filter {set_dir} name={name} ...` makes it)")
    summary = read_json(folder / SUMMARY)
    if sha256_file(folder / DECISIONS) != summary["decisions_sha256"]:
        raise DataError(f"{folder / DECISIONS} is not the file filter {name!r} wrote (edited, or a run was killed "
                        f"while rewriting it); re-run `synthtl filter {set_dir} name={name}` with the same config")
    if check_current and rows_digest(completed_rows(set_dir)) != summary["set"]["rows_digest"]:
        raise DataError(f"generated set {set_dir} changed after filter {name!r} ran (images added or redrawn); re-run "
                        f"`synthtl filter {set_dir} name={name}` with the same config to score the new images")
    return summary


def decisions(set_dir: str | os.PathLike, name: str, check_current: bool = True) -> list[dict]:
    """One row per manifest row of a finished filter: id, path, image, class, score, rank in its class, kept."""
    read_filter(set_dir, name, check_current)
    return read_jsonl(filter_dir(set_dir, name) / DECISIONS)


def kept(set_dir: str | os.PathLike, name: str) -> set[str]:
    """The manifest `path` of every image the filter kept (e.g. "images/red_fox/000003.jpg").

    Paths, not line numbers: a manifest row's line moves when the set is extended, its `path` (like its `id`) never
    does. Refuses a filter that no longer covers the set exactly (see `read_filter`).
    """
    return {d["path"] for d in decisions(set_dir, name) if d["kept"]}


def selection(set_dir: str | os.PathLike, name: str, per_class: int = 0) -> tuple[set[str], str]:
    """What a run of volume `per_class` trains on: the filter's rule applied to the first `per_class` images of each
    class (all of them for 0), on the filter's scores. top_k keeps the k best of those, fraction that fraction of
    them, threshold those above it; so a run's images depend only on its own first k images, never on how far the set
    was generated beyond them.

    Returns:
        (the manifest paths kept, a hash of them with the filter's config and scoring model: the run's record of its
        filtered input; where files live and the set's other rows are not part of it).

    Raises:
        DataError: an unfinished filter, or one older than its set (see `read_filter`).
    """
    from synthtl.config import KeepConfig
    from synthtl.filtering.decide import decide

    summary = read_filter(set_dir, name)  # refuses a stale filter; remembered per state of the files
    key, stamps = (str(Path(set_dir).resolve()), name, per_class), _stamps(Path(set_dir), name)
    if key in _SELECTIONS and _SELECTIONS[key][0] == stamps:
        return _SELECTIONS[key][1]
    by_class: dict[int, list[dict]] = {}
    for d in read_jsonl(filter_dir(set_dir, name) / DECISIONS):
        by_class.setdefault(d["class_index"], []).append(d)
    first = []
    for rows in by_class.values():
        rows.sort(key=lambda d: d["index"])
        first += rows[:per_class] if per_class else rows
    keep = KeepConfig(**{summary["keep"]["rule"]: summary["keep"]["value"]})
    paths = {d["id"]: d["path"] for d in first}
    chosen = {paths[i] for i, d in decide(first, keep).items() if d["kept"]}
    digest = hashlib.sha256(json.dumps({"config": summary["config"], "model": summary["model"],
                                        "kept": sorted(chosen)}, sort_keys=True).encode()).hexdigest()[:16]
    _SELECTIONS[key] = (stamps, (chosen, digest))
    return chosen, digest


def identity(set_dir: str | os.PathLike, name: str) -> str:
    """A hash of the kept subset and what it came from: the filter's config (keys that change results), the scoring
    model's weights and preprocessing, the set's rows and the ids kept. Where files live, batch sizes and the last bits
    of the scores (which move with the batch size and the device) are not part of it."""
    return read_filter(set_dir, name)["identity"]
