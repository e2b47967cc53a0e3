"""What `synthtl filter` writes beside a generated set, and reading it (no model, no torch).

    <set>/filters/<name>/
        identity.json    what the filter is (`synthtl.identity`): its config, the set's identity and the scoring
                         model's weights; written before the first score
        scores.jsonl     append-only, one row per image scored (by the manifest's "id"): score, own-class probability
                         and logit, top-1 prediction, the scoring session and its share of that batch's wall and GPU
                         seconds. A kill leaves at most a torn last line (ignored)
        kept/<V>.json    immutable, one per volume: the rule applied to the first V images of each class, the
                         manifest paths kept and their digest, counts per class, the scoring model

Growing the set adds scores and new kept lists, never changing old ones, so a run that trained on one keeps its images.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

from synthtl.data.genset import PLAN
from synthtl.errors import DataError
from synthtl.files import CorruptFileError, iter_jsonl, read_json

FILTERS = "filters"
SCORES = "scores.jsonl"
KEPT = "kept"


def filter_dir(set_dir: str | os.PathLike, name: str) -> Path:
    return Path(set_dir) / FILTERS / name


def kept_file(folder: Path, per_class: int) -> Path:
    return folder / KEPT / f"{per_class}.json"


def image_of(row: dict) -> str:
    """The file of a manifest row that training reads (its resized copy if the set has one), relative to the set."""
    return row.get("train_path") or row["path"]


def kept_digest(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:16]


def read_scores(folder: Path) -> dict[str, dict]:
    """id -> score row of every row logged so far (a torn last line is ignored; a repeated id is damage)."""
    path, out = folder / SCORES, {}
    for r in iter_jsonl(path) if path.is_file() else []:
        if r["id"] in out:
            raise CorruptFileError(f"{path} scores row {r['id']} twice (was it edited or written by two processes?); "
                                   f"delete {folder} and re-run `synthtl filter`")
        out[r["id"]] = r
    return out


def read_cost(folder: Path) -> dict:
    """Sessions, images scored, wall and GPU seconds of all scoring so far (a killed session up to its last batch)."""
    rows = list(read_scores(folder).values())  # rows of a filter scored before costs were per row count as 0 s
    return {"sessions": len({r.get("session") for r in rows}), "scored": len(rows),
            "seconds": sum(r.get("seconds", 0.0) for r in rows),
            "gpu_seconds": sum(r.get("gpu_seconds", 0.0) for r in rows)}


def volumes(set_dir: str | os.PathLike, asked: list[int]) -> list[int]:
    """The volumes a filter writes kept lists for: those asked, else the set's planned images per class."""
    if asked:
        return sorted(set(asked))
    plan = Path(set_dir) / PLAN
    return [read_json(plan)["per_class"]] if plan.is_file() else []


def is_finished(cfg: Any) -> bool:
    """Whether the filter of `cfg` (a FilterConfig) has a kept list for every volume it is asked for."""
    folder = filter_dir(cfg.set_dir, cfg.name or cfg.method)
    wanted = volumes(cfg.set_dir, list(cfg.per_class))
    return bool(wanted) and all(kept_file(folder, v).is_file() for v in wanted)


def find_kept(set_dir: str | os.PathLike) -> dict[str, Path]:
    """Filter name -> its largest volume's kept list (what the report shows), for every filter with one."""
    lists = {f.name: sorted(f.glob(f"{KEPT}/*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
             for f in sorted((Path(set_dir) / FILTERS).glob("*"))}
    return {name: kept[-1] for name, kept in lists.items() if kept}


def read_kept(set_dir: str | os.PathLike, name: str, per_class: int) -> dict:
    """Filter `name`'s kept list for `per_class` (0: the set's planned per_class), checked against its digest;
    DataError for a missing (naming the command that writes it) or edited list."""
    set_dir = Path(set_dir)
    if not per_class and (set_dir / PLAN).is_file():
        per_class = volumes(set_dir, [])[0]
    folder = filter_dir(set_dir, name)
    f = kept_file(folder, per_class)
    if not f.is_file():
        state = "has no kept list for" if folder.is_dir() else "does not exist; it would keep images of"
        raise DataError(f"filter {name!r} of {set_dir} {state} {per_class} images per class: run `synthtl filter "
                        f"{set_dir} name={name} per_class=[{per_class}] ...` (images already scored are not scored "
                        "again)")
    with contextlib.suppress(ValueError, KeyError, TypeError):
        kept = read_json(f)
        if kept_digest(kept["paths"]) == kept["digest"]:
            return kept
    raise DataError(f"{f} is not the kept list filter {name!r} wrote (edited or damaged); delete it and re-run "
                    f"`synthtl filter {set_dir} name={name} per_class=[{per_class}]`")
