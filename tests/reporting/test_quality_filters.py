"""The quality table measures each filter's kept subset (`synthtl filter`) beside its set: n = the kept images, the
set's features reused (no image decoded twice), an unreadable filter noted, never measured."""

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthtl.config import FilterConfig, load_config
from synthtl.filtering.run import run_filter
from synthtl.metrics.distances import fid
from synthtl.reporting import quality as q
from synthtl.reporting.collect import collect_gensets, collect_runs
from synthtl.reporting.report import build_report
from tests.conftest import make_folder
from tests.filtering.tiny import tiny_clip
from tests.reporting.test_report import RANDOM_FEATURES, _folder_gen_set, canned_run, labels

SET_LABEL = "folder / single / guidance 2.0"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """A study with one generated set of 9 images (3 per class) and two finished filters by a tiny random CLIP:
    'clip' keeps the best 2 of each class (6 of 9), 'all' keeps all 3 (9 of 9). Returns (study, CLIP folder)."""
    tmp = tmp_path_factory.mktemp("quality_filters")
    real = tmp / "real"
    make_folder(real / "train", 8, seed=1)
    make_folder(real / "test", 4, seed=2)
    root = tmp / "study"
    gen = _folder_gen_set(root, real, plant=False)
    canned_run(root, "v0", labels("folder", "vanilla", 0), 70.0, data_root=real)
    canned_run(root, "b0", labels("folder", "bridged++", 0), 75.0, syn_path=gen, data_root=real)
    clip = tiny_clip(tmp / "clip")
    for name, k in (("clip", 2), ("all", 3)):
        run_filter(load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={clip}", f"keep.top_k={k}",
                                                    f"name={name}", "progress=false", "device=cpu"]))
    return root, clip


def _quality(root: Path, cfg, cache: Path):
    with pytest.warns(UserWarning, match="below the feature dimension"):  # 6, 9 and 24 images < the dimension
        return q.quality(collect_runs(root), collect_gensets(root), cfg, cache)


def _by_filter(qr) -> dict[str, dict]:
    return {r["filter"]: r for r in qr.quality.raw}


def _counting(monkeypatch, module, name: str) -> Counter:
    """Counts the calls of `module.name` by their first argument (an image path)."""
    calls: Counter = Counter()
    original = getattr(module, name)

    def counted(*args):
        path = args[1] if isinstance(args[0], q.FeatureSpace) else args[0]
        calls[str(path)] += 1
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_kept_subset_row_is_measured_from_the_sets_features(study, tmp_path, monkeypatch):
    root, _ = study
    gen = root / "gen" / "gen-folder"
    kept = json.loads((gen / "filters" / "clip" / "kept" / "3.json").read_text())["paths"]
    assert len(kept) == 6
    loads = _counting(monkeypatch, q.FeatureSpace, "_load")
    qr = _quality(root, RANDOM_FEATURES, tmp_path / "cache")
    # every image decoded once for features (9 synthetic, 24 train): the kept subsets reuse the set's rows
    assert sum(loads.values()) == 9 + 24 and set(loads.values()) == {1}
    raw = _by_filter(qr)
    full, sub, everything = raw[""], raw["clip"], raw["all"]
    assert (sub["n_synthetic"], sub["kept"], sub["scored"], sub["n_real"]) == (6, 6, 9, full["n_real"])
    assert everything["n_synthetic"] == full["n_synthetic"] == 9
    labels_ = [r[0] for r in qr.quality.rows]
    assert labels_ == [SET_LABEL, f"{SET_LABEL}, filter all (kept 9 of 9)", f"{SET_LABEL}, filter clip (kept 6 of 9)"]
    assert qr.quality.rows[2][1:4] == ["6", str(full["n_real"]), str(full["dim"])]
    assert sub["fid"] != full["fid"]  # another subset, another FID
    # keeping every image measures exactly the set; its random same-n subsets are the set itself
    for k in ("fid", "kid", "kid_std", "precision", "recall"):
        assert everything[k] == full[k]
    assert everything["fid_random_same_n"] == pytest.approx(full["fid"]) and everything["fid_random_same_n_std"] == 0
    assert np.isfinite(sub["fid_random_same_n"]) and "FID, random same n ↓" in qr.quality.columns
    # the same FID computed directly from those images' features (a fresh cache: recomputed)
    space = q.FeatureSpace(RANDOM_FEATURES, q.torch.device("cpu"), tmp_path / "c2")
    syn = q.Scanned.of(q.synthetic_list(collect_gensets(root)[0], list(q.completed_rows(gen))))
    train = q.Scanned.of(q.real_splits(collect_runs(root), "folder")[0])
    idx = np.array(sorted(syn.images.paths.index(p) for p in kept))
    f_kept, ok_k = space([syn.images.path(int(i)) for i in idx], [syn.digests[int(i)] for i in idx])
    f_real, ok_r = space([train.images.path(i) for i in range(len(train.images))], train.digests)
    assert ok_k.all() and ok_r.sum() == sub["n_real"]
    assert sub["fid"] == pytest.approx(fid(f_real[ok_r], f_kept), rel=1e-9)
    assert "kept list of its largest volume (<set>/filters/<name>/kept/<V>.json" in qr.quality.note
    assert "not listed again per filter" in qr.synthetic_leak.note
    assert len(qr.synthetic_leak.rows) == 1  # leakage tables unchanged: one row per set


def test_capped_subsets_and_clip_scores_read_each_image_once(study, tmp_path, monkeypatch):
    root, clip = study
    loads = _counting(monkeypatch, q.FeatureSpace, "_load")
    clip_reads = _counting(monkeypatch, q, "load_rgb")
    cfg = dataclasses.replace(RANDOM_FEATURES, max_images=4, clip_model=str(clip))
    qr = _quality(root, cfg, tmp_path / "cache")
    raw = _by_filter(qr)
    assert raw["clip"]["n_synthetic"] == raw[""]["n_synthetic"] == 4  # the cap, on the kept images
    assert qr.quality.rows[2][0] == f"{SET_LABEL}, filter clip (kept 6 of 9)"  # the label keeps the filter's count
    assert set(loads.values()) == {1} and set(clip_reads.values()) == {1}
    assert all(r["clip_score"] is not None for r in raw.values())
    loads.clear()
    again = _by_filter(_quality(root, cfg, tmp_path / "cache"))  # cached features: no image decoded, same numbers
    assert not loads and [again[k]["fid"] for k in raw] == [raw[k]["fid"] for k in raw]


def test_kept_subsets_read_the_same_features_when_every_feature_is_precomputed(study, tmp_path, monkeypatch):
    """With pretrained features every image's features are computed up front (for the leakage cosine): the kept
    subsets select rows of them, and give the numbers of the path that extracts only what the rows measure."""
    root, _ = study
    lazy = _by_filter(_quality(root, RANDOM_FEATURES, tmp_path / "cache"))

    class Pretrained(q.FeatureSpace):  # random weights that the report treats as pretrained
        def __init__(self, *args):
            super().__init__(*args)
            self.random = False

    monkeypatch.setattr(q, "FeatureSpace", Pretrained)
    loads = _counting(monkeypatch, q.FeatureSpace, "_load")
    eager = _by_filter(_quality(root, RANDOM_FEATURES, tmp_path / "cache2"))
    assert sum(loads.values()) == 9 + 24 + 12 and set(loads.values()) == {1}  # the test split too, for the cosine
    for k in ("fid", "kid", "precision", "recall", "fid_random_same_n"):
        assert eager["clip"][k] == pytest.approx(lazy["clip"][k], rel=1e-6)


def test_lost_and_unreadable_filters_are_not_measured_and_the_report_builds(study, tmp_path):
    root = Path(shutil.copytree(study[0], tmp_path / "study"))
    gen = root / "gen" / "gen-folder"
    kept = json.loads((gen / "filters" / "all" / "kept" / "3.json").read_text())
    (gen / kept["paths"][0]).unlink()  # a kept image deleted since (e.g. --validate --repair): never a guess
    clip = gen / "filters" / "clip" / "kept" / "3.json"
    clip.write_text(clip.read_text()[:-20])  # damaged by hand
    qr = _quality(root, RANDOM_FEATURES, tmp_path / "cache")
    full, lost = qr.quality.raw
    assert full["filter"] == "" and full["n_synthetic"] == 8 and np.isfinite(full["fid"])
    assert lost["filter"] == "all" and "not finished images" in lost["not_measured"] and "fid" not in lost
    row = qr.quality.rows[1]
    assert row[0].startswith(f"{SET_LABEL}, filter all (kept 9 of 9) — not measured (1 kept images")
    assert set(row[1:]) == {"–"}
    assert len(qr.quality.rows) == 2  # the unreadable filter has no row: it is named in the note
    assert "cannot be read" in qr.quality.note and "gen-folder/clip" in qr.quality.note
    with pytest.warns(UserWarning):
        build_report(root, dataclasses.replace(RANDOM_FEATURES, bootstrap=100))
    text = (root / "report" / "tables" / "quality.md").read_text()
    assert "filter all (kept 9 of 9) — not measured" in text


def test_a_set_without_filters_keeps_its_table(study, tmp_path):
    root = Path(shutil.copytree(study[0], tmp_path / "study"))
    with_filters = _by_filter(_quality(root, RANDOM_FEATURES, tmp_path / "cache"))[""]
    shutil.rmtree(root / "gen" / "gen-folder" / "filters")
    qr = _quality(root, RANDOM_FEATURES, tmp_path / "cache")
    (row,) = qr.quality.raw
    assert row == with_filters  # the set's own row does not depend on its filters
    assert len(qr.quality.columns) == 9 and all(len(r) == 9 for r in qr.quality.rows)
    assert "Filters (ours)" not in qr.quality.note
