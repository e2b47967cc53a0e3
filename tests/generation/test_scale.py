"""Generated sets at scale: compact rows, the completion record, one plan and one finalize, batched logging."""

import json
import threading

import numpy as np
import pytest

from synthtl.data import synthetic
from synthtl.data.datasets import load_split
from synthtl.data.synthetic import COMPLETE, MANIFEST, PLAN, load_synthetic, read_logged, read_progress, read_rows
from synthtl.files import read_json, read_jsonl, write_json
from synthtl.generation import plan as planning
from synthtl.generation import run as gen_run
from synthtl.generation.run import run_generate
from tests.conftest import run_cli
from tests.generation.test_generate import cfg_for


def _ident(**kw) -> dict:
    base = {"format": 1, "model": "m", "revision": "r", "scheduler": "ddim", "steps": 3, "guidance": 2.0,
            "height": 32, "width": 32, "dtype": "fp32", "templates": ["a {}", "b {}"], "suffix": "",
            "negative": "", "style_hash": "", "seed": 7, "classes": [], "image_format": "jpeg", "quality": 95,
            "train_copy": 256}
    return {**base, **kw}


def test_manifest_lines_are_the_json_of_the_rows(tmp_path):
    names = ['quote " and \\ slash', "Café crème", "plain"]
    prompts = [[{"prompt": f"a {n}", "template": 0, "truncated": False, "requested_prompt": f"a {n}"},
                {"prompt": "b cut", "template": 1, "truncated": True, "requested_prompt": f"b {n} long"}]
               for n in names]
    for ident in (_ident(classes=names), _ident(classes=names, train_copy=0, negative="ugly", image_format="png")):
        table = planning.class_table([(f"id-{n}", n) for n in names], prompts, ["<s>", "", "<t>"])
        rows = planning.write_or_check(tmp_path / ident["image_format"], ident, table, 3)
        lines = list(planning.manifest_lines(rows))
        assert len(lines) == len(rows) == 9
        for p, line in enumerate(lines):
            assert line == json.dumps(rows.row(p)) + "\n"  # byte for byte what the row-by-row writer gave
        assert read_jsonl(tmp_path / ident["image_format"] / MANIFEST) == [rows.row(p) for p in range(9)]


def test_fast_log_parse_equals_the_json_reader(tmp_path):
    names = ["a", "b"]
    table = planning.class_table([(n, n) for n in names], [[{"prompt": n, "template": 0, "truncated": False,
                                                            "requested_prompt": n}] for n in names], ["", ""])
    rows = planning.write_or_check(tmp_path, _ident(classes=names), table, 3)
    log = tmp_path / "progress" / "shard-0000-of-0001.jsonl"
    lines = [{"id": "c00000-i000000", "seed": 5, "redraws": 0}, {"id": "c00001-i000002", "seed": 9, "redraws": 2},
             {"id": "c00000-i000001", "redraws": 0, "seed": 1},  # another key order: takes the JSON path
             {"id": "c00007-i000000", "seed": 1, "redraws": 0}]  # not a planned row
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "c00001-i0000')  # torn last line
    logged, extra = read_logged(rows)
    expected = {r["id"] for r in read_progress(tmp_path).values()} - {"c00007-i000000"}
    assert {planning.row_id(int(c), int(i)) for c, i in zip(rows.cls[logged], rows.idx[logged], strict=True)} \
        == expected
    assert extra == {rows.position(1, 2): lines[1]}
    log.write_text(json.dumps(lines[0]) + "\nnot json\n")
    with pytest.raises(synthetic.CorruptFileError, match="line 2"):
        read_logged(rows)


def test_is_complete_reads_only_the_record_and_repair_withdraws_it(folder_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "gen"
    assert not planning.is_complete(out)
    run_generate(cfg_for(folder_data, out, "shard=0/2"))
    assert not planning.is_complete(out, 1)  # half the set: no record yet
    run_generate(cfg_for(folder_data, out, "shard=1/2"))
    rec = read_json(out / COMPLETE)
    assert rec["complete"] and rec["prefix"] == [4, 4, 4] and rec["plan"] == read_json(out / PLAN)["plan_hash"]
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(AssertionError(f))
                        if str(f).endswith(MANIFEST) or "progress" in str(f) else real_open(f, *a, **k))
    assert planning.is_complete(out) and planning.is_complete(out, 2) and not planning.is_complete(out, 5)
    monkeypatch.undo()
    victim = next((out / "images").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:50])
    assert run_cli("generate", "--validate", str(out), "--repair") == 1
    assert not planning.is_complete(out, 1)
    run_generate(cfg_for(folder_data, out))
    assert planning.is_complete(out)
    run_generate(cfg_for(folder_data, out, "per_class=6"))  # extended: the first 4 of each class stay complete
    assert planning.is_complete(out, 4) and planning.is_complete(out, 6)


def test_finished_set_reruns_without_loading_the_model(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    monkeypatch.setattr(gen_run, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model for nothing"))
    monkeypatch.setattr(gen_run, "read_state", lambda *a, **k: pytest.fail("read the logs for nothing"))
    s = run_generate(cfg_for(folder_data, out, "per_class=2"))
    assert s["generated"] == 0 and s["already_done"] == 6 and s["set_complete"]


def test_shards_plan_once_and_the_last_one_finalizes(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    manifests, checks = [], []
    real_write, real_state = planning.write_manifest, planning.read_state
    monkeypatch.setattr(planning, "write_manifest", lambda f, r, st=None: manifests.append(st is not None)
                        or real_write(f, r, st))
    monkeypatch.setattr(planning, "read_state", lambda f: checks.append(1) or real_state(f))
    results = [run_generate(cfg_for(folder_data, out, f"shard={i}/3"))["set_complete"] for i in range(3)]
    assert results == [False, False, True]
    assert manifests == [False, True]  # planned once, finalized once (by the last shard)
    assert len(checks) == 1  # only the last shard read the whole set


def test_writes_are_logged_per_batch_off_the_feeding_thread(folder_data, tmp_path, monkeypatch):
    appends = []
    real = gen_run.append_jsonl

    def spy(path, rows, fsync=True):
        rows = list(rows)
        appends.append((threading.current_thread() is threading.main_thread(), len(rows)))
        return real(path, rows, fsync)

    monkeypatch.setattr(gen_run, "append_jsonl", spy)
    s = run_generate(cfg_for(folder_data, tmp_path / "gen"))  # batch_size=4, 12 images
    assert s["generated"] == 12 and sum(n for _, n in appends) == 12
    assert len(appends) == 3 and not any(main for main, _ in appends)


def test_set_of_an_older_version_loads_and_is_upgraded(folder_data, tmp_path):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    plan = read_json(out / PLAN)
    write_json(out / PLAN, {k: plan[k] for k in ("identity", "per_class", "rows")})  # the layout-1 plan.json
    (out / COMPLETE).unlink()
    real = load_split("folder", "train", folder_data)
    assert read_rows(out).legacy is not None
    assert len(load_synthetic(out, real, per_class=3)) == 9
    s = run_generate(cfg_for(folder_data, out))
    assert s["generated"] == 0 and s["set_complete"]
    assert read_rows(out).legacy is None and planning.is_complete(out)


def test_reading_a_set_reads_no_manifest(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    monkeypatch.setattr(synthetic, "iter_jsonl", lambda p: pytest.fail(f"read {p}"))
    real = load_split("folder", "train", folder_data)
    syn = load_synthetic(out, real, per_class=3)
    counts = np.bincount(np.array(syn.labels), minlength=3)
    assert len(syn) == 9 and counts.tolist() == [3, 3, 3] and all(p.startswith("train/") for p in syn.paths)
    assert planning.status(out)["done"] == 12
