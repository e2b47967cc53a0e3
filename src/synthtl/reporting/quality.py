"""Synthetic-set quality (FID, KID, precision/recall, CLIP score) of every generated set and filter's kept subset, and
the leakage check: every synthetic and real train image against every test image, near-duplicates by perceptual hash
(and feature cosine when pretrained), closest pairs listed. One pass over each image set (`reporting.features`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from synthtl.config import ReportConfig
from synthtl.data.genset import completed_rows
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.metrics.distances import fid, kid, precision_recall
from synthtl.metrics.leakage import Search, expected_matches, near_duplicates
from synthtl.reporting.collect import GenSet, Run
from synthtl.reporting.features import FeatureSpace, Scanned, capped, real_splits, synthetic_list
from synthtl.reporting.filters import FilterRun, collect_filters
from synthtl.reporting.render import Col, Table, dash

# Random subsets of a set, each with a filter's kept counts per class, behind a kept subset's "FID, random same n".
SAME_N_DRAWS = 5


def _clip_scores(cfg: ReportConfig, images: ImageList, prompts: list[str], idx: np.ndarray, device) -> dict | None:
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
            i_emb, t_emb = (torch.nn.functional.normalize(e, dim=-1) for e in (out.image_embeds, out.text_embeds))
            scores.update(zip(batch, (100 * (i_emb * t_emb).sum(-1)).clamp(min=0).tolist(), strict=True))
    return scores


def _mean_clip(scores: dict[int, float] | None, used: np.ndarray) -> float | None:
    return float(np.mean([scores[int(i)] for i in used])) if scores is not None and len(used) else None


def distances(space: FeatureSpace, f_real: np.ndarray, syn: Scanned, among: np.ndarray | None = None) -> dict:
    """FID, KID, precision/recall of a set (capped at max_images; `among`: a subset) against real train features."""
    cfg = space.cfg
    ok = syn.ok if among is None else syn.ok & np.isin(np.arange(len(syn.ok)), among)
    f_syn, used = syn.features_of(space, capped(ok, cfg.max_images, cfg.features_seed))
    n_real, n_syn = len(f_real), len(f_syn)
    kid_m, kid_s = kid(f_real, f_syn, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.features_seed)
    prec, rec = precision_recall(f_real, f_syn, cfg.pr_k) if min(n_real, n_syn) > cfg.pr_k else (np.nan, np.nan)
    return {"n_synthetic": n_syn, "n_real": n_real, "dim": space.dim,
            "fid": fid(f_real, f_syn) if min(n_real, n_syn) > 1 else float("nan"), "kid": kid_m, "kid_std": kid_s,
            "kid_subset_size": min(cfg.kid_subset_size, n_real, n_syn), "precision": prec, "recall": rec,
            "synthetic_used": used}


class QualityReport(NamedTuple):
    quality: Table
    synthetic_leak: Table
    train_leak: Table
    synthetic_examples: list[dict]  # the closest pairs, to look at (`Page.pairs`)
    train_examples: list[dict]


def filter_label(set_label: str, f: FilterRun) -> str:
    """"<set label>, filter <name> (kept n of m)": m = images the filter scored (one decision per manifest row)."""
    return f"{set_label}, filter {f.name} (kept {sum(bool(r['kept']) for r in f.rows)} of {len(f.rows)})"


def same_n_fid(space: FeatureSpace, f_real: np.ndarray, syn: Scanned, kept_used: np.ndarray, set_used: np.ndarray):
    """(mean, std) FID of SAME_N_DRAWS seeded random subsets of the set with the kept subset's count per class: what its
    n and class counts alone would give. Drawn from the images already measured, so no image is read again."""
    if len(kept_used) < 2:
        return float("nan"), float("nan")
    pool = np.union1d(set_used, kept_used)
    labels = np.asarray(syn.images.labels)
    rng = np.random.default_rng(space.cfg.features_seed)
    values = []
    for _ in range(SAME_N_DRAWS):
        pick = [rng.choice(pool[labels[pool] == c], int((labels[kept_used] == c).sum()), replace=False)
                for c in np.unique(labels[kept_used])]
        f_syn, _ = syn.features_of(space, np.sort(np.concatenate(pick)))
        values.append(fid(f_real, f_syn) if min(len(f_real), len(f_syn)) > 1 else float("nan"))
    return float(np.mean(values)), float(np.std(values))


def set_quality(space: FeatureSpace, train: Scanned, syn: Scanned, prompts: list[str], base: dict,
                filters: list[FilterRun]) -> tuple[list[dict], list[str]]:
    """Quality records of one set (`base`: its record keys) against its real train split: the whole set, each filter's
    kept subset (the set's features, rows selected), then the filters not measured; and the rows below the dimension."""
    cfg = space.cfg
    f_real, _ = train.features_of(space, capped(train.ok, cfg.max_images, cfg.features_seed))
    d = distances(space, f_real, syn)
    used = d.pop("synthetic_used")
    measured, unmeasured, where = [], [], {p: i for i, p in enumerate(syn.images.paths)}
    for f in filters:
        info = {**base, "filter": f.name, "filter_identity": f.summary["filter"], "per_class": f.summary["per_class"],
                "kept": sum(bool(r["kept"]) for r in f.rows), "scored": len(f.rows),
                "_label": filter_label(base["_label"], f)}
        kept = [r["path"] for r in f.rows if r["kept"]]
        if lost := [p for p in kept if p not in where]:  # images deleted since (validate --repair): never a guess
            unmeasured.append({**info, "not_measured": f"{len(lost)} kept images are not finished images of the set "
                                                       f"(e.g. {lost[0]}); re-run the filter"})
        elif not kept:
            unmeasured.append({**info, "not_measured": "the filter keeps no image"})
        else:
            fd = distances(space, f_real, syn, among=np.array(sorted(where[p] for p in kept), dtype=np.int64))
            measured.append((info, fd.pop("synthetic_used"), fd))
    # one CLIP pass over every image some row measures: a kept image is scored once, for its set and its filters
    clip = _clip_scores(cfg, syn.images, prompts, np.unique(np.concatenate([used] + [u for _, u, _ in measured])),
                        space.device)
    caps = {"max_images": cfg.max_images, "kid_subsets": cfg.kid_subsets}
    records = [{**base, "filter": "", **d, **caps, "clip_score": _mean_clip(clip, used)}]
    for info, kept_used, fd in measured:
        same, same_std = same_n_fid(space, f_real, syn, kept_used, used)
        records.append({**info, **fd, **caps, "clip_score": _mean_clip(clip, kept_used), "fid_random_same_n": same,
                        "fid_random_same_n_std": same_std, "random_draws": SAME_N_DRAWS})
    small = [r["_label"] for r in records if min(r["n_real"], r["n_synthetic"]) < space.dim]
    return records + unmeasured, small


# --------------------------------------------------------------------------------------------- the leakage check
def _inputs(a: Scanned, b: Scanned, space: FeatureSpace, listed: int) -> tuple:
    """(features of a, of b, readable in a, in b, a search listing `listed` pairs); features only when pretrained."""
    search = Search(space.cfg.leak_hash_bits, space.cfg.leak_cosine, space.cfg.leak_chunk, listed)
    if space.random:
        return None, None, a.ok, b.ok, search
    return a.features, b.features, a.ok & a.feature_ok, b.ok & b.feature_ok, search


def leakage_row(a: Scanned, role: str, test: Scanned, label: str, space: FeatureSpace) -> tuple[dict, list[dict]]:
    """Every image of `a` (`role`: synthetic or train) against every test image: counts and the closest pairs."""
    fa, fb, a_ok, b_ok, search = _inputs(a, test, space, space.cfg.leak_max_listed)
    n_pairs, n_flagged, pairs = near_duplicates(a.hashes, test.hashes, fa, fb, search, a_ok, b_ok)
    row = {f"{role}_images": len(a.images), f"{role}_checked": int(a_ok.sum()), "test_images": len(test.images),
           "test_checked": int(b_ok.sum()), "unreadable": int((~a_ok).sum() + (~b_ok).sum()),
           "near_duplicates": n_pairs, f"{role}_flagged": n_flagged}
    examples = []
    for p in pairs:
        info = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()
                         if k in ("hash_bits", "cosine"))
        examples.append({"left": a.images.path(p["image"]), "left_caption": a.describe(p["image"], role),
                         "right": test.images.path(p["test"]), "right_caption": test.describe(p["test"], "test"),
                         "caption": f"{label}: {info}"})
    return row, examples


def source_row(syn: Scanned, train: Scanned, sources: list[str | None], space: FeatureSpace) -> dict:
    """An img2img set's outputs against every real train image (text-to-image: img2img=False only). Each output's own
    source is an expected pair, counted apart ("own_source_pairs"); the test check (`leakage_row`) is unchanged."""
    if not any(sources):
        return {"img2img": False}
    where = {p: j for j, p in enumerate(train.images.paths)}
    expected = np.array([where.get(s, -1) if s else -1 for s in sources], dtype=np.int64)
    fa, fb, a_ok, b_ok, search = _inputs(syn, train, space, 0)
    n_pairs, n_flagged, _ = near_duplicates(syn.hashes, train.hashes, fa, fb, search, a_ok, b_ok, expected)
    own = expected_matches(syn.hashes, train.hashes, expected, fa, fb, search, a_ok, b_ok)
    return {"img2img": True, "own_source_pairs": int(own.sum()), "other_train_pairs": n_pairs,
            "other_train_flagged": n_flagged, "sources_not_in_train": int((expected < 0).sum())}


def _counts(first: Col, role: str) -> list[Col]:
    return [first, Col(f"{role} checked", f"{role}_checked"), Col("test checked", "test_checked"),
            Col("unreadable", "unreadable"), Col("near-duplicate pairs", "near_duplicates"),
            Col(f"{role} images flagged", f"{role}_flagged")]


def leakage_tables(synthetic: list[dict], train: list[dict], space: FeatureSpace, with_filters: bool) -> tuple:
    cfg = space.cfg
    how = f"every image against every test image; pairs within {cfg.leak_hash_bits} of 64 perceptual-hash bits" + (
        f" or with feature cosine ≥ {cfg.leak_cosine} ({space.name})" if not space.random else
        " (feature cosine not used: random-weight features)")
    s_how = (how + "; img2img sets (ours): every output is also compared with every real train image, and the pair "
             "of an output and its own source (a train image it started from) is expected, so it is excluded and "
             "counted in 'own-source pairs (expected, excluded)'; the test check is the same for every set: an "
             "img2img output matching a test image is a leak")
    if with_filters:
        s_how += ("; a filter's kept images are a subset of its set, so their near-duplicates are among the set's "
                  "(not listed again per filter)")
    s_cols = [*_counts(Col("set", "_label"), "synthetic"),
              Col("own-source pairs (expected, excluded)", "own_source_pairs", dash()),
              Col("near-duplicates of other train images", "other_train_pairs", dash())]
    return (Table("leakage", "Leakage: near-duplicates between synthetic images and the real test split", s_cols,
                  synthetic, s_how),
            Table("leakage_train", "Leakage: near-duplicates between the real train and test splits",
                  _counts(Col("dataset", "dataset"), "train"), train, how + "; how to read it: these pairs are in the "
                  "official splits themselves (the same photo twice, a burst, a crop), so they affect every strategy "
                  "alike and are no fault of synthetic data; a large count inflates every test number a little, and "
                  "img2img refuses such train images as sources"))


def quality(runs: list[Run], gensets: list[GenSet], cfg: ReportConfig, cache: Path,
            found_filters: tuple[list[FilterRun], list[str]] | None = None) -> QualityReport:
    """Quality and leakage of every set (and filter's kept subset) and the leakage of every real train split."""
    space = FeatureSpace(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"), cache)
    found, problems = found_filters if found_filters is not None else collect_filters(gensets)
    reals: dict[str | None, tuple | None] = {}  # dataset -> its (train, test), scanned
    q_raw, s_raw, examples, small = [], [], [], []
    for g in gensets:
        # a set made outside a study: the dataset of a run that reads it
        dataset = g.labels.get("dataset") or next((r.labels["dataset"] for r in runs if g.id == Path(
            (r.config.get("synthetic") or {}).get("path") or "").name), None)
        if dataset not in reals:
            splits = real_splits(runs, dataset) if dataset else None
            reals[dataset] = tuple(Scanned.of(s, space) for s in splits) if splits else None
        rows = {r["path"]: r for r in completed_rows(g.folder)}
        images = synthetic_list(g, list(rows.values()))
        label = f"{dataset} / {g.labels.get('prompt')} / guidance {g.settings.get('guidance')}"
        base = {"set": g.id, "dataset": dataset, "prompt": g.labels.get("prompt"),
                "guidance": g.settings.get("guidance"), "_label": label}
        mine = [f for f in found if Path(f.set_folder) == Path(g.folder)]
        if reals[dataset] is None or not len(images):  # shown, not measured
            q_raw += [{"_shown_only": True, "_label": label, "n_synthetic": len(images), "dim": space.dim},
                      *[{"_shown_only": True, "_label": filter_label(label, f), "not_measured": "no real train split"}
                        for f in mine]]
            continue
        train, test = reals[dataset]
        syn = Scanned.of(images, space)
        records, low = set_quality(space, train, syn, [rows[p]["prompt"] for p in images.paths], base, mine)
        row, pairs = leakage_row(syn, "synthetic", test, label, space)
        source = source_row(syn, train, [rows[p].get("source") for p in images.paths], space)
        s_raw.append({"set": g.id, "dataset": dataset, **row, **source, "_label": label})
        q_raw, examples, small = q_raw + records, examples + pairs, small + low
    t_raw, train_examples = [], []  # every real train split against its test split
    for dataset, pair in sorted(reals.items(), key=lambda kv: str(kv[0])):
        if pair is not None:
            row, pairs = leakage_row(pair[0], "train", pair[1], dataset, space)
            t_raw, train_examples = t_raw + [{"dataset": dataset, **row}], train_examples + pairs
    cols = COLUMNS if found else COLUMNS[:-1]  # the last column is for filter rows only
    q = Table("quality", "Synthetic-set quality against the real train split", cols, q_raw,
              _note(cfg, space, bool(found), problems, small))
    return QualityReport(q, *leakage_tables(s_raw, t_raw, space, bool(found)), examples, train_examples)


def _note(cfg: ReportConfig, space: FeatureSpace, with_filters: bool, problems: list[str], small: list[str]) -> str:
    """The quality table's note; warns about the rows whose n is below the feature dimension."""
    note = (f"feature space: {space.name}, {space.dim} dimensions" + (f" — {space.warning}" if space.warning else "")
            + f"; images resized the clean-fid way (PIL bicubic per channel to {space.size} px, no crop); n = every "
            f"readable image of a set, at most report.max_images = {cfg.max_images} (a seeded sample above it); KID: "
            f"{cfg.kid_subsets} subsets of {cfg.kid_subset_size} images (or of the smaller set's n), mean ± std; "
            f"precision/recall k={cfg.pr_k}")
    if with_filters or problems:
        note += (". Filters (ours): a row '<set>, filter <name> (kept n of m)' measures the images of the filter's "
                 "kept list of its largest volume (<set>/filters/<name>/kept/<V>.json: its rule on the first V images "
                 "of each class), as the set's own row measures the whole set; a run with synthetic.filter=<name> and "
                 "synthetic.per_class=k trains on the kept list of k. Its features are the set's (rows selected; no "
                 f"image is read again). FID is biased upward at smaller n, so 'FID, random same n' gives the mean ± "
                 f"std FID of {SAME_N_DRAWS} seeded random subsets of the set with the kept subset's n per class: the "
                 "filter helps where its FID is below that, not merely below the set's (a CLIP filter raises the CLIP "
                 "score by construction)")
    if problems:
        note += f". Filters not measured (their files cannot be read): {'; '.join(problems)}"
    if small:
        msg = (f"n below the feature dimension ({space.dim}) for {len(small)} set(s) ({'; '.join(small)}): the "
               "covariances are singular, so FID is biased upward and only comparable between sets of equal n")
        warnings.warn(msg, stacklevel=3)  # the report's quality section
        note += f". WARNING: {msg}"
    return note


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
