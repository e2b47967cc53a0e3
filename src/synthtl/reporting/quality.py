"""Synthetic-set quality (FID, KID, precision/recall, CLIP score) of every generated set and of each filter's kept
subset against the real train split, with the leakage check of every set and every real train split
(`reporting.leakage`), all from one pass over each image set (`reporting.features`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthtl.config import ReportConfig
from synthtl.data.genset import completed_rows
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.reporting.collect import GenSet, Run
from synthtl.reporting.features import FeatureSpace, Scanned, capped, real_splits, synthetic_list
from synthtl.reporting.filters import FilterRun, collect_filters
from synthtl.reporting.leakage import leakage_tables, set_leakage, train_leakage
from synthtl.reporting.render import Col, Table, dash

# Random subsets of a set, each with a filter's kept counts per class, behind a kept subset's "FID, random same n".
SAME_N_DRAWS = 5


def _clip_scores(cfg: ReportConfig, images: ImageList, prompts: list[str], idx: np.ndarray,
                 device: torch.device) -> dict[int, float] | None:
    """CLIP score of each image `idx` with its prompt (each image read once; a set's rows average their own)."""
    if not cfg.clip_model or not len(idx):
        return None
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(cfg.clip_model).eval().to(device)
        proc = CLIPProcessor.from_pretrained(cfg.clip_model)
    except Exception as e:  # weights missing offline, or not a CLIP model
        warnings.warn(f"CLIP score skipped: {cfg.clip_model!r} could not be loaded ({e})", stacklevel=2)
        return None
    scores = {}
    with torch.no_grad():
        for start in range(0, len(idx), 32):
            batch = [int(i) for i in idx[start:start + 32]]
            inp = proc(text=[prompts[i] for i in batch], images=[load_rgb(images.path(i)) for i in batch],
                       return_tensors="pt", padding=True, truncation=True).to(device)
            out = model(**inp)
            i_emb = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            t_emb = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            scores.update(zip(batch, (100 * (i_emb * t_emb).sum(-1)).clamp(min=0).tolist(), strict=True))
    return scores


def _mean_clip(scores: dict[int, float] | None, used: np.ndarray) -> float | None:
    return float(np.mean([scores[int(i)] for i in used])) if scores is not None and len(used) else None


def distances(space: FeatureSpace, real: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path,
              among: np.ndarray | None = None) -> dict:
    """FID, KID, precision/recall of a synthetic set against the real train images (each capped at max_images).

    Args:
        among: Indices of the synthetic images to measure (a filter's kept images); None = all of them.
    """
    syn_ok = syn.ok
    if among is not None:
        syn_ok = np.zeros_like(syn.ok)
        syn_ok[among] = syn.ok[among]
    r_idx, s_idx = capped(real.ok, cfg.max_images, cfg.features_seed), capped(syn_ok, cfg.max_images,
                                                                               cfg.features_seed)
    f_real, ok_r = real.features_of(space, r_idx, cache)
    f_syn, ok_s = syn.features_of(space, s_idx, cache)
    f_real, f_syn = f_real[ok_r], f_syn[ok_s]
    n_real, n_syn = len(f_real), len(f_syn)
    kid_size = min(cfg.kid_subset_size, n_real, n_syn)
    kid_m, kid_s = kid(f_real, f_syn, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.features_seed)
    prec, rec = precision_recall(f_real, f_syn, cfg.pr_k) if min(n_real, n_syn) > cfg.pr_k else (np.nan, np.nan)
    fd = fid(f_real, f_syn) if min(n_real, n_syn) > 1 else float("nan")
    return {"n_synthetic": n_syn, "n_real": n_real, "dim": space.dim, "fid": fd, "kid": kid_m, "kid_std": kid_s,
            "kid_subset_size": kid_size, "precision": prec, "recall": rec, "synthetic_used": s_idx[ok_s]}


@dataclass
class QualityReport:
    quality: Table
    synthetic_leak: Table
    train_leak: Table
    synthetic_examples: list[dict] = field(default_factory=list)
    train_examples: list[dict] = field(default_factory=list)
    note: str = ""


def _dataset_of(g: GenSet, runs: list[Run]) -> str | None:
    return g.labels.get("dataset") or next((r.labels["dataset"] for r in runs if (r.config.get("synthetic") or {})
                                            .get("path") and Path(r.config["synthetic"]["path"]).name == g.id), None)


def _by_set(found: list[FilterRun]) -> dict[Path, list[FilterRun]]:
    """The finished filters of each set, by the set's folder."""
    by_set: dict[Path, list[FilterRun]] = {}
    for f in found:
        by_set.setdefault(Path(f.set_folder), []).append(f)
    return by_set


def filter_label(set_label: str, f: FilterRun) -> str:
    """"<set label>, filter <name> (kept n of m)": m = images the filter scored (one decision per manifest row)."""
    return f"{set_label}, filter {f.name} (kept {sum(bool(r['kept']) for r in f.rows)} of {len(f.rows)})"


def kept_indices(syn: Scanned, f: FilterRun) -> tuple[np.ndarray | None, str]:
    """Rows of `syn` (the set's finished images) that the filter kept, or None and why they are not measured."""
    where = {p: i for i, p in enumerate(syn.images.paths)}
    kept = [r["path"] for r in f.rows if r["kept"]]
    lost = [p for p in kept if p not in where]
    if lost:  # images deleted since (validate --repair): never measure a guess
        return None, f"{len(lost)} kept images are not finished images of the set (e.g. {lost[0]}); re-run the filter"
    if not kept:
        return None, "the filter keeps no image"
    return np.array(sorted(where[p] for p in kept), dtype=np.int64), ""


def same_n_fid(space: FeatureSpace, real: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path, kept_used: np.ndarray,
               set_used: np.ndarray, draws: int = SAME_N_DRAWS) -> tuple[float, float]:
    """(mean, std) of FID over `draws` seeded random subsets of the set with as many images of each class as the kept
    subset measured (`kept_used`): the FID that the kept subset's n and class counts alone would give.

    Drawn from the images already measured (the set's and the kept subset's), so no image is read again.
    """
    if len(kept_used) < 2:
        return float("nan"), float("nan")
    r_idx = capped(real.ok, cfg.max_images, cfg.features_seed)
    f_real, ok_r = real.features_of(space, r_idx, cache)
    f_real = f_real[ok_r]
    pool = np.union1d(set_used, kept_used)
    labels = np.asarray(syn.images.labels)
    rng = np.random.default_rng(cfg.features_seed)
    values = []
    for _ in range(draws):
        pick = [rng.choice(pool[labels[pool] == c], int((labels[kept_used] == c).sum()), replace=False)
                for c in np.unique(labels[kept_used])]
        f_syn, _ = syn.features_of(space, np.sort(np.concatenate(pick)), cache)  # readable: drawn from measured ones
        values.append(fid(f_real, f_syn) if min(len(f_real), len(f_syn)) > 1 else float("nan"))
    return float(np.mean(values)), float(np.std(values))


def measure_filters(space: FeatureSpace, train: Scanned, syn: Scanned, cfg: ReportConfig, cache: Path, base: dict,
                    filters: list[FilterRun]) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """Distances of the kept subset of each filter of a measured set, from the set's features (rows selected).

    Returns:
        ((record, distances) of each measured subset; the records of the filters not measured).
    """
    measured, unmeasured = [], []
    for f in filters:
        info = {**base, "filter": f.name, "filter_identity": f.summary["filter"], "per_class": f.summary["per_class"],
                "kept": sum(bool(r["kept"]) for r in f.rows), "scored": len(f.rows),
                "_label": filter_label(base["_label"], f)}
        idx, why = kept_indices(syn, f)
        if idx is None:
            unmeasured.append({**info, "not_measured": why})
        else:
            measured.append((info, distances(space, train, syn, cfg, cache, among=idx)))
    return measured, unmeasured


def set_quality(space: FeatureSpace, train: Scanned, syn: Scanned, prompts: list[str], cfg: ReportConfig, cache: Path,
                base: dict, filters: list[FilterRun]) -> tuple[list[dict], list[str]]:
    """Quality records of one set against its real train split: the whole set, then each filter's kept subset.
    `base`: the set's record keys ("set", "dataset", "prompt", "guidance", "_label").

    Returns:
        (records, labels of the rows whose n is below the feature dimension).
    """
    d = distances(space, train, syn, cfg, cache)
    used = d.pop("synthetic_used")
    measured, unmeasured = measure_filters(space, train, syn, cfg, cache, base, filters)
    # one CLIP pass over every image some row measures: a kept image is scored once, for its set and its filters
    clip = _clip_scores(cfg, syn.images, prompts,
                        np.unique(np.concatenate([used] + [fd["synthetic_used"] for _, fd in measured])), space.device)
    caps = {"max_images": cfg.max_images, "kid_subsets": cfg.kid_subsets}
    records = [{**base, "filter": "", **d, **caps, "clip_score": _mean_clip(clip, used)}]
    for info, fd in measured:
        kept_used = fd.pop("synthetic_used")
        same, same_std = same_n_fid(space, train, syn, cfg, cache, kept_used, used)
        records.append({**info, **fd, **caps, "clip_score": _mean_clip(clip, kept_used), "fid_random_same_n": same,
                        "fid_random_same_n_std": same_std, "random_draws": SAME_N_DRAWS})
    small = [r["_label"] for r in records if min(r["n_real"], r["n_synthetic"]) < space.dim]
    return records + unmeasured, small


def _scan_real(runs: list[Run], dataset: str | None, space: FeatureSpace, cache: Path) -> tuple | None:
    """(train, test) of a dataset, scanned (with every feature when they are pretrained: the leakage cosine)."""
    splits = real_splits(runs, dataset) if dataset else None
    if not splits:
        return None
    scanned = tuple(Scanned.of(s) for s in splits)
    if not space.random:
        for s in scanned:
            s.all_features(space, cache)
    return scanned


def _measure_set(g: GenSet, dataset: str | None, real: tuple | None, space: FeatureSpace, cfg: ReportConfig,
                 cache: Path, filters: list[FilterRun]) -> tuple[list[dict], dict | None, list[dict], list[str]]:
    """One generated set: (quality records, leakage record, leakage pairs, labels of rows below the dimension)."""
    rows = {r["path"]: r for r in completed_rows(g.folder)}
    syn = Scanned.of(synthetic_list(g, list(rows.values())))
    label = f"{dataset} / {g.labels.get('prompt')} / guidance {g.settings.get('guidance')}"
    base = {"set": g.id, "dataset": dataset, "prompt": g.labels.get("prompt"), "guidance": g.settings.get("guidance"),
            "_label": label}
    if real is None or not len(syn.images):  # shown, not measured
        return [{"_shown_only": True, "_label": label, "n_synthetic": len(syn.images), "dim": space.dim},
                *[{"_shown_only": True, "_label": filter_label(label, f), "not_measured": "no real train split"}
                  for f in filters]], None, [], []
    train, test = real
    if not space.random:
        syn.all_features(space, cache)
    records, small = set_quality(space, train, syn, [rows[p]["prompt"] for p in syn.images.paths], cfg, cache, base,
                                 filters)
    leak, pairs = set_leakage(base, syn, train, test, [rows[p].get("source") for p in syn.images.paths], cfg,
                              not space.random)
    return records, leak, pairs, small


def quality(runs: list[Run], gensets: list[GenSet], cfg: ReportConfig, cache: Path,
            found_filters: tuple[list[FilterRun], list[str]] | None = None) -> QualityReport:
    """Quality of every generated set (and of each filter's kept subset), and the leakage check of every set and
    every real train split. `found_filters`: `collect_filters(gensets)` when the caller has it already."""
    space = FeatureSpace(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    found, problems = found_filters if found_filters is not None else collect_filters(gensets)
    filters = _by_set(found)
    reals: dict[str | None, tuple | None] = {}
    q_raw, s_raw, examples, small = [], [], [], []
    for g in gensets:
        dataset = _dataset_of(g, runs)
        if dataset not in reals:
            reals[dataset] = _scan_real(runs, dataset, space, cache)
        records, leak, pairs, low = _measure_set(g, dataset, reals[dataset], space, cfg, cache,
                                                 filters.get(Path(g.folder), []))
        q_raw, s_raw, examples, small = q_raw + records, s_raw + ([leak] if leak else []), examples + pairs, small + low
    t_raw, train_examples = train_leakage(reals, cfg, not space.random)
    note, q_note = _notes(cfg, space, bool(filters), problems, small)
    cols = COLUMNS if filters else COLUMNS[:-1]  # the last column is for filter rows only
    q = Table("quality", "Synthetic-set quality against the real train split", cols, q_raw, q_note)
    return QualityReport(q, *leakage_tables(s_raw, t_raw, cfg, space, bool(filters)), examples, train_examples, note)


def _notes(cfg: ReportConfig, space: FeatureSpace, with_filters: bool, problems: list[str],
           small: list[str]) -> tuple[str, str]:
    """(the feature space, the quality table's note); warns about the rows whose n is below the dimension."""
    note = f"feature space: {space.name}, {space.dim} dimensions" + (f" — {space.warning}" if space.warning else "")
    q_note = (f"{note}; images resized the clean-fid way (PIL bicubic per channel to {space.size} px, no crop); "
              f"n = every readable image of a set, at most report.max_images = {cfg.max_images} (a seeded sample "
              f"above it); KID: {cfg.kid_subsets} subsets of {cfg.kid_subset_size} images (or of the smaller set's n), "
              f"mean ± std; precision/recall k={cfg.pr_k}")
    if with_filters or problems:
        q_note += (". Filters (ours): a row '<set>, filter <name> (kept n of m)' measures the images of the filter's "
                   "kept list of its largest volume (<set>/filters/<name>/kept/<V>.json: its rule on the first V "
                   "images of each class), as the set's own row measures the whole set; a run with "
                   "synthetic.filter=<name> and synthetic.per_class=k trains on the kept list of k. Its features are "
                   "the set's (rows selected; no image is read again). FID is biased upward "
                   f"at smaller n, so 'FID, random same n' gives the mean ± std FID of {SAME_N_DRAWS} seeded random "
                   "subsets of the set with the kept subset's n per class: the filter helps where its FID is below "
                   "that, not merely below the set's (a CLIP filter raises the CLIP score by construction)")
    if problems:
        q_note += f". Filters not measured (their files cannot be read): {'; '.join(problems)}"
    if small:
        msg = (f"n below the feature dimension ({space.dim}) for {len(small)} set(s) ({'; '.join(small)}): the "
               "covariances are singular, so FID is biased upward and only comparable between sets of equal n")
        warnings.warn(msg, stacklevel=3)
        q_note += f". WARNING: {msg}"
    return note, q_note


def _pm(digits: int):
    return lambda m, s: "–" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


COLUMNS = [
    Col("set", ("_label", "not_measured"), lambda label, why: label if why is None else
        f"{label} — not measured ({why})"),
    Col("n synthetic", "n_synthetic", dash()), Col("n real (train)", "n_real", dash()),
    Col("feature dim", "dim", dash()), Col("FID ↓", "fid", dash("{:.2f}")), Col("KID ↓", ("kid", "kid_std"), _pm(4)),
    Col("precision ↑", "precision", dash("{:.3f}")), Col("recall ↑", "recall", dash("{:.3f}")),
    Col("CLIP score ↑", ("clip_score", "fid"),  # measured without a CLIP model: n/a
        lambda clip, fid: "–" if fid is None else "n/a" if clip is None else f"{clip:.2f}"),
    Col("FID, random same n ↓", ("fid_random_same_n", "fid_random_same_n_std"), _pm(2))]
