"""The plan of a generated set: one manifest row per image, written before any image exists.

Every image's seed is derived from (base seed, class index, image index), so any row can be regenerated alone and
the first k rows of each class form the k-per-class subset. The plan's identity (generator, prompts, style, seed,
classes) is stored in plan.json; asking for a different identity in the same folder is refused, while asking for
more images per class extends the plan.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from synthtl.config import GenerateConfig
from synthtl.data.synthetic import (
    MANIFEST,
    PROGRESS_DIR,
    completion,
    is_done,
    manifest_rows,
    read_progress,
    safe_folder,
)
from synthtl.errors import ConfigError
from synthtl.files import (
    TEMP_GLOB,
    exclusive,
    read_json,
    remove_temps,
    repair_jsonl,
    torn_tail,
    write_json,
    write_jsonl,
)
from synthtl.runtime import derive_seed

PLAN = "plan.json"
LOCKS = "locks"  # one lock folder per shard: two writers of one shard never interleave
SET_LOCK_WAIT = 120.0  # seconds a shard waits for another's plan/finalize step (each takes seconds at most)
FORMAT = 1
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def image_seed(base: int, class_index: int, index: int, redraw: int = 0) -> int:
    """The seed of one image (a 63-bit integer); redraws get fresh seeds from the same row."""
    parts = (base, "image", class_index, index) + (("redraw", redraw) if redraw else ())
    return derive_seed(*parts)


def row_id(class_index: int, index: int) -> str:
    return f"c{class_index:05d}-i{index:06d}"


def shard_of(rid: str, num_shards: int) -> int:
    """Stable assignment of a row to one of N shards (disjoint, and their union is every row)."""
    return int(hashlib.sha1(rid.encode()).hexdigest(), 16) % num_shards


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
             style_hash: str) -> dict:
    """What the set's images depend on; `generator` is `pipeline.generator_identity` (never where files live)."""
    g, p = cfg.generator, cfg.prompts
    return {"format": FORMAT, "model": generator["model"], "revision": generator["revision"], "scheduler": g.scheduler,
            "steps": g.steps,
            "guidance": g.guidance, "height": g.height, "width": g.width, "dtype": dtype, "templates": templates,
            "suffix": p.suffix, "negative": p.negative, "style_hash": style_hash, "seed": cfg.seed,
            "classes": [name for _, name in classes], "image_format": cfg.image_format, "quality": cfg.quality,
            "train_copy": cfg.train_copy}


def build_rows(ident: dict, classes: list[tuple[str, str]], per_class: int, prompts: list[list[dict]],
               tokens: list[str]) -> list[dict]:
    """All rows, class-major; `prompts[c][i]` is the prompt record of class c's image i (`prompts.fit_prompt`).

    A prompt whose class part had to be shortened to fit the text encoder carries `truncated: true`, the prompt as
    encoded (`prompt`) and the one the template asked for (`requested_prompt`).
    """
    folders = class_folders([n for _, n in classes])
    ext = EXT[ident["image_format"]]
    rows = []
    for c, (cid, name) in enumerate(classes):
        for i in range(per_class):
            rel = f"{folders[c]}/{i:06d}"
            p = prompts[c][i]
            extra = {"requested_prompt": p["requested_prompt"]} if p["truncated"] else {}
            rows.append({
                "id": row_id(c, i), "class_index": c, "class_id": cid, "class_name": name, "folder": folders[c],
                "index": i, "prompt": p["prompt"], "truncated": p["truncated"], **extra,
                "negative_prompt": ident["negative"], "template": p["template"],
                "token": tokens[c], "seed": image_seed(ident["seed"], c, i), "model": ident["model"],
                "revision": ident["revision"], "scheduler": ident["scheduler"], "steps": ident["steps"],
                "guidance": ident["guidance"], "height": ident["height"], "width": ident["width"],
                "dtype": ident["dtype"], "style_hash": ident["style_hash"], "path": f"images/{rel}.{ext}",
                "train_path": f"train/{rel}.jpg" if ident["train_copy"] else None, "status": "planned"})
    return rows


def write_or_check(folder: Path, ident: dict, rows: list[dict], per_class: int) -> list[dict]:
    """Writes plan.json + manifest.jsonl, or checks an existing plan and extends it to `per_class` if larger.

    Call it holding `set_lock`. Returns the full manifest rows.
    """
    plan_file = folder / PLAN
    if plan_file.is_file():
        old = read_json(plan_file)
        diff = sorted(k for k in set(old["identity"]) | set(ident) if old["identity"].get(k) != ident.get(k))
        if diff:
            details = "; ".join(f"{k}: planned {old['identity'].get(k)!r}, now {ident.get(k)!r}" for k in diff[:5])
            raise ConfigError(f"{folder} already holds a generated set planned with different settings ({details}). "
                              "Use another out_dir, or the same settings to resume or extend it")
        if old["per_class"] >= per_class:
            return manifest_rows(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROGRESS_DIR).mkdir(exist_ok=True)
    write_jsonl(folder / MANIFEST, rows)  # rows are a prefix-stable superset: extending keeps every earlier row
    write_json(plan_file, {"identity": ident, "per_class": per_class, "rows": len(rows)})
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


def remove_shard_temps(folder: Path, rows: list[dict], shard: int, num_shards: int) -> int:
    """Deletes the temp files a killed writer of this shard left (`atomic_open`'s `.<name>.<random>.tmp`).

    Only this shard's files are touched (its images, training copies and stats), so shards running beside it
    lose nothing. Call it holding `shard_lock`. Returns how many were removed.
    """
    own = {folder / r[k] for r in rows for k in ("path", "train_path") if r.get(k)}
    own.add(stats_file(folder, shard, num_shards))
    n = 0
    for parent in {p.parent for p in own}:
        if not parent.is_dir():
            continue
        for tmp in parent.glob(TEMP_GLOB):
            target = parent / tmp.name[1:-len(".tmp")].rsplit(".", 1)[0]
            if target in own:
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def done_rows(folder: Path) -> dict[str, dict]:
    """id -> progress row of every image some shard logged as written (files are written before logging)."""
    return read_progress(folder)


def status(folder: str | Path) -> dict:
    """done/total per class and overall for a generated set, and the work of all shards added up."""
    folder = Path(folder)
    state = completion(folder)
    return {"classes": state["classes"], "done": state["done"], "total": state["total"],
            "redraws": sum(r.get("redraws", 0) for r in done_rows(folder).values()), "stats": set_stats(folder)}


def mend(folder: Path) -> dict:
    """Mends what kills and full disks leave: torn progress-log lines and `atomic_open` temp files.

    Holds the set's lock and every shard's lock, so it refuses (LockedError naming the holder) while a generation
    writes the set.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(set_lock(folder, wait=0.0))
        for d in sorted((folder / LOCKS).glob("shard-*")):
            stack.enter_context(exclusive(d, f"{d.name} of {folder}:", wait=0.0))
        torn = {}
        for log in sorted((folder / PROGRESS_DIR).glob("shard-*.jsonl")):
            if torn_tail(log):
                torn[log.name] = repair_jsonl(log)
        temps = remove_temps(folder, recursive=True)
    return {"torn": torn, "temps": temps}


def validate(folder: str | Path, repair: bool = False) -> dict:
    """Decodes every finished image (and its training copy); lists missing or corrupt ones.

    With `repair`, torn log lines and leftover temp files are removed first (`mend`), and corrupt files are
    deleted so that the next `synthtl generate` run redraws them.
    """
    from synthtl.data.images import load_rgb
    from synthtl.errors import BadImageError

    folder = Path(folder)
    rows = manifest_rows(folder)
    mended = mend(folder) if repair else {"torn": {}, "temps": 0}
    done = done_rows(folder)
    missing, corrupt, checked = [], [], 0
    for r in rows:
        if not (r.get("status") == "done" or r["id"] in done):
            continue
        checked += 1
        for key in ("path", "train_path"):
            rel = r.get(key)
            if not rel:
                continue
            p = folder / rel
            if not p.is_file():
                missing.append(rel)
                continue
            try:
                load_rgb(p)
            except BadImageError:
                corrupt.append(rel)
                if repair:
                    p.unlink()
    return {"checked": checked, "missing": missing, "corrupt": corrupt, "repaired": repair and bool(corrupt),
            **mended}


def finalize(folder: Path, rows: list[dict]) -> bool:
    """Once every planned row is written, rewrites the manifest with status=done and the seeds actually used.

    Call it holding `set_lock`.
    """
    done = done_rows(folder)
    if not all(is_done(r, done, folder) for r in rows):
        return False
    out = []
    for r in rows:
        d = done.get(r["id"], {})
        out.append({**r, "status": "done", "seed": d.get("seed", r["seed"]), "redraws": d.get("redraws", 0)})
    write_jsonl(folder / MANIFEST, out)
    return True
