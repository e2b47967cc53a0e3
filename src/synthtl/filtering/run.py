"""`synthtl filter <set>`: check -> score the rows not scored yet (append-only log) -> decide -> write decisions.

Resumable: every batch of scores is appended to scores.jsonl once scored, so a killed run loses at most the batch in
flight and a re-run scores only the rows the log lacks (never one twice). Each batch also appends its wall and GPU
seconds to cost.jsonl, so filter.json's "cost" sums every session, a killed one included. A finished filter whose set
has not changed is a no-op (and adds no cost); a set extended since (more images per class) gets its new rows scored
and the decisions redone. One writer per filter (a lock); a different config under an existing filter name is
refused.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

import synthtl
from synthtl.config import FilterConfig, to_dict
from synthtl.data.images import load_rgb
from synthtl.data.synthetic import MANIFEST, completed_rows, completion
from synthtl.errors import BadImageError, ConfigError, DataError, SynthTLError
from synthtl.files import (
    append_jsonl,
    exclusive,
    git_sha,
    iter_jsonl,
    read_json,
    remove_temps,
    sha256_file,
    write_json,
    write_jsonl,
)
from synthtl.filtering import store
from synthtl.filtering.decide import decide
from synthtl.filtering.scorers import Scorer, check_source, load_scorer
from synthtl.runtime import is_main, resolve_runtime

# Keys that never change scores or decisions: where things live, how fast, how shown. The scoring model is identified
# by its weights' hash and preprocessing (spec.json "model"), so where it lives (clip.model, classifier.run: a hub id
# or a path) is not part of the config that is compared; spec.json keeps it as "source" to notice a change.
VOLATILE = ("set_dir", "name", "batch_size", "workers", "device", "progress", "clip.model", "classifier.run",
            "classifier.data_root")


def spec_config(cfg: FilterConfig) -> dict:
    """The filter's config without volatile keys and without the section of the method it does not use."""
    d = _without_volatile(to_dict(cfg))
    d.pop("classifier" if cfg.method == "clip" else "clip")
    if cfg.method == "classifier":
        d.pop("classifier")  # only volatile keys were left in it
    return d


def _without_volatile(config: dict) -> dict:
    """A config dict less the VOLATILE keys it has (spec.json files written before a key became volatile have it)."""
    d = json.loads(json.dumps(config))
    for key in VOLATILE:
        section, _, leaf = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(leaf, None)
    return d


def _source(cfg: FilterConfig) -> str:
    """Where the scoring model comes from, as given (a hub id or a path)."""
    return cfg.clip.model if cfg.method == "clip" else cfg.classifier.run


def _check_set(folder: Path) -> None:
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder; give a generated set (the out_dir of `synthtl generate`)")
    if not (folder / MANIFEST).is_file() or not (folder / "plan.json").is_file():
        raise DataError(f"{folder} is not a generated set (no {MANIFEST} and plan.json); give the out_dir of "
                        "`synthtl generate`")
    state = completion(folder)
    if not state["complete"]:
        raise DataError(f"generated set {folder} is unfinished: {state['done']} of {state['total']} planned images "
                        "are done; resume `synthtl generate` with the same config, then filter it")


def _check_spec(out: Path, spec: dict) -> None:
    """Refuses a filter name already used with a different config or for a re-planned set."""
    old = read_json(out / store.SPEC)
    old = {**old, "config": _without_volatile(old["config"])}
    keys = ("config", "set_plan")
    if all(old.get(k) == spec[k] for k in keys):
        return
    if old.get("set_plan") != spec["set_plan"]:
        raise ConfigError(f"filter {out.name!r} of {out.parent.parent} was made for another plan of this set; delete "
                          f"{out} to filter it again")
    diff = [k for k in sorted(set(_flat(old["config"])) | set(_flat(spec["config"])))
            if _flat(old["config"]).get(k) != _flat(spec["config"]).get(k)]
    details = "; ".join(f"{k}: {_flat(old['config']).get(k)!r} there, {_flat(spec['config']).get(k)!r} now"
                        for k in diff[:4])
    raise ConfigError(f"filter {out.name!r} of {out.parent.parent} exists with another config ({details}); choose "
                      f"another name=..., or delete {out} to replace it")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_filter(cfg: FilterConfig) -> dict:
    """Scores (or resumes scoring) every image of a finished generated set and keeps the best; returns filter.json."""
    if not cfg.set_dir:
        raise ConfigError("which set? `synthtl filter <generated set> keep.top_k=... [key=value ...]`")
    if not cfg.keep.rule:
        raise ConfigError("choose what to keep: keep.top_k=K (per class), keep.fraction=F (per class) or "
                          "keep.threshold=T (score above T)")
    folder = Path(cfg.set_dir)
    _check_set(folder)
    name = cfg.name or cfg.method
    out = store.filter_dir(folder, name)
    if not out.is_dir():
        # A new filter: what is refused without loading the model (its source, the device) is refused before the
        # filter's folder (and its lock) exists, so nothing is left behind. An existing filter meets the same checks
        # when its model is loaded (a finished one needs neither to be a no-op).
        check_source(cfg)
        resolve_runtime(cfg.device, "fp32")
    with exclusive(out, f"filter {name!r}:", wait=0.0):
        remove_temps(out)  # what a killed writer of spec.json, decisions.jsonl or filter.json left (we hold the lock)
        return _run(cfg, folder, out, name)


def _run(cfg: FilterConfig, folder: Path, out: Path, name: str) -> dict:
    spec = {"format": store.FORMAT, "method": cfg.method, "config": spec_config(cfg),
            "set_plan": store.plan_hash(folder)}
    if (out / store.SPEC).is_file():
        _check_spec(out, spec)
    elif (out / store.SCORES).is_file():
        raise DataError(f"{out} has scores but no {store.SPEC} (deleted?); delete {out} and filter again")
    rows = sorted(completed_rows(folder), key=lambda r: (r["class_index"], r["index"]))
    digest = store.rows_digest(rows)
    if (out / store.SUMMARY).is_file():
        summary = read_json(out / store.SUMMARY)
        if summary["set"]["rows_digest"] == digest and sha256_file(out / store.DECISIONS) == \
                summary["decisions_sha256"]:
            if read_json(out / store.SPEC).get("source") != _source(cfg):  # moved, or other weights: load to know
                _checked_scorer(cfg, folder, out, name, spec, rows, torch.device("cpu"))
            if is_main():
                print(f"[synthtl] filter {name!r} of {folder} is already finished; nothing to do "
                      f"(kept {summary['kept']} of {summary['scored']})")
            return summary
    scored = store.read_scores(out)
    wanted = {r["id"] for r in rows}
    stale = sorted(set(scored) - wanted)
    if stale:  # the set lost rows (a plan cannot shrink): these scores belong to another set
        raise DataError(f"{out / store.SCORES} scores {len(stale)} rows the set does not have (e.g. {stale[:3]}); "
                        f"delete {out} and filter again")
    todo = [r for r in rows if r["id"] not in scored]
    t0 = time.perf_counter()
    session = f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}-{uuid.uuid4().hex[:8]}"
    rt = resolve_runtime(cfg.device, "fp32")  # fp32 on every device: half precision would move scores near ties
    _carry_old_cost(out)
    if todo:
        scorer = _checked_scorer(cfg, folder, out, name, spec, rows, rt.device)
        _score(cfg, scorer, folder, out, todo, _cost_log(out, session, t0, rt.device, rt.gpus))
    return _finish(cfg, folder, out, name, rows, digest, read_json(out / store.SPEC), session, rt.device)


def _cost_log(out: Path, session: str, t0: float, device: torch.device, gpus: int) -> Callable[[int], None]:
    """A function that appends one row to the cost log after each scored batch: the seconds since the last row (the
    first row of a session also counts loading the model), so a killed session has cost up to its last batch."""
    last = [t0]

    def log(n: int) -> None:
        now = time.perf_counter()
        append_jsonl(out / store.COST, [{"session": session, "scored": n, "seconds": now - last[0],
                                         "gpu_seconds": (now - last[0]) * gpus, "device": str(device)}])
        last[0] = now

    return log


def _carry_old_cost(out: Path) -> None:
    """A filter finished before cost.jsonl existed: its filter.json's cost (its last session) starts the log, so the
    new sessions add to it instead of replacing it."""
    if (out / store.COST).is_file() or not (out / store.SUMMARY).is_file():
        return
    cost = store.filter_cost(read_json(out / store.SUMMARY))
    if cost["sessions"]:
        append_jsonl(out / store.COST, [{"session": "carried from filter.json", "scored": cost["scored"],
                                         "seconds": cost["seconds"], "gpu_seconds": cost["gpu_seconds"],
                                         "device": "unknown"}])


def _checked_scorer(cfg: FilterConfig, folder: Path, out: Path, name: str, spec: dict, rows: list[dict],
                    device: torch.device) -> Scorer:
    """The scorer of `cfg`, refused if the filter was scored with another model (other weights at the same path, or at
    another one); spec.json is written (first time) or its "source" updated (the same weights, moved)."""
    classes = sorted({(r["class_index"], r.get("class_id", r["class_name"]), r["class_name"]) for r in rows})
    scorer = load_scorer(cfg, classes, device)
    if not (out / store.SPEC).is_file():
        write_json(out / store.SPEC, {**spec, "model": scorer.identity, "source": _source(cfg)})
        return scorer
    old = read_json(out / store.SPEC)
    if old["model"] != scorer.identity:
        raise ConfigError(f"filter {name!r} of {folder} was scored with another model "
                          f"({_model_diff(old['model'], scorer.identity)}); choose another name=..., or delete {out} "
                          "to replace it")
    if old.get("source") != _source(cfg):
        write_json(out / store.SPEC, {**old, "source": _source(cfg)})
    return scorer


def _model_diff(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {str(old.get(k))[:40]!r} there, {str(new.get(k))[:40]!r} now" for k in keys[:3])


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
        raise SynthTLError(f"the {scorer.identity['kind']} scorer gave non-finite logits for images of "
                           f"{rows[0]['class_name']!r} (e.g. {rows[0]['path']}); check the model's weights")
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1).tolist()
    out = []
    for i, r in enumerate(rows):
        t = scorer.targets[r["class_index"]]
        p, lg = float(probs[i, t]), float(logits[i, t])
        out.append({"id": r["id"], "path": r["path"], "image": store.image_of(r), "class_index": r["class_index"],
                    "class_name": r["class_name"], "index": r["index"], "score": p if score == "prob" else lg,
                    "prob": p, "logit": lg, "pred": pred[i], "pred_name": scorer.labels[pred[i]],
                    "top1": pred[i] == t})
    return out


def _score(cfg: FilterConfig, scorer: Scorer, folder: Path, out: Path, todo: list[dict],
           logged: Callable[[int], None]) -> None:
    """Scores `todo` in batches; each batch is appended to the log once scored, then `logged(len(batch))` is called
    (images decode one batch ahead)."""
    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    bar = tqdm(total=len(todo), desc=f"filter {out.name}", unit="img", disable=not (cfg.progress and is_main()))
    with ThreadPoolExecutor(cfg.workers) as pool:
        def submit(batch: list[dict]) -> list[Future]:
            return [pool.submit(_load, folder, r) for r in batch]

        ahead = submit(batches[0]) if batches else []
        try:
            for b, batch in enumerate(batches):
                images = [f.result() for f in ahead]
                ahead = submit(batches[b + 1]) if b + 1 < len(batches) else []
                append_jsonl(out / store.SCORES, score_batch(scorer, images, batch, cfg.score))
                logged(len(batch))
                bar.update(len(batch))
        finally:
            for f in ahead:
                f.cancel()
            bar.close()


def _finish(cfg: FilterConfig, folder: Path, out: Path, name: str, rows: list[dict], digest: str, spec: dict,
            session: str, device: torch.device) -> dict:
    """Decisions from every logged score, then filter.json (written last: its presence means finished)."""
    scores = store.read_scores(out)
    missing = [r["id"] for r in rows if r["id"] not in scores]
    if missing:  # cannot happen after _score; a guard against a log edited while we held the lock
        raise DataError(f"{out / store.SCORES} lacks {len(missing)} rows after scoring (e.g. {missing[:3]}); re-run")
    scored = [scores[r["id"]] for r in rows]
    decided = decide(scored, cfg.keep)
    decisions = [{k: s[k] for k in ("id", "path", "image", "class_index", "class_name", "index", "score")}
                 | decided[s["id"]] for s in scored]
    write_jsonl(out / store.DECISIONS, decisions)
    counts: dict[str, dict] = {}
    for s, d in zip(scored, decisions, strict=True):
        c = counts.setdefault(s["class_name"], {"scored": 0, "kept": 0, "top1": 0})
        c["scored"] += 1
        c["kept"] += int(d["kept"])
        c["top1"] += int(s["top1"])
    # The kept rows, not the scores: scores move in their last bits with the batch size and the device (batches of 3
    # or 4, CPU or GPU), which must not make the same filter another one for the runs that train on it.
    ident = hashlib.sha256(json.dumps({"config": spec["config"], "model": spec["model"], "rows": digest,
                                       "kept": sorted(d["id"] for d in decisions if d["kept"])},
                                      sort_keys=True).encode()).hexdigest()[:16]
    keep = cfg.keep
    log = list(iter_jsonl(out / store.COST)) if (out / store.COST).is_file() else []
    mine = [c for c in log if c["session"] == session]
    n_new, seconds = sum(c["scored"] for c in mine), sum(c["seconds"] for c in mine)
    summary = {
        "format": store.FORMAT, "name": name, "method": cfg.method, "score": cfg.score,
        "keep": {"rule": keep.rule, "value": {"top_k": keep.top_k, "threshold": keep.threshold,
                                              "fraction": keep.fraction}[keep.rule]},
        "config": spec["config"], "model": spec["model"],
        "set": {"plan": spec["set_plan"], "rows": len(rows), "rows_digest": digest},
        "scored": len(scored), "kept": sum(int(d["kept"]) for d in decisions), "counts": counts,
        "empty_classes": sorted(n for n, c in counts.items() if c["kept"] == 0),
        "decisions_sha256": sha256_file(out / store.DECISIONS), "identity": ident,
        "session": {"scored": n_new, "seconds": seconds, "gpu_seconds": sum(c["gpu_seconds"] for c in mine),
                    "images_per_s": n_new / seconds if seconds else 0.0, "device": str(device)},
        "cost": store.read_cost(out),  # every session, killed ones included; a finished re-run adds nothing
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_sha": git_sha(),
        "synthtl": synthtl.__version__,
    }
    write_json(out / store.SUMMARY, summary)
    if is_main():
        print(f"[synthtl] filter {name!r}: scored {n_new} images ({len(scored) - n_new} already), kept "
              f"{summary['kept']} of {len(scored)} ({keep.rule}={summary['keep']['value']}) -> {out}")
        if summary["empty_classes"]:
            print(f"[synthtl] warning: filter {name!r} keeps no image of {len(summary['empty_classes'])} classes "
                  f"(e.g. {summary['empty_classes'][:5]}); training on it will refuse them: lower keep.threshold")
    return summary
