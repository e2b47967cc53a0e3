"""The report built from canned run folders (no training), checked against hand-computed numbers."""

import csv
import hashlib
import io
import json
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from synthtl.config import ReportConfig
from synthtl.data.genset import read_rows
from synthtl.reporting.report import build_report
from synthtl.reporting.tables import mean_std, paired
from tests.conftest import run_cli
from tests.data.sets import fake_set

RANDOM_FEATURES = ReportConfig(features="test_resnet", features_fallback="test_resnet", features_pretrained=False,
                               max_images=50, kid_subsets=3, kid_subset_size=10, bootstrap=2000)


def canned_run(root: Path, rid: str, labels: dict, top1: float, leep=None, syn_path=None, data_root=None) -> None:
    folder = root / "runs" / rid
    folder.mkdir(parents=True)
    bridged = labels["strategy"].startswith("bridged")
    stages = {"real": {"epochs": 2, "steps": 20, "batch_size": 8, "wall_s": 10.0, "gpu_s": 10.0,
                       "train_images_per_s": 100.0}}
    if bridged:
        stages = {"synthetic": {**stages["real"], "wall_s": 5.0, "gpu_s": 5.0}, **stages}
    result = {"test": {"top1": top1, "top5": 99.0, "mean_class_acc": top1 - 1, "loss": 0.5}, "val": None,
              "selected": "last", "stages": stages, "total_steps": sum(s["steps"] for s in stages.values()),
              "leep": leep or {}, "wall_s": sum(s["wall_s"] for s in stages.values()),
              "gpu_s": sum(s["gpu_s"] for s in stages.values()), "model": labels["model"], "seed": labels["seed"],
              "identity": hashlib.sha256(json.dumps([rid, labels], sort_keys=True).encode()).hexdigest()[:12]}
    (folder / "result.json").write_text(json.dumps(result))
    cfg = {"strategy": labels["strategy"], "seed": labels["seed"],
           "model": {"name": labels["model"], "pretrained": True},
           "data": {"name": labels["dataset"], "shots": labels["shots"], "root": str(data_root or ""), "cache_dir": ""},
           "synthetic": {"path": str(syn_path or ""), "per_class": labels.get("volume") or 0}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"stage": "real", "epoch": e, "train_top1": top1 - 10 + e, "test_top1": top1 - 5 + 2.5 * e}
            for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def labels(dataset, strategy, seed, volume=None, model="resnet18"):
    syn = strategy != "vanilla"
    return {"dataset": dataset, "model": model, "strategy": strategy, "seed": seed, "shots": 0,
            "volume": (volume or 1000) if syn else None, "guidance": 2.0 if syn else None,
            "prompt": "single" if syn else None}


@pytest.fixture
def canned_study(tmp_path) -> Path:
    root = tmp_path / "study"
    plan = []
    accs = {"vanilla": [80.0, 81.0, 82.0], "bridged++": [85.0, 85.0, 86.0], "mixed": [70.0, 72.0, 71.0]}
    for ds in ("aircraft", "cars", "dtd"):
        for strategy, values in accs.items():
            for seed, acc in enumerate(values):
                rid = f"{ds}-{strategy}-s{seed}"
                lab = labels(ds, strategy, seed)
                leep = {"pretrained": -4.0, **({"stage1": -3.0} if strategy == "bridged++" else {})}
                canned_run(root, rid, lab, acc + (1 if ds == "cars" else 0), leep)
                plan.append({"kind": "finetune", "id": rid, "labels": lab})
    for seed, acc in enumerate([83.0, 84.0, 84.5]):  # a second volume for the sweep
        rid = f"aircraft-bridged++-v500-s{seed}"
        lab = labels("aircraft", "bridged++", seed, volume=500)
        canned_run(root, rid, lab, acc)
        plan.append({"kind": "finetune", "id": rid, "labels": lab})
    (root / "plan.json").write_text(json.dumps({"name": "canned", "description": "canned runs", "jobs": plan}))
    return root


def test_paired_statistics_hand_computed():
    p = paired({0: 81.0, 1: 82.0, 2: 83.0}, {0: 80.0, 1: 80.0, 2: 80.0}, n_boot=2000)
    # diffs 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3); for 2 degrees of freedom p = 1 - t / sqrt(2 + t^2)
    t = 2 * math.sqrt(3)
    assert p["n"] == 3 and p["mean_diff"] == 2.0 and abs(p["std_diff"] - 1.0) < 1e-12
    assert abs(p["t"] - t) < 1e-9 and abs(p["p"] - (1 - t / math.sqrt(2 + t * t))) < 1e-9
    assert 1.0 <= p["ci_low"] <= 2.0 <= p["ci_high"] <= 3.0
    assert paired({0: 1.0}, {1: 1.0})["n"] == 0
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3) and mean_std([5.0]) == (5.0, 0.0, 1)


def test_report_from_canned_runs(canned_study):
    paths = build_report(canned_study, RANDOM_FEATURES)
    tables = canned_study / "report" / "tables"
    rows = list(csv.DictReader(io.StringIO((tables / "strategies_1.csv").read_text())))
    cell = next(r for r in rows if r["dataset"] == "aircraft" and r["strategy"] == "bridged++")
    # bridged++ 85, 85, 86 vs vanilla 80, 81, 82 paired by seed: diffs 5, 4, 4
    assert abs(float(cell["mean"]) - 85 - 1 / 3) < 1e-9 and abs(float(cell["std"]) - math.sqrt(1 / 3)) < 1e-9
    assert abs(float(cell["delta_vs_vanilla"]) - 13 / 3) < 1e-9
    t = (13 / 3) / (math.sqrt(1 / 3) / math.sqrt(3))
    assert abs(float(cell["p_value"]) - (1 - t / math.sqrt(2 + t * t))) < 1e-9
    assert float(cell["paper"]) == 85.2  # the paper's number beside ours
    md = (tables / "strategies_1.md").read_text()
    assert "85.33 ± 0.58 [+4.33 (p=0.006)]" in md and "paper bridged++" in md
    assert "\\begin{tabular}" in (tables / "strategies_1.tex").read_text()
    assert (tables / "volume.csv").is_file() and (tables / "leep.csv").is_file() and (tables / "cost.csv").is_file()
    leep = list(csv.DictReader(io.StringIO((tables / "leep.csv").read_text())))
    assert float(next(r for r in leep if r["dataset"] == "aircraft")["paper_stage1"]) == -3.41
    for name in ("radar_strategies_1.png", "convergence_aircraft.png", "volume.png", "leep.png", "cost.png"):
        f = canned_study / "report" / "figures" / name
        assert f.is_file() and f.stat().st_size > 2000, name
        with Image.open(f) as im:
            assert im.size[0] > 200
    html = paths["html"].read_text()
    assert html.count("<table class='results'") >= 5 and html.count("data:image/png;base64,") >= 5
    assert (canned_study / "report" / "runs.csv").read_text().count("\n") == 3 * 3 * 3 + 3 + 1


def _folder_gen_set(root: Path, folder_data: Path, plant: bool) -> Path:
    """A generated set for the folder dataset (3 images per class copied from its train images); with `plant`, red
    fox's image 1 is a copy of a real test image."""
    classes = ["blue_jay", "green_frog", "red_fox"]

    def source(c: int, i: int) -> Path:
        if plant and c == 2 and i == 1:
            return folder_data / "test" / "red_fox" / "img_002.jpg"
        return folder_data / "train" / classes[c] / f"img_00{i}.jpg"

    return fake_set(root / "gen" / "gen-folder", classes, 3, {(c, i) for c in range(3) for i in range(3)},
                    source=source)


def test_quality_and_leakage_find_a_planted_duplicate(tmp_path, folder_data):
    root = tmp_path / "study"
    gen = _folder_gen_set(root, folder_data, plant=True)
    for seed in (0, 1):
        canned_run(root, f"v{seed}", labels("folder", "vanilla", seed), 70.0 + seed, data_root=folder_data)
        canned_run(root, f"b{seed}", labels("folder", "bridged++", seed), 75.0, syn_path=gen, data_root=folder_data)
    build_report(root, RANDOM_FEATURES)
    leak = list(csv.DictReader(io.StringIO((root / "report" / "tables" / "leakage.csv").read_text())))
    assert leak[0]["near_duplicates"] != "0"
    html = (root / "report" / "index.html").read_text()
    # both thumbnails are captioned with their split, class and file
    planted = read_rows(gen).rel_path(read_rows(gen).position(2, 1))
    assert "test · red fox · red_fox/img_002.jpg" in html and f"synthetic · red fox · {planted}" in html
    assert "hash_bits=0" in html
    quality = list(csv.DictReader(io.StringIO((root / "report" / "tables" / "quality.csv").read_text())))
    assert float(quality[0]["fid"]) >= 0 and 0 <= float(quality[0]["precision"]) <= 1
    assert list((root / "report" / "figures" / "grids").rglob("*.png"))  # real vs synthetic sheets


def test_report_cli_and_missing_runs(canned_study, tmp_path, capsys):
    assert run_cli("report", str(canned_study), "features=test_resnet", "features_pretrained=false",
                   "bootstrap=100") == 0
    assert "index.html" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert run_cli("report", str(tmp_path / "empty")) == 2
    assert "no finished runs" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.integration
@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_html_renders_in_headless_chromium(canned_study, tmp_path, folder_data):
    gen = _folder_gen_set(canned_study, folder_data, plant=True)
    canned_run(canned_study, "extra-v", labels("folder", "vanilla", 0), 70.0, data_root=folder_data)
    canned_run(canned_study, "extra-b", labels("folder", "bridged++", 0), 71.0, syn_path=gen, data_root=folder_data)
    page = build_report(canned_study, RANDOM_FEATURES)["html"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([_chromium(), *flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    import re

    check = json.loads(re.search(r'data-check="([^"]+)"', dom).group(1).replace("&quot;", '"'))
    assert check["broken"] == 0 and check["images"] >= 10
    assert check["tables"] >= 8 and check["empty_tables"] == 0
    shot = tmp_path / "page.png"
    subprocess.run([_chromium(), *flags, "--window-size=1280,3000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1280, 3000) and len(set(im.convert("L").resize((64, 64)).getdata())) > 10


def test_a_filtered_set_is_its_own_setting_never_pooled_with_the_unfiltered_one(tmp_path):
    from synthtl.reporting.collect import Run
    from synthtl.reporting.tables import settings

    def run(rid, strategy, filt):
        labels = {"dataset": "aircraft", "model": "resnet18", "strategy": strategy, "seed": 0, "shots": 0,
                  "volume": 1000 if strategy != "vanilla" else None, "guidance": 2.0 if strategy != "vanilla" else None,
                  "prompt": "single" if strategy != "vanilla" else None, "filter": filt}
        return Run(rid, tmp_path / rid, labels, {"test": {"top1": 50.0}, "seed": 0}, {}, [])

    groups = settings([run("a", "bridged++", None), run("b", "bridged++", "clip80"), run("v", "vanilla", None)])
    prompts = sorted(k[4] for k, _ in groups)
    assert prompts == ["single", "single, filter clip80"]
    assert all(sorted(r.id for r in members if r.labels["strategy"] == "bridged++") in (["a"], ["b"])
               for _, members in groups)


def test_accuracy_per_gpu_hour_is_per_setting_and_counts_every_input(tmp_path):
    """Each method is its own row (prompt style, filter), and its hours include the style, the generation and the
    filter that made its images, beside the extra fine-tuning over the same seed's vanilla run."""
    from synthtl.reporting.collect import GenSet, Run
    from synthtl.reporting.filters import FilterRun
    from synthtl.reporting.tables import accuracy_per_gpu_hour

    set_a, set_b = tmp_path / "gen" / "a", tmp_path / "gen" / "b"

    def run(rid, strategy, seed, top1, gpu_s, prompt=None, path=None, filt=""):
        lab = {"dataset": "aircraft", "model": "resnet18", "strategy": strategy, "seed": seed, "shots": 0,
               "volume": 1000 if path else None, "guidance": 2.0 if path else None, "prompt": prompt, "filter": filt}
        cfg = {"synthetic": {"path": str(path), "filter": filt}} if path else {}
        return Run(rid, tmp_path / rid, lab, {"test": {"top1": top1}, "gpu_s": gpu_s}, cfg)

    runs = [run(f"v{s}", "vanilla", s, 80.0 + s, 3600) for s in (0, 1)]
    runs += [run(f"m{s}", "mixed", s, 82.0 + s, 5400, "single", set_a) for s in (0, 1)]
    runs += [run(f"l{s}", "mixed", s, 84.0 + s, 5400, "lora", set_b) for s in (0, 1)]
    runs += [run(f"f{s}", "mixed", s, 83.0 + s, 5400, "single", set_a, "clip80") for s in (0, 1)]
    runs += [run(f"x{s}", "vanilla_mixup", s, 81.0 + s, 3600) for s in (0, 1)]
    gensets = [GenSet("a", set_a, {"style_hash": ""}, {}, 10, 7200, 7200, 0),
               GenSet("b", set_b, {"style_hash": "lora-h1"}, {}, 10, 3600, 3600, 0)]
    styles = [{"hash": "h1", "gpu_s": 1800.0}, {"hash": "other", "gpu_s": 99999.0}]
    filters = [FilterRun("a", set_a, "clip80", {}, [], {"sessions": 2, "scored": 10, "seconds": 900.0,
                                                        "gpu_seconds": 900.0})]
    t = accuracy_per_gpu_hour(runs, gensets, styles, filters)
    rows = {(r[1].split(", ")[-1], r[2]): r for r in t.rows}
    # extra fine-tuning 0.5 h per seed; single: + 2 h of generation; lora: + 1 h generation + 0.5 h style;
    # filtered: + 2 h generation + 0.25 h filtering; gains +2, +4, +3 points
    assert rows[("single", "mixed")][4:] == ["+2.00", "2.500", "+0.80"]
    assert rows[("lora", "mixed")][4:] == ["+4.00", "2.000", "+2.00"]
    assert rows[("filter clip80", "mixed")][4:] == ["+3.00", "2.750", "+1.09"]
    assert [r for r in t.rows if r[2] == "vanilla_mixup"] == [["aircraft", "resnet18, full data", "vanilla_mixup", "2",
                                                                  "+1.00", "0.000", "– (no extra GPU time)"]]
    assert len(t.rows) == 4 and {r[3] for r in t.rows} == {"2"}
    # a moved study: the runs' configs still name the old place; its sets are found by their folder names
    moved = [GenSet(g.id, tmp_path / "moved" / "gen" / g.folder.name, g.settings, {}, 10, g.seconds, g.gpu_seconds, 0)
             for g in gensets]
    moved_filters = [FilterRun("a", moved[0].folder, "clip80", {}, [], filters[0].cost)]
    assert accuracy_per_gpu_hour(runs, moved, styles, moved_filters).rows == t.rows


def test_runs_outside_a_study_keep_filtered_and_per_class_lora_sets_apart(tmp_path):
    """Without a study plan, labels come from each run's config and set: a filtered set is its own setting (never
    pooled with the unfiltered one), and a per-class style LoRA set is told from a dataset one."""
    from synthtl.reporting.collect import find_runs

    root = tmp_path / "loose"
    sets = {}
    for name, note in (("dset", {"style_lora": "dataset"}), ("cls", {"style_lora": "class"})):
        sets[name] = tmp_path / "gen" / name
        sets[name].mkdir(parents=True)
        (sets[name] / "plan.json").write_text(json.dumps({"settings": {"style_hash": "lora-abc", "guidance": 2.0},
                                                           **note}))
    canned_run(root, "v0", labels("aircraft", "vanilla", 0), 80.0)
    canned_run(root, "m0", labels("aircraft", "mixed", 0), 82.0, syn_path=sets["dset"])
    canned_run(root, "f0", labels("aircraft", "mixed", 0), 84.0, syn_path=sets["dset"])
    canned_run(root, "c0", labels("aircraft", "mixed", 0), 85.0, syn_path=sets["cls"])
    cfg = yaml.safe_load((root / "runs" / "f0" / "config.yaml").read_text())
    cfg["synthetic"]["filter"] = "clip80"
    (root / "runs" / "f0" / "config.yaml").write_text(yaml.safe_dump(cfg))
    got = {r.id: (r.labels["prompt"], r.labels["filter"]) for r in find_runs(root)}
    assert got == {"v0": (None, ""), "m0": ("lora", ""), "f0": ("lora", "clip80"), "c0": ("lora_per_class", "")}
    build_report(root, replace(RANDOM_FEATURES, quality=False, published=False))
    rows = list(csv.DictReader(io.StringIO((root / "report" / "tables" / "runs.csv").read_text())))
    assert len(rows) == 4
    prompts = {r["prompt"] for t in (root / "report" / "tables").glob("strategies_*.csv")
               for r in csv.DictReader(io.StringIO(t.read_text()))}
    assert {"lora", "lora, filter clip80", "lora_per_class"} <= prompts  # three settings, none pooled
    assert "| lora, filter clip80 |" in (root / "report" / "tables" / "runs.md").read_text()  # the rendered table too
    filtered = next(t for t in (root / "report" / "tables").glob("strategies_*.md") if "filter clip80" in t.read_text())
    assert "runs train on what the filter's rule keeps of the first 1000 per class" in filtered.read_text()


def test_cost_table_keeps_inversion_and_lora_styles_apart():
    from synthtl.reporting.tables import cost_table

    styles = [{"method": "lora", "train_seconds": 10.0, "steps": 20, "gpu_s": 10.0},
              {"train_seconds": 5.0, "steps": 50, "gpu_s": 0.0}, {"train_seconds": 5.0, "steps": 50}]
    rows = {r[0]: r for r in cost_table([], [], styles).rows}
    assert rows["style: LoRA"][1:] == ["1", "0.003", "0.003", "2.00 steps/s"]
    assert rows["style: textual inversion"][1:] == ["2", "0.003", "0.000", "10.00 steps/s"]


def test_leep_rows_are_per_method_never_pooled(tmp_path):
    """Stage-1 LEEP per setting and strategy: DSI, a filtered DSI set and single template each get their own row."""
    from synthtl.reporting.collect import Run
    from synthtl.reporting.tables import leep_table

    def run(rid, strategy, seed, prompt=None, filt="", stage1=None):
        lab = {"dataset": "aircraft", "model": "resnet18", "strategy": strategy, "seed": seed, "shots": 0,
               "volume": 1000 if prompt else None, "guidance": 2.0 if prompt else None, "prompt": prompt,
               "filter": filt}
        leep = {"pretrained": -4.0 - seed / 10, **({"stage1": stage1} if stage1 is not None else {})}
        return Run(rid, tmp_path / rid, lab, {"test": {"top1": 80.0}, "leep": leep}, {})

    runs = [run(f"v{s}", "vanilla", s) for s in (0, 1)]
    runs += [run(f"s{s}", "bridged", s, "single", stage1=-3.0 - s) for s in (0, 1)]
    runs += [run(f"d{s}", "bridged", s, "dsi", stage1=-2.0) for s in (0, 1)]
    runs += [run(f"f{s}", "bridged", s, "dsi", "clip80", stage1=-1.0) for s in (0, 1)]
    t = leep_table(runs)
    got = {(r["setting"].split(", ")[-1], r["strategy"]): (r["leep_stage1"], r["n_stage1"]) for r in t.raw}
    assert got == {("single", "bridged"): (-3.5, 2), ("dsi", "bridged"): (-2.0, 2),
                   ("filter clip80", "bridged"): (-1.0, 2)}
    assert all(abs(r["leep_pretrained"] + 4.05) < 1e-9 and r["n_pretrained"] == 8 for r in t.raw)
    assert [r["paper_stage1"] for r in t.raw if "single" in r["setting"]] == [-3.41]  # the paper's setting only


def test_leep_rows_of_a_setting_without_stage1_models(tmp_path):
    """Pretrained LEEP of runs whose model and shots have no stage-1 (synthetic) model: one row, stage 1 empty."""
    from synthtl.reporting.collect import Run
    from synthtl.reporting.tables import leep_table

    def run(rid, strategy, shots, stage1=None):
        lab = {**labels("aircraft", strategy, 0), "shots": shots}
        leep = {"pretrained": -4.0 - shots / 100, **({"stage1": stage1} if stage1 is not None else {})}
        return Run(rid, tmp_path / rid, lab, {"test": {"top1": 80.0}, "leep": leep}, {})

    t = leep_table([run("v", "vanilla", 0), run("b", "bridged++", 0, -3.0), run("v16", "vanilla", 16)])
    few = [r for r in t.raw if r["shots"] == 16]
    assert [(r["setting"], r["strategy"], r["n_pretrained"], r["n_stage1"]) for r in few] == [
        ("resnet18, 16-shot", None, 1, 0)]
    assert t.rows[-1][2:4] == ["–", "-4.16"] and t.rows[-1][4] == "–"
