"""`synthtl filter <set>`: score the images not scored yet (every session's cost counted), then write an immutable kept
list per volume (`store`). One writer per filter (a lock); a name used with another config is refused."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

import synthtl
from synthtl import identity
from synthtl.config import FilterConfig
from synthtl.data.genset import completion, read_state
from synthtl.data.images import load_rgb
from synthtl.errors import BadImageError, ConfigError, DataError, SynthTLError
from synthtl.files import append_jsonl, exclusive, git_sha, read_json, remove_temps, write_json
from synthtl.filtering import store
from synthtl.filtering.decide import decide
from synthtl.filtering.scorers import Scorer, check_source, load_scorer
from synthtl.runtime import is_main, resolve_runtime


def run_filter(cfg: FilterConfig) -> dict:
    """Scores (or resumes) a set's images, writes the kept lists asked for; returns the largest volume's."""
    if not cfg.set_dir:
        raise ConfigError("which set? `synthtl filter <generated set> keep.top_k=... [key=value ...]`")
    if not cfg.keep.rule:
        raise ConfigError("choose what to keep: keep.top_k=K (per class), keep.fraction=F (per class) or "
                          "keep.threshold=T (score above T)")
    folder = Path(cfg.set_dir)
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder; give a generated set (the out_dir of `synthtl generate`)")
    state = read_state(folder)  # refuses a folder that is not a generated set
    name = cfg.name or cfg.method
    out = store.filter_dir(folder, name)
    if not out.is_dir():
        # A new filter: cheap refusals (source, device) come before its folder and lock exist: nothing left behind.
        check_source(cfg)
        resolve_runtime(cfg.device, "fp32")
    ident = identity.identity(cfg)
    with exclusive(out, f"filter {name!r}:", wait=0.0):
        remove_temps(out, recursive=True)  # what a killed writer of a kept list left (we hold the lock)
        identity.check(out, "filter", ident)  # the name is claimed once its model has loaded (`_run`)
        return _run(cfg, state, out, ident)


def _run(cfg: FilterConfig, state, out: Path, ident: dict) -> dict:
    folder, name = state.rows.folder, out.name
    wanted = store.volumes(folder, list(cfg.per_class))
    top = max(wanted)
    if top > state.rows.per_class:
        raise DataError(f"filter per_class={top} but {folder} plans {state.rows.per_class} images per class; "
                        "generate more first")
    progress = completion(state, top)
    if not progress["complete"]:
        raise DataError(f"generated set {folder} is unfinished: {progress['done']} of {progress['total']} images of "
                        f"the first {top} per class are done; resume `synthtl generate`, then filter it")
    todo_lists = [v for v in wanted if not store.kept_file(out, v).is_file()]
    if not todo_lists:
        if is_main():
            print(f"[synthtl] filter {name!r} of {folder} is already finished; nothing to do")
        return read_json(store.kept_file(out, top))
    rows = [state.completed_row(p) for p in range(len(state.rows)) if state.rows.idx[p] < top]
    scored = store.read_scores(out)
    todo = [r for r in rows if r["id"] not in scored]
    rt = resolve_runtime(cfg.device, "fp32")  # fp32 on every device: half precision would move scores near ties
    if todo:
        t0 = time.perf_counter()
        scorer = load_scorer(cfg, sorted({(r["class_index"], r["class_id"], r["class_name"]) for r in rows}), rt.device)
    identity.claim(out, "filter", ident)  # once the model has loaded: a model that failed to load leaves the name free
    if todo:
        _score(cfg, scorer, folder, out, todo, rt, t0)
    scores = store.read_scores(out)
    for v in todo_lists:
        scored = [scores[r["id"]] for r in rows if r["index"] < v]
        write_json(store.kept_file(out, v), kept_list(cfg, scored, v, identity.digest(ident)))
    kept = read_json(store.kept_file(out, top))
    if is_main():
        print(f"[synthtl] filter {name!r}: scored {len(todo)} images ({len(rows) - len(todo)} already), kept "
              f"{kept['kept']} of {kept['scored']} ({cfg.keep.rule}, first {top} per class) -> {out}")
        if kept["empty_classes"]:
            print(f"[synthtl] warning: filter {name!r} keeps no image of {len(kept['empty_classes'])} classes "
                  f"(e.g. {kept['empty_classes'][:5]}); training on it will refuse them: lower keep.threshold")
    return kept


def kept_list(cfg: FilterConfig, scored: list[dict], per_class: int, ident: str) -> dict:
    """The kept list of a volume: the rule applied to `scored` (the first `per_class` images of each class)."""
    decided = decide(scored, cfg.keep)
    paths = sorted(s["path"] for s in scored if decided[s["id"]]["kept"])
    counts: dict[str, dict] = {}
    for s in scored:
        c = counts.setdefault(s["class_name"], {"scored": 0, "kept": 0, "top1": 0})
        c["scored"] += 1
        c["kept"] += int(decided[s["id"]]["kept"])
        c["top1"] += int(s["top1"])
    return {"name": cfg.name or cfg.method, "filter": ident, "per_class": per_class, "method": cfg.method,
            "score": cfg.score, "keep": {"rule": cfg.keep.rule, "value": getattr(cfg.keep, cfg.keep.rule)},
            "scored": len(scored), "kept": len(paths), "counts": counts,
            "empty_classes": sorted(n for n, c in counts.items() if c["kept"] == 0),
            "paths": paths, "digest": store.kept_digest(paths), "git_sha": git_sha(), "synthtl": synthtl.__version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _load(folder: Path, row: dict):
    path = folder / store.image_of(row)
    try:
        return load_rgb(path)
    except BadImageError as e:
        raise DataError(f"cannot read {path} ({e.reason}); run `synthtl generate --validate {folder} --repair`, "
                        "resume the generation, then filter again") from None


def score_batch(scorer: Scorer, images: list, rows: list[dict], score: str) -> list[dict]:
    """Score rows of one batch: own-class probability and logit, the chosen score, the top-1 prediction."""
    with torch.inference_mode():
        logits = scorer.logits(scorer.prepare(images)).float().cpu()
    if not torch.isfinite(logits).all():
        raise SynthTLError(f"the {scorer.kind} scorer gave non-finite logits for images of "
                           f"{rows[0]['class_name']!r} (e.g. {rows[0]['path']}); check the model's weights")
    probs, pred = logits.softmax(dim=1), logits.argmax(dim=1).tolist()
    out = []
    for i, r in enumerate(rows):
        t = scorer.targets[r["class_index"]]
        p, lg = float(probs[i, t]), float(logits[i, t])
        out.append({"id": r["id"], "path": r["path"], "image": store.image_of(r), "class_index": r["class_index"],
                    "class_name": r["class_name"], "index": r["index"], "score": p if score == "prob" else lg,
                    "prob": p, "logit": lg, "pred": pred[i], "pred_name": scorer.labels[pred[i]],
                    "top1": pred[i] == t})
    return out


def _score(cfg: FilterConfig, scorer: Scorer, folder: Path, out: Path, todo: list[dict], rt, t0: float) -> None:
    """Scores `todo`, decoding one batch ahead; each batch is one append of scores with their share of the seconds since
    the previous batch (the first also counts model loading, from `t0`): a killed session's cost counts, never twice."""
    session = f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}-{uuid.uuid4().hex[:8]}"
    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    bar = tqdm(total=len(todo), desc=f"filter {out.name}", unit="img", disable=not (cfg.progress and is_main()))
    with ThreadPoolExecutor(cfg.workers) as pool:
        ahead = [pool.submit(_load, folder, r) for r in batches[0]]
        try:
            for batch, after in zip(batches, [*batches[1:], []], strict=True):
                images = [f.result() for f in ahead]
                ahead = [pool.submit(_load, folder, r) for r in after]
                rows = score_batch(scorer, images, batch, cfg.score)
                now = time.perf_counter()
                share = (now - t0) / len(rows)
                append_jsonl(out / store.SCORES, [{**r, "session": session, "seconds": share,
                                                   "gpu_seconds": share * rt.gpus} for r in rows])
                t0 = now
                bar.update(len(batch))
        finally:
            for f in ahead:
                f.cancel()
            bar.close()
