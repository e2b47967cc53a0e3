"""The leakage check: every synthetic image and every real train image against every test image, near-duplicates by
perceptual hash (and by feature cosine when the features are pretrained), with the closest pairs to look at."""

from __future__ import annotations

import numpy as np

from synthtl.config import ReportConfig
from synthtl.metrics.leakage import Search, expected_matches, near_duplicates
from synthtl.reporting.features import FeatureSpace, Scanned
from synthtl.reporting.render import Col, Table, dash


def search(cfg: ReportConfig, limit: int | None) -> Search:
    """The report's near-duplicate thresholds, listing `limit` pairs."""
    return Search(cfg.leak_hash_bits, cfg.leak_cosine, cfg.leak_chunk, limit)


def leakage_row(a: Scanned, test: Scanned, cfg: ReportConfig, use_features: bool) -> tuple[dict, list[dict]]:
    """Every image of `a` against every test image: counts and the closest pairs."""
    fa, fb = (a.features, test.features) if use_features else (None, None)
    a_ok = a.ok & (a.feature_ok if use_features else True)
    b_ok = test.ok & (test.feature_ok if use_features else True)
    n_pairs, n_flagged, pairs = near_duplicates(a.hashes, test.hashes, fa, fb, search(cfg, cfg.leak_max_listed), a_ok,
                                                b_ok)
    row = {"checked": int(a_ok.sum()), "images": len(a.images), "test_checked": int(b_ok.sum()),
           "test_images": len(test.images), "unreadable": int((~a_ok).sum() + (~b_ok).sum()),
           "near_duplicate_pairs": n_pairs, "flagged": n_flagged}
    return row, pairs


def source_row(syn: Scanned, train: Scanned, sources: list[str | None], cfg: ReportConfig,
               use_features: bool) -> dict | None:
    """An img2img set's outputs against every real train image (None for a text-to-image set).

    Each output starts from its own source, a real train image: that pair is expected, not a near-duplicate to
    report, so it is left out of the count and counted apart ("own_source_pairs"). The check against the test split
    (`leakage_row`) is the same for every set: an img2img output matching a test image is a leak.
    """
    if not any(sources):
        return None
    where = {p: j for j, p in enumerate(train.images.paths)}
    expected = np.array([where.get(s, -1) if s else -1 for s in sources], dtype=np.int64)
    fa, fb = (syn.features, train.features) if use_features else (None, None)
    a_ok = syn.ok & (syn.feature_ok if use_features else True)
    b_ok = train.ok & (train.feature_ok if use_features else True)
    n_pairs, n_flagged, _ = near_duplicates(syn.hashes, train.hashes, fa, fb, search(cfg, 0), a_ok, b_ok, expected)
    own = expected_matches(syn.hashes, train.hashes, expected, fa, fb, search(cfg, 0), a_ok, b_ok)
    return {"own_source_pairs": int(own.sum()), "other_train_pairs": n_pairs, "other_train_flagged": n_flagged,
            "sources_not_in_train": int((expected < 0).sum())}



def _example(a: Scanned, a_role: str, test: Scanned, p: dict, label: str) -> dict:
    info = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()
                     if k in ("hash_bits", "cosine"))
    return {"left": a.images.path(p["image"]), "left_caption": a.describe(p["image"], a_role),
            "right": test.images.path(p["test"]), "right_caption": test.describe(p["test"], "test"),
            "caption": f"{label}: {info}"}


def set_leakage(base: dict, syn: Scanned, train: Scanned, test: Scanned, sources: list[str | None],
                cfg: ReportConfig, use_features: bool) -> tuple[dict, list[dict]]:
    """One generated set against the test split (and, for img2img, against the train split): its record and pairs.
    `base`: the set's "set", "dataset" and "_label"."""
    row, pairs = leakage_row(syn, test, cfg, use_features)
    src = source_row(syn, train, sources, cfg, use_features)
    record = {"set": base["set"], "dataset": base["dataset"], "synthetic_images": row["images"],
              "synthetic_checked": row["checked"], "test_images": row["test_images"],
              "test_checked": row["test_checked"], "unreadable": row["unreadable"],
              "near_duplicates": row["near_duplicate_pairs"], "synthetic_flagged": row["flagged"],
              "img2img": src is not None, **(src or {}), "_label": base["_label"]}
    return record, [_example(syn, "synthetic", test, p, base["_label"]) for p in pairs]


def train_leakage(reals: dict, cfg: ReportConfig, use_features: bool) -> tuple[list[dict], list[dict]]:
    """Every real train split against its test split (`reals`: dataset -> (train, test) or None): records, pairs."""
    records, examples = [], []
    for dataset, pair in sorted(reals.items(), key=lambda kv: str(kv[0])):
        if pair is None:
            continue
        train, test = pair
        row, pairs = leakage_row(train, test, cfg, use_features)
        records.append({"dataset": dataset, "train_images": row["images"], "train_checked": row["checked"],
                        "test_images": row["test_images"], "test_checked": row["test_checked"],
                        "unreadable": row["unreadable"], "near_duplicates": row["near_duplicate_pairs"],
                        "train_flagged": row["flagged"]})
        examples += [_example(train, "train", test, p, dataset) for p in pairs]
    return records, examples


COUNTS = [Col("unreadable", "unreadable"), Col("near-duplicate pairs", "near_duplicates")]


def leakage_tables(synthetic: list[dict], train: list[dict], cfg: ReportConfig, space: FeatureSpace,
                   with_filters: bool) -> tuple[Table, Table]:
    """The synthetic-vs-test and the train-vs-test tables."""
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
    s_cols = [Col("set", "_label"), Col("synthetic checked", "synthetic_checked"), Col("test checked", "test_checked"),
              *COUNTS, Col("synthetic images flagged", "synthetic_flagged"),
              Col("own-source pairs (expected, excluded)", "own_source_pairs", dash()),
              Col("near-duplicates of other train images", "other_train_pairs", dash())]
    t_cols = [Col("dataset", "dataset"), Col("train checked", "train_checked"), Col("test checked", "test_checked"),
              *COUNTS, Col("train images flagged", "train_flagged")]
    return (Table("leakage", "Leakage: near-duplicates between synthetic images and the real test split", s_cols,
                  synthetic, s_how),
            Table("leakage_train", "Leakage: near-duplicates between the real train and test splits", t_cols, train,
                  how))
