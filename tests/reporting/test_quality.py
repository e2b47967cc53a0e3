"""Quality and leakage sections: every image checked, features keyed by content, repeatable numbers; runs counted
once; bars with error bars."""

import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthtl.data.genset import read_rows
from synthtl.reporting import plots
from synthtl.reporting.collect import collect_gensets, collect_runs, find_runs, unique_runs
from synthtl.reporting.quality import FeatureSpace, Scanned, quality
from synthtl.reporting.report import build_report
from synthtl.reporting.tables import leep_table, strategy_tables
from tests.reporting.test_report import RANDOM_FEATURES, _folder_gen_set, canned_run, canned_study, labels

__all__ = ["canned_study"]  # the fixture, shared with test_report.py


def _last(gen: Path) -> str:
    """The last image of the last class of a generated set (red fox's 3rd)."""
    rows = read_rows(gen)
    return rows.rel_path(len(rows) - 1)


def _study(tmp_path: Path, folder_data: Path, plant_last: bool = False) -> Path:
    """Two vanilla and two bridged++ runs on the folder dataset, one generated set of 9 images.

    With `plant_last`, the last synthetic image and one extra train image are copies of the LAST test image.
    """
    root = tmp_path / "study"
    gen = _folder_gen_set(root, folder_data, plant=False)
    if plant_last:
        last_test = folder_data / "test" / "red_fox" / "img_003.jpg"
        shutil.copy(last_test, gen / _last(gen))
        shutil.copy(last_test, folder_data / "train" / "red_fox" / "img_planted.jpg")
    for seed in (0, 1):
        canned_run(root, f"v{seed}", labels("folder", "vanilla", seed), 70.0 + seed, data_root=folder_data)
        canned_run(root, f"b{seed}", labels("folder", "bridged++", seed), 75.0, syn_path=gen, data_root=folder_data)
    return root


def _quality(root: Path, cfg, cache: Path):
    with pytest.warns(UserWarning, match="below the feature dimension"):  # 9 and 24 images < the feature dimension
        return quality(collect_runs(root), collect_gensets(root), cfg, cache)


def test_leakage_checks_every_image_against_every_test_image(tmp_path, folder_data):
    root = _study(tmp_path, folder_data, plant_last=True)
    # max_images caps the quality metrics only: the old check compared a sample of this size and missed the copies
    cfg = dataclasses.replace(RANDOM_FEATURES, max_images=4)
    qr = _quality(root, cfg, tmp_path / "cache")
    (s,) = qr.synthetic_leak.raw
    assert s["synthetic_checked"] == s["synthetic_images"] == 9 and s["test_checked"] == s["test_images"] == 12
    assert s["near_duplicates"] >= 1 and s["synthetic_flagged"] >= 1
    (t,) = qr.train_leak.raw
    assert t["train_checked"] == t["train_images"] == 25 and t["test_checked"] == 12 and t["near_duplicates"] >= 1
    syn_pairs = {(e["left_caption"], e["right_caption"]) for e in qr.synthetic_examples}
    last = _last(root / "gen" / "gen-folder")
    assert (f"synthetic · red fox · {last}", "test · red fox · red_fox/img_003.jpg") in syn_pairs
    train_pairs = {(e["left_caption"], e["right_caption"]) for e in qr.train_examples}
    assert ("train · red fox · red_fox/img_planted.jpg", "test · red fox · red_fox/img_003.jpg") in train_pairs
    assert all("hash_bits=" in e["caption"] for e in qr.synthetic_examples + qr.train_examples)
    assert qr.quality.raw[0]["n_synthetic"] == 4 and qr.quality.raw[0]["n_real"] == 4  # the cap, reported


def test_quality_table_states_n_dimension_cap_and_kid_subsets(tmp_path, folder_data):
    root = _study(tmp_path, folder_data)
    qr = _quality(root, RANDOM_FEATURES, tmp_path / "cache")
    (row,) = qr.quality.raw
    dim = row["dim"]
    assert row["n_synthetic"] == 9 and row["n_real"] == 24 and dim > 24 and row["kid_subset_size"] == 9
    assert {"n synthetic", "n real (train)", "feature dim"} <= set(qr.quality.columns)
    assert qr.quality.rows[0][1:4] == ["9", "24", str(dim)]
    note = qr.quality.note
    assert "KID: 3 subsets of 10 images" in note and "max_images = 50" in note and f"{dim} dimensions" in note
    assert "WARNING: n below the feature dimension" in note


def test_quality_repeats_on_the_same_inputs(tmp_path, folder_data):
    root = _study(tmp_path, folder_data)
    keys = ("fid", "kid", "kid_std", "precision", "recall")
    first = _quality(root, RANDOM_FEATURES, tmp_path / "cache1").quality.raw[0]
    again = _quality(root, RANDOM_FEATURES, tmp_path / "cache2").quality.raw[0]  # fresh cache: recomputed
    assert [first[k] for k in keys] == [again[k] for k in keys]
    other = _quality(root, dataclasses.replace(RANDOM_FEATURES, features_seed=1), tmp_path / "cache3").quality.raw[0]
    assert other["fid"] != first["fid"]  # the seed is what fixes the random weights


def test_features_are_keyed_by_file_content_not_path(tmp_path):
    import torch

    from synthtl.data.imagelist import ImageList

    rng = np.random.default_rng(0)
    folder = tmp_path / "syn"
    (folder / "c").mkdir(parents=True)
    paths = tuple(f"c/{i}.bmp" for i in range(3))
    for p in paths:  # BMP: the file size depends on the image size only
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / p)
    images = ImageList(folder, paths, (0, 0, 0), ("c",), ("c",))
    cache = tmp_path / "cache"
    space = FeatureSpace(RANDOM_FEATURES, torch.device("cpu"), cache)

    def features(imgs):
        f, readable = Scanned.of(imgs).features_of(space, np.arange(len(imgs)))
        assert len(readable) == len(imgs)
        return f

    before = features(images)
    target = folder / paths[1]
    stat = target.stat()
    # Regenerated in place: other pixels, same size and modification time (what a size+mtime key would miss).
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    after = features(images)
    assert np.array_equal(before[[0, 2]], after[[0, 2]]) and not np.allclose(before[1], after[1])
    # the same content under another path is the same image: its features come from the cache
    files = set(cache.glob("features-*.npz"))
    shutil.copytree(folder, tmp_path / "moved")
    assert np.array_equal(features(dataclasses.replace(images, root=tmp_path / "moved")), after)
    assert set(cache.glob("features-*.npz")) == files


def _copy_run(src: Path, dst: Path, **result_changes) -> None:
    shutil.copytree(src, dst)
    if result_changes:
        res = json.loads((dst / "result.json").read_text())
        (dst / "result.json").write_text(json.dumps({**res, **result_changes}))


def test_duplicate_run_folders_are_counted_once(canned_study):
    runs_dir = canned_study / "runs"
    before = find_runs(canned_study)
    _copy_run(runs_dir / "aircraft-vanilla-s0", runs_dir / "copied" / "aircraft-vanilla-s0")
    _copy_run(runs_dir / "cars-mixed-s1", runs_dir / "moved" / "cars-mixed-s1")
    found = find_runs(canned_study)
    kept, dropped = unique_runs(found)
    assert len(found) == len(before) + 2 and len(kept) == len(before)
    assert sorted(d["run"] for d in dropped) == ["copied/aircraft-vanilla-s0", "moved/cars-mixed-s1"]
    t = strategy_tables(collect_runs(canned_study), 100)[0]
    cell = next(r for r in t.raw if r["dataset"] == "aircraft" and r["strategy"] == "vanilla")
    assert cell["n"] == 3 and cell["std"] > 0  # not inflated to n=4 with a repeated value
    with pytest.warns(UserWarning, match="share the identity and seed"):
        build_report(canned_study, dataclasses.replace(RANDOM_FEATURES, bootstrap=100))
    tables = canned_study / "report" / "tables"
    dup = list(csv.DictReader(io.StringIO((tables / "duplicates.csv").read_text())))
    assert {d["run"] for d in dup} == {"copied/aircraft-vanilla-s0", "moved/cars-mixed-s1"}
    assert (canned_study / "report" / "runs.csv").read_text().count("\n") == len(before) + 1
    assert "repeat a run already counted" in (canned_study / "report" / "index.html").read_text()


def test_run_identity_is_the_identity_and_seed(canned_study):
    runs_dir = canned_study / "runs"
    for name in ("aircraft-vanilla-s0", "aircraft-vanilla-s1"):  # seeds 0 and 1
        res = json.loads((runs_dir / name / "result.json").read_text())
        (runs_dir / name / "result.json").write_text(json.dumps({**res, "identity": "abc"}))
    # same identity and seed in another folder, with a config.yaml that differs (e.g. another out_dir): a duplicate
    _copy_run(runs_dir / "aircraft-vanilla-s0", runs_dir / "elsewhere" / "x")
    cfg_file = runs_dir / "elsewhere" / "x" / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({**yaml.safe_load(cfg_file.read_text()), "out_dir": "/somewhere/else"}))
    kept, dropped = unique_runs(find_runs(canned_study))
    assert [d["run"] for d in dropped] == ["elsewhere/x"] and dropped[0]["kept"] == "aircraft-vanilla-s0"
    assert {"aircraft-vanilla-s0", "aircraft-vanilla-s1"} <= {r.id for r in kept}  # same hash, other seed: kept


def _bar_errors(fig) -> list[np.ndarray]:
    """The error-bar half-lengths of every bar container of a figure."""
    out = []
    for ax in fig.axes:
        for c in ax.containers:
            if hasattr(c, "patches"):
                assert c.errorbar is not None, "a bar chart of means without error bars"
                segs = c.errorbar.lines[2][0].get_segments()
                out.append(np.array([abs(s[1][1] - s[0][1]) / 2 for s in segs]))
    return out


def test_bar_charts_of_means_carry_std_error_bars(canned_study):
    import matplotlib.pyplot as plt

    runs = [r for r in collect_runs(canned_study)  # one dataset, one setting: a bar chart, not a radar
            if r.labels["dataset"] == "aircraft" and r.labels["volume"] != 500]
    (t,) = strategy_tables(runs, 100)
    fig = plots.radar_figure(t)
    errs = _bar_errors(fig)
    stds = sorted(r["std"] for r in t.raw if r["n"])
    assert errs and np.allclose(sorted(np.concatenate(errs)), stds) and max(stds) > 0
    plt.close(fig)
    lt = leep_table(runs)
    fig = plots.leep_figure(lt)
    errs = _bar_errors(fig)
    assert len(errs) == 2 and np.allclose(errs[0], [lt.raw[0]["leep_pretrained_std"]])
    plt.close(fig)


def test_features_use_clean_fid_resize_to_299_without_crop():
    import torch

    from synthtl.config import ReportConfig
    from synthtl.reporting.features import clean_resize

    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, :50] = 255  # a white left quarter: a centre crop to the short side would cut it away
    arr[:, 50:, 1] = np.linspace(0, 255, 150, dtype=np.uint8)[None, :]
    out = clean_resize(Image.fromarray(arr), 299)
    assert out.shape == (3, 299, 299) and out.dtype == np.float32
    assert out[:, :, :60].mean() > 250 and out[0, :, 100:].max() < 5
    # PIL bicubic on each float channel, not re-quantised to 8 bits (clean-fid's "clean" mode)
    ref = np.asarray(Image.fromarray(arr[:, :, 1].astype(np.float32)).resize((299, 299), Image.Resampling.BICUBIC))
    assert np.array_equal(out[1], ref) and not np.array_equal(out[1], np.round(out[1]))
    space = FeatureSpace(ReportConfig(features="timm:inception_v3.tv_in1k", features_pretrained=False),
                         torch.device("cpu"), Path("unused"))
    assert (space.size, space.dim) == (299, 2048)
