"""`synthtl filter`: every row scored once (also across a kill), exact keep rules, immutable kept lists per volume,
reproducible decisions, one-line errors. Offline: tiny random CLIP and classifier, tiny generated set."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthtl.config import FilterConfig, KeepConfig, load_config
from synthtl.errors import DataError
from synthtl.files import read_json, read_jsonl
from synthtl.filtering import run as filter_run
from synthtl.filtering.decide import decide
from synthtl.filtering.run import run_filter
from tests.conftest import run_cli
from tests.filtering.conftest import PER_CLASS
from tests.filtering.tiny import filter_hash, generate, kept, tiny_clip, tiny_run


@pytest.fixture(scope="module")
def base(tiny_set, tmp_path_factory) -> dict:
    return {**tiny_set, "run": tiny_run(tiny_set["real"], tmp_path_factory.mktemp("filter_run"))}


def clip_cfg(base, gen: Path, *extra: str) -> FilterConfig:
    return load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={base['clip']}", "batch_size=4",
                                            "workers=2", "progress=false", "device=cpu", *extra])


def manifest_ids(gen: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(gen / "manifest.jsonl")]


def by_class(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["class_index"], []).append(r)
    return out


def test_clip_scores_every_row_once_and_keeps_exactly_top_k(base, gen):
    summary = run_filter(clip_cfg(base, gen, "keep.top_k=2"))
    folder = gen / "filters" / "clip"
    scores = read_jsonl(folder / "scores.jsonl")
    assert sorted(r["id"] for r in scores) == sorted(manifest_ids(gen))  # keyed by manifest row, each once
    manifest = {r["id"]: r for r in read_jsonl(gen / "manifest.jsonl")}
    for s in scores:
        m = manifest[s["id"]]
        assert (s["path"], s["class_index"], s["index"]) == (m["path"], m["class_index"], m["index"])
        assert 0.0 < s["prob"] < 1.0 and s["score"] == s["prob"] and s["top1"] == (s["pred"] == s["class_index"])
    chosen = kept(gen, "clip")
    for cls in by_class(scores).values():
        best = sorted(cls, key=lambda r: -r["score"])
        assert {r["path"] for r in best[:2]} == {r["path"] for r in cls} & chosen
    assert read_json(folder / "kept" / f"{PER_CLASS}.json")["paths"] == sorted(chosen)
    assert summary["kept"] == 6 and summary["scored"] == 15 and summary["method"] == "clip"
    assert all(c == {"scored": PER_CLASS, "kept": 2, "top1": c["top1"]} for c in summary["counts"].values())
    assert read_jsonl(gen / "manifest.jsonl") == list(manifest.values())  # the manifest is not rewritten


def test_kill_and_resume_scores_each_row_exactly_once(base, gen, monkeypatch):
    seen: list[str] = []
    real = filter_run.score_batch

    def dying(scorer, images, rows, score):
        if len(seen) == 8:
            raise KeyboardInterrupt
        seen.extend(r["id"] for r in rows)
        return real(scorer, images, rows, score)

    monkeypatch.setattr(filter_run, "score_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        run_filter(clip_cfg(base, gen, "keep.top_k=2"))
    log = gen / "filters" / "clip" / "scores.jsonl"
    assert len(read_jsonl(log)) == 8 and not (log.parent / "kept").exists()
    with pytest.raises(DataError, match="has no kept list for 5 images per class"):
        kept(gen, "clip")
    with open(log, "a") as f:
        f.write('{"id": "c00002-i0000')  # a torn line, as a kill during an append leaves
    seen.clear()
    monkeypatch.setattr(filter_run, "score_batch", lambda *a: (seen.extend(r["id"] for r in a[2]), real(*a))[1])
    run_filter(clip_cfg(base, gen, "keep.top_k=2"))
    ids = [r["id"] for r in read_jsonl(log)]
    assert len(seen) == 15 - 8 and not set(seen) & set(ids[:8])  # only the unscored rows were scored again
    assert sorted(ids) == sorted(manifest_ids(gen)) and len(set(ids)) == 15
    fresh = run_filter(clip_cfg(base, gen, "keep.top_k=2", "name=fresh"))
    a = {r["id"]: r["score"] for r in read_jsonl(log)}
    b = {r["id"]: r["score"] for r in read_jsonl(gen / "filters" / "fresh" / "scores.jsonl")}
    assert np.allclose([a[i] for i in sorted(a)], [b[i] for i in sorted(b)], rtol=1e-5, atol=1e-7)
    assert fresh["kept"] == 6 and kept(gen, "clip") == kept(gen, "fresh")


def test_finished_filter_is_a_no_op(base, gen, monkeypatch):
    first = run_filter(clip_cfg(base, gen, "keep.fraction=0.5"))
    folder = gen / "filters" / "clip"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}

    def no_model(*a, **k):
        raise AssertionError("a finished filter loaded its model")

    monkeypatch.setattr(filter_run, "load_scorer", no_model)
    assert run_filter(clip_cfg(base, gen, "keep.fraction=0.5", "batch_size=2")) == first  # batch size is not identity
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")} == before
    assert first["kept"] == 3 * 3  # ceil(0.5 * 5) per class


def test_decisions_are_reproducible_and_identity_follows_config(base, gen):
    run_filter(clip_cfg(base, gen, "keep.top_k=2", "name=a"))
    run_filter(clip_cfg(base, gen, "keep.top_k=2", "name=b", "batch_size=3", "workers=1"))
    run_filter(clip_cfg(base, gen, "keep.top_k=3", "name=c"))
    sa = {r["id"]: r["score"] for r in read_jsonl(gen / "filters/a/scores.jsonl")}
    sb = {r["id"]: r["score"] for r in read_jsonl(gen / "filters/b/scores.jsonl")}
    assert kept(gen, "a") == kept(gen, "b") and sa.keys() == sb.keys()
    assert np.allclose([sa[i] for i in sorted(sa)], [sb[i] for i in sorted(sb)], rtol=1e-5, atol=1e-7)
    assert read_json(gen / "filters/a/kept/5.json")["filter"] == filter_hash(gen, "a")
    assert filter_hash(gen, "b") == filter_hash(gen, "a")  # batch size and workers are not part of it
    assert filter_hash(gen, "c") != filter_hash(gen, "a")


def test_top_k_ties_are_broken_by_row_index_whatever_the_order():
    scores = [0.5, 0.9, 0.5, 0.5, 0.1, 0.9]
    rows = [{"id": f"c0-{i}", "class_index": 0, "index": i, "score": s} for i, s in enumerate(scores)]
    rows += [{"id": f"c1-{i}", "class_index": 1, "index": i, "score": 0.3} for i in range(2)]  # fewer than k
    keep = KeepConfig(top_k=3)
    out = decide(rows, keep)
    assert {r["id"] for r in rows if out[r["id"]]["kept"]} == {"c0-1", "c0-5", "c0-0", "c1-0", "c1-1"}
    assert [out[f"c0-{i}"]["rank"] for i in range(6)] == [3, 1, 4, 5, 6, 2]
    for seed in range(5):  # the order rows were scored in (a resumed run) changes nothing
        shuffled = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        assert decide(shuffled, keep) == out


def test_threshold_keeps_exactly_the_rows_above_it(base, gen):
    run_filter(clip_cfg(base, gen, "keep.top_k=1", "name=probe", "score=logit"))
    logits = sorted(r["score"] for r in read_jsonl(gen / "filters/probe/scores.jsonl"))
    t = logits[7]  # an actual score: the row equal to it is not above it
    run_filter(clip_cfg(base, gen, f"keep.threshold={t!r}", "name=thr", "score=logit"))
    rows = read_jsonl(gen / "filters/thr/scores.jsonl")
    assert kept(gen, "thr") == {r["path"] for r in rows if r["score"] > t} and len(kept(gen, "thr")) == 7


def test_fraction_keeps_ceil_per_class():
    rows = [{"id": f"{c}-{i}", "class_index": c, "index": i, "score": float(i)} for c, n in ((0, 10), (1, 3))
            for i in range(n)]
    out = decide(rows, KeepConfig(fraction=0.3))
    kept = [sum(out[f"{c}-{i}"]["kept"] for i in range(n)) for c, n in ((0, 10), (1, 3))]
    assert kept == [3, 1]  # 0.3 * 10 is 3 (not 4 by float error), ceil(0.9) is 1


def test_classifier_filter_uses_the_runs_final_weights_and_preprocessing(base, gen):
    from synthtl.data.images import load_rgb
    from synthtl.data.transforms import eval_transform
    from synthtl.models import create_classifier

    summary = run_filter(load_config(FilterConfig, None, [
        f"set_dir={gen}", "method=classifier", f"classifier.run={base['run']}", "keep.top_k=1", "progress=false",
        "device=cpu"]))
    assert summary["method"] == "classifier" and summary["kept"] == 3
    scores = read_jsonl(gen / "filters" / "classifier" / "scores.jsonl")
    assert sorted(r["id"] for r in scores) == sorted(manifest_ids(gen))
    assert {r["pred_name"] for r in scores} <= {"red fox", "blue jay", "green frog"}
    # Recompute one score by hand: the run's final stage weights, its timm preprocessing, its class order.
    model, dc = create_classifier("test_resnet", 3, pretrained=False, img_size=32)
    model.load_state_dict(torch.load(base["run"] / "checkpoints" / "stage-real.pt", weights_only=True)["model"])
    real_names = sorted(["red fox", "blue jay", "green frog"])  # folder datasets list classes sorted
    s = scores[-1]
    x = eval_transform(dc)(load_rgb(gen / s["image"]))[None]
    with torch.no_grad():
        probs = model.eval()(x).softmax(1)[0]
    assert abs(float(probs[real_names.index(s["class_name"])]) - s["prob"]) < 1e-5


def _one_line_error(capsys, *argv) -> str:
    assert run_cli("filter", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_clear_line(base, gen, tmp_path, capsys):
    common = [f"clip.model={base['clip']}", "progress=false", "device=cpu"]
    assert "not a folder" in _one_line_error(capsys, str(tmp_path / "nope"), "keep.top_k=1", *common)
    (tmp_path / "plain").mkdir()
    assert "not a generated set" in _one_line_error(capsys, str(tmp_path / "plain"), "keep.top_k=1", *common)
    assert "which set" in _one_line_error(capsys, "keep.top_k=1", *common)
    assert "choose what to keep" in _one_line_error(capsys, str(gen), *common)
    assert "both set" in _one_line_error(capsys, str(gen), "keep.top_k=1", "keep.fraction=0.5", *common)
    assert "choose one of clip, classifier" in _one_line_error(capsys, str(gen), "method=knn", "keep.top_k=1")
    assert "classifier.run=" in _one_line_error(capsys, str(gen), "method=classifier", "keep.top_k=1", *common)
    err = _one_line_error(capsys, str(gen), "method=classifier", f"classifier.run={tmp_path / 'no-run'}",
                          "keep.top_k=1", *common)
    assert "not a finished `synthtl finetune` run" in err
    err = _one_line_error(capsys, str(gen), "clip.model=nobody/no-such-clip", "keep.top_k=1", "progress=false")
    assert "clip.model='nobody/no-such-clip'" in err and "local folder" in err
    assert run_cli("filter", str(gen), "keep.top_k=2", *common) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, str(gen), "keep.top_k=3", *common)
    assert "holds a filter made with another config" in err and "keep.top_k (2 there, 3 now)" in err
    err = _one_line_error(capsys, str(gen), "keep.top_k=2", "clip.template=a {} photo.", *common)
    assert "clip.template" in err
    unfinished = Path(shutil.copytree(base["gen"], tmp_path / "unfinished"))
    (unfinished / json.loads((unfinished / "manifest.jsonl").read_text().splitlines()[4])["path"]).unlink()
    assert "14 of 15" in _one_line_error(capsys, str(unfinished), "keep.top_k=1", *common)


def test_extended_set_scores_only_the_new_rows_and_keeps_the_old_list(base, gen, monkeypatch):
    run_filter(clip_cfg(base, gen, "keep.top_k=2"))
    old = (gen / "filters/clip/kept/5.json").read_bytes()
    generate(base["real"], gen, PER_CLASS + 1)  # the same plan with one more image per class
    with pytest.raises(DataError, match="has no kept list for 6 images per class"):
        kept(gen, "clip")
    seen: list[str] = []
    real = filter_run.score_batch
    monkeypatch.setattr(filter_run, "score_batch", lambda *a: (seen.extend(r["id"] for r in a[2]), real(*a))[1])
    summary = run_filter(clip_cfg(base, gen, "keep.top_k=2"))
    assert sorted(seen) == [f"c{c:05d}-i{PER_CLASS:06d}" for c in range(3)]
    ids = [r["id"] for r in read_jsonl(gen / "filters" / "clip" / "scores.jsonl")]
    assert sorted(ids) == sorted(manifest_ids(gen)) and len(ids) == 18
    assert summary["kept"] == 6 and summary["per_class"] == 6 and len(kept(gen, "clip")) == 6
    assert (gen / "filters/clip/kept/5.json").read_bytes() == old  # never rewritten: runs on it keep their images
    run_filter(clip_cfg(base, gen, "keep.top_k=2", "per_class=[3]"))  # a list for another volume, no scoring
    assert sorted(seen) == [f"c{c:05d}-i{PER_CLASS:06d}" for c in range(3)] and len(kept(gen, "clip", 3)) == 6


def test_shipped_presets_load_and_leave_the_rule_to_the_command():
    from synthtl.config import configs_dir

    presets = sorted((configs_dir() / "filter").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"clip", "classifier"}
    for p in presets:
        assert p.read_text().startswith("# synthtl filter "), p
        if p.stem == "clip80":  # the one preset with its rule (the peers study's): another is chosen by resetting it
            assert load_config(FilterConfig, p, []).keep.fraction == 0.8
            cfg = load_config(FilterConfig, p, ["keep.fraction=0", "keep.top_k=5"])
        else:
            cfg = load_config(FilterConfig, p, ["keep.top_k=5"])
        assert cfg.keep.rule == "top_k" and cfg.method in ("clip", "classifier")


def test_filtering_and_its_report_import_nothing_from_training():
    import subprocess
    import sys

    code = ("import sys, synthtl.filtering.run, synthtl.reporting.filters; "
            "print(sorted(m for m in sys.modules if m.startswith('synthtl.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_same_name_with_other_weights_at_the_same_path_is_refused(base, gen, tmp_path, monkeypatch):
    from synthtl.errors import ConfigError

    clip = Path(shutil.copytree(base["clip"], tmp_path / "clip"))
    cfg = load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={clip}", "keep.top_k=2", "progress=false",
                                           "device=cpu", "batch_size=4"])
    real, calls = filter_run.score_batch, []

    def dying(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(filter_run, "score_batch", dying)
    with pytest.raises(KeyboardInterrupt):  # killed half way: the resume must not mix two models' scores
        run_filter(cfg)
    monkeypatch.setattr(filter_run, "score_batch", real)
    shutil.rmtree(clip)
    tiny_clip(clip, seed=1)  # other weights, same folder
    with pytest.raises(ConfigError, match="holds a filter made with another config: clip.model.revision"):
        run_filter(cfg)


def test_training_reads_only_the_kept_images_and_records_the_filter(base, gen, tmp_path, capsys):
    run_filter(clip_cfg(base, gen, "keep.top_k=2", "per_class=[3,5]"))
    args = ["finetune", "data.name=folder", f"data.root={base['real']}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.num_workers=0", "model.name=test_resnet", "model.pretrained=false", "model.img_size=32",
            "real_stage.epochs=1", "synth_stage.epochs=1", "real_stage.batch_size=8", "synth_stage.batch_size=4",
            f"out_dir={tmp_path / 'runs'}", "progress=false", "leep.enabled=false", "strategy=bridged",
            f"synthetic.path={gen}"]
    assert run_cli(*args, "synthetic.filter=clip", "run_name=filtered") == 0
    res = json.loads((tmp_path / "runs" / "filtered" / "result.json").read_text())
    assert res["images"]["synthetic"] == 2 * 3 == len(kept(gen, "clip"))
    whole = read_json(gen / "filters/clip/kept/5.json")
    assert res["synthetic_set"]["filter"] == {"name": "clip", "filter": filter_hash(gen, "clip"), "per_class": 5,
                                              "kept_list": whole["digest"], "kept": 6}
    # a smaller volume: the rule applied to the first 3 images of each class (the 2 best of those), not "those of
    # the first 3 that the whole-set ranking kept"
    assert run_cli(*args, "synthetic.filter=clip", "synthetic.per_class=3", "run_name=first3") == 0
    res3 = json.loads((tmp_path / "runs" / "first3" / "result.json").read_text())
    want = set()
    for rows in by_class(read_jsonl(gen / "filters/clip/scores.jsonl")).values():
        first = sorted(rows, key=lambda d: d["index"])[:3]
        want |= {d["path"] for d in sorted(first, key=lambda d: (-d["score"], d["index"]))[:2]}
    assert kept(gen, "clip", 3) == want and res3["images"]["synthetic"] == 6 == len(want)
    assert res3["synthetic_set"]["filter"]["kept_list"] == read_json(gen / "filters/clip/kept/3.json")["digest"]
    assert run_cli(*args, "synthetic.filter=clip", "synthetic.per_class=4", "run_name=no4") == 2
    assert "per_class=[4]" in capsys.readouterr().err  # no list for that volume: the command that writes it
    assert run_cli(*args, "run_name=all") == 0
    assert json.loads((tmp_path / "runs" / "all" / "result.json").read_text())["images"]["synthetic"] == 15
    assert run_cli(*args, "synthetic.filter=nope", "run_name=nope") == 2
    assert "nope" in capsys.readouterr().err


def _run_copy(base, tmp_path: Path, name: str, strategy: str, synthetic: str, images: int = 0) -> Path:
    """A copy of the module's real-only run, relabelled as a run of `strategy` with synthetic.path=`synthetic`."""
    import yaml

    run = Path(shutil.copytree(base["run"], tmp_path / name))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["strategy"], cfg["synthetic"]["path"] = strategy, synthetic
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = read_json(run / "result.json")
    result.update(strategy=strategy, synthetic=synthetic or None)
    result["images"]["synthetic"] = images
    (run / "result.json").write_text(json.dumps(result))
    return run


def test_classifier_that_saw_synthetic_images_is_refused_before_any_file(base, gen, tmp_path, capsys):
    common = ["method=classifier", "keep.top_k=2", "progress=false", "device=cpu"]
    mixed = _run_copy(base, tmp_path, "mixed", "mixed", str(gen), images=15)  # trained on the very set filtered
    err = _one_line_error(capsys, str(gen), f"classifier.run={mixed}", "name=bymixed", *common)
    assert f"classifier.run={str(mixed)!r} used synthetic images (strategy=mixed" in err
    assert "(the set being filtered)" in err and "strategy=vanilla" in err
    other = _run_copy(base, tmp_path, "bpp", "bridged++", str(tmp_path / "another-set"), images=30)
    err = _one_line_error(capsys, str(gen), f"classifier.run={other}", "name=bybpp", *common)
    assert "strategy=bridged++" in err and "being filtered" not in err
    matched = _run_copy(base, tmp_path, "matched", "vanilla_matched", str(gen))  # a set given only to count steps
    assert "strategy=vanilla_matched" in _one_line_error(capsys, str(gen), f"classifier.run={matched}", *common)
    older = _run_copy(base, tmp_path, "older", "synthetic_only", "", images=15)  # no synthetic.path, but images
    assert "strategy=synthetic_only" in _one_line_error(capsys, str(gen), f"classifier.run={older}", *common)
    assert not (gen / "filters").exists()  # refused before the filter's folder (or its lock) was made
    (gen / "filters" / "late").mkdir(parents=True)  # a folder left by a start that failed: refused when loading
    assert "used synthetic images" in _one_line_error(capsys, str(gen), f"classifier.run={mixed}", "name=late", *common)


def test_classifier_filter_reads_neither_the_test_split_nor_test_scores(base, gen, tmp_path):
    """The run's test split and test numbers are never an input: without them the scores are the same."""
    real = Path(shutil.copytree(base["real"] / "train", tmp_path / "real" / "train"))
    run = Path(shutil.copytree(base["run"], tmp_path / "run"))
    result = read_json(run / "result.json")
    for key in [k for k in result if k.startswith("test")]:
        result.pop(key)
    (run / "result.json").write_text(json.dumps(result))
    common = ["method=classifier", "keep.top_k=2", "progress=false", "device=cpu", f"set_dir={gen}"]
    run_filter(load_config(FilterConfig, None, [*common, f"classifier.run={base['run']}", "name=full"]))
    run_filter(load_config(FilterConfig, None, [*common, f"classifier.run={run}", f"classifier.data_root={real.parent}",
                                                "name=notest"]))
    assert not (real.parent / "test").exists()
    full = {r["id"]: r["prob"] for r in read_jsonl(gen / "filters" / "full" / "scores.jsonl")}
    notest = {r["id"]: r["prob"] for r in read_jsonl(gen / "filters" / "notest" / "scores.jsonl")}
    assert full.keys() == notest.keys() and all(abs(full[i] - notest[i]) < 1e-6 for i in full)
    assert kept(gen, "full") == kept(gen, "notest")


@pytest.mark.parametrize("where", ["absolute", "./", "~/", "a/b/c"])
def test_missing_local_clip_folder_is_named_and_leaves_no_folder(gen, tmp_path, capsys, where):
    spec = {"absolute": str(tmp_path / "no-clip"), "./": "./no-such-clip-folder", "~/": "~/no-such-clip-folder-x9",
            "a/b/c": "some/local/clip"}[where]
    err = _one_line_error(capsys, str(gen), f"clip.model={spec}", "keep.top_k=1", "progress=false", "device=cpu")
    assert f"clip.model={spec!r} does not exist; give a local CLIP folder (save_pretrained) or a hub id" in err
    assert not (gen / "filters").exists()
    from synthtl.filtering.scorers import looks_like_path

    assert not looks_like_path("openai/clip-vit-base-patch32") and not looks_like_path("clip")  # hub ids stay hub ids


def test_filter_that_failed_at_start_is_not_called_unfinished(base, gen, capsys):
    common = ["keep.top_k=2", "progress=false", "batch_size=4"]
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_line_error(capsys, str(gen), f"clip.model={base['clip']}",
                                                          "device=cuda", "name=oncuda", *common)
        assert not (gen / "filters" / "oncuda").exists()  # refused before the folder was made
    # a folder that is not a CLIP: found out only by loading it, so the folder (its lock) exists by then
    assert "could not be loaded" in _one_line_error(capsys, str(gen), f"clip.model={base['real']}", "name=bad",
                                                    "device=cpu", *common)
    assert (gen / "filters" / "bad").is_dir() and not (gen / "filters" / "bad" / "scores.jsonl").exists()
    with pytest.raises(DataError, match=r"filter 'bad' of .* has no kept list for 5 images per class: run `synthtl "):
        kept(gen, "bad")
    summary = run_filter(clip_cfg(base, gen, "keep.top_k=2", "name=bad"))  # the name is still free to use
    assert summary["kept"] == 6 and len(kept(gen, "bad")) == 6
