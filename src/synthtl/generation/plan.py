"""The plan of a generated set: one manifest row per image, written before any image exists.

Every image's seed is derived from (base seed, class index, image index), so any row can be regenerated alone and
the first k rows of each class form the k-per-class subset. The plan's identity (generator, prompts, style, seed,
classes) is stored in plan.json; asking for a different identity in the same folder is refused, while asking for
more images per class extends the plan.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from synthtl.config import GenerateConfig
from synthtl.data.synthetic import MANIFEST, PROGRESS_DIR, read_progress, safe_folder
from synthtl.errors import ConfigError, DataError
from synthtl.files import read_json, read_jsonl, write_json, write_jsonl
from synthtl.runtime import derive_seed

PLAN = "plan.json"
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
    """Unique, file-system-safe folder names (prompts keep the real names)."""
    out, seen = [], set()
    for i, n in enumerate(names):
        f = safe_folder(n)
        if f.lower() in seen:
            f = f"{f}-{i}"
        seen.add(f.lower())
        out.append(f)
    return out


def identity(cfg: GenerateConfig, classes: list[tuple[str, str]], revision: str, dtype: str, templates: list[str],
             style_hash: str) -> dict:
    g, p = cfg.generator, cfg.prompts
    return {"format": FORMAT, "model": g.model, "revision": revision, "scheduler": g.scheduler, "steps": g.steps,
            "guidance": g.guidance, "height": g.height, "width": g.width, "dtype": dtype, "templates": templates,
            "suffix": p.suffix, "negative": p.negative, "style_hash": style_hash, "seed": cfg.seed,
            "classes": [name for _, name in classes], "image_format": cfg.image_format, "quality": cfg.quality,
            "train_copy": cfg.train_copy}


def build_rows(ident: dict, classes: list[tuple[str, str]], per_class: int, prompts: list[list[tuple[str, int]]],
               tokens: list[str]) -> list[dict]:
    """All rows, class-major; `prompts[c][i]` is (prompt, template index) of class c's image i."""
    folders = class_folders([n for _, n in classes])
    ext = EXT[ident["image_format"]]
    rows = []
    for c, (cid, name) in enumerate(classes):
        for i in range(per_class):
            rel = f"{folders[c]}/{i:06d}"
            prompt, t = prompts[c][i]
            rows.append({
                "id": row_id(c, i), "class_index": c, "class_id": cid, "class_name": name, "folder": folders[c],
                "index": i, "prompt": prompt, "negative_prompt": ident["negative"], "template": t,
                "token": tokens[c], "seed": image_seed(ident["seed"], c, i), "model": ident["model"],
                "revision": ident["revision"], "scheduler": ident["scheduler"], "steps": ident["steps"],
                "guidance": ident["guidance"], "height": ident["height"], "width": ident["width"],
                "dtype": ident["dtype"], "style_hash": ident["style_hash"], "path": f"images/{rel}.{ext}",
                "train_path": f"train/{rel}.jpg" if ident["train_copy"] else None, "status": "planned"})
    return rows


def write_or_check(folder: Path, ident: dict, rows: list[dict], per_class: int) -> list[dict]:
    """Writes plan.json + manifest.jsonl, or checks an existing plan and extends it to `per_class` if larger.

    Returns the full manifest rows.
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
            return read_jsonl(folder / MANIFEST)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROGRESS_DIR).mkdir(exist_ok=True)
    write_jsonl(folder / MANIFEST, rows)  # rows are a prefix-stable superset: extending keeps every earlier row
    write_json(plan_file, {"identity": ident, "per_class": per_class, "rows": len(rows)})
    return rows


def done_rows(folder: Path) -> dict[str, dict]:
    """id -> progress row of every image some shard logged as written (files are written before logging)."""
    return read_progress(folder)


def status(folder: str | Path) -> dict:
    """done/total per class and overall for a generated set."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise DataError(f"{folder} has no {MANIFEST}: not a generated set")
    rows = read_jsonl(folder / MANIFEST)
    done = done_rows(folder)
    per_class: dict[str, list[int]] = {}
    for r in rows:
        entry = per_class.setdefault(r["class_name"], [0, 0])
        entry[1] += 1
        ok = (r.get("status") == "done" or r["id"] in done) and (folder / r["path"]).is_file()
        entry[0] += int(ok)
    total = sum(t for _, t in per_class.values())
    finished = sum(d for d, _ in per_class.values())
    return {"classes": per_class, "done": finished, "total": total,
            "redraws": sum(r.get("redraws", 0) for r in done.values())}


def validate(folder: str | Path, repair: bool = False) -> dict:
    """Decodes every finished image (and its training copy); lists missing or corrupt ones.

    With `repair`, corrupt files are deleted so that the next `synthtl generate` run redraws them.
    """
    from synthtl.data.images import load_rgb
    from synthtl.errors import BadImageError

    folder = Path(folder)
    rows = read_jsonl(folder / MANIFEST)
    done = done_rows(folder)
    missing, corrupt = [], []
    for r in rows:
        if not (r.get("status") == "done" or r["id"] in done):
            continue
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
    return {"checked": sum(1 for r in rows if r.get("status") == "done" or r["id"] in done), "missing": missing,
            "corrupt": corrupt, "repaired": repair and bool(corrupt)}


def finalize(folder: Path, rows: list[dict]) -> bool:
    """Once every planned row is written, rewrites the manifest with status=done and the seeds actually used."""
    done = done_rows(folder)
    if not all(r["id"] in done or r.get("status") == "done" for r in rows):
        return False
    out = []
    for r in rows:
        d = done.get(r["id"], {})
        out.append({**r, "status": "done", "seed": d.get("seed", r["seed"]), "redraws": d.get("redraws", 0)})
    write_jsonl(folder / MANIFEST, out)
    return True
