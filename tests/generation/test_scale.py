"""Generated sets at scale: compact rows, the completion record, one plan and one finalize, batched logging."""

import builtins
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from synthtl.data import genset
from synthtl.data.datasets import load_split
from synthtl.data.genset import COMPLETE, MANIFEST, PLAN, read_logged, read_rows
from synthtl.data.synthetic import load_synthetic_set
from synthtl.errors import DataError
from synthtl.files import CorruptFileError, read_json, read_jsonl, write_json
from synthtl.generation import run as gen_run
from synthtl.generation import shards
from synthtl.generation.run import run_generate
from tests.conftest import run_cli
from tests.generation.test_generate import cfg_for


def _settings(**kw) -> dict:
    base = {"format": 1, "model": "m", "revision": "r", "scheduler": "ddim", "steps": 3, "guidance": 2.0,
            "height": 32, "width": 32, "dtype": "fp32", "templates": ["a {}", "b {}"], "suffix": "",
            "negative": "", "style_hash": "", "seed": 7, "classes": [], "image_format": "jpeg", "quality": 95,
            "train_copy": 256}
    return {**base, **kw}


def _plan(folder, names, per_class, **kw):
    prompts = [[{"prompt": f"a {n}", "template": 0, "truncated": False, "requested_prompt": f"a {n}"},
                {"prompt": "b cut", "template": 1, "truncated": True, "requested_prompt": f"b {n} long"}]
               for n in names]
    table = genset.class_table([(f"id-{n}", n) for n in names], prompts, ["<s>", "", "<t>"][:len(names)])
    return genset.write_or_extend(folder, _settings(classes=names, **kw), table, per_class)


def test_manifest_holds_every_row_and_extending_keeps_them(tmp_path):
    names = ['quote " and \\ slash', "Café crème", "plain"]
    rows = _plan(tmp_path, names, 3, negative="ugly", image_format="png")
    assert read_jsonl(tmp_path / MANIFEST) == [rows.row(p) for p in range(9)]
    assert rows.row(4)["truncated"] and rows.row(4)["requested_prompt"] == "b Café crème long"
    bigger = _plan(tmp_path, names, 5, negative="ugly", image_format="png")
    assert [bigger.row(bigger.position(c, i)) for c in range(3) for i in range(3)] == [rows.row(p) for p in range(9)]
    with pytest.raises(Exception, match="another config: negative"):
        _plan(tmp_path, names, 5, negative="", image_format="png")


def test_log_parse_counts_whole_rows_and_names_a_damaged_line(tmp_path):
    rows = _plan(tmp_path, ["a", "b"], 3)
    log = tmp_path / "progress" / "shard-0000-of-0001.jsonl"
    lines = [{"id": "c00000-i000000", "seed": 5, "redraws": 0}, {"id": "c00001-i000002", "seed": 9, "redraws": 2},
             {"id": "c00007-i000000", "seed": 1, "redraws": 0}]  # not a planned row
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "c00001-i0000')  # torn last line
    logged, redrawn = read_logged(rows)
    assert np.flatnonzero(logged).tolist() == [rows.position(0, 0), rows.position(1, 2)]
    assert redrawn == {rows.position(1, 2): {"seed": 9, "redraws": 2}}
    log.write_text(json.dumps(lines[0]) + '\n{"id": "c00000-i000001", "redraws": 0, "seed": 1}\n')
    with pytest.raises(CorruptFileError, match="line 2: not a progress row"):
        read_logged(rows)


def test_is_complete_reads_only_the_record_and_repair_withdraws_it(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    assert not genset.is_complete(out)
    run_generate(cfg_for(folder_data, out, "shard=0/2"))
    assert not genset.is_complete(out, 1)  # half the set: no record yet
    run_generate(cfg_for(folder_data, out, "shard=1/2"))
    rec = read_json(out / COMPLETE)
    assert rec["complete"] and rec["prefix"] == [4, 4, 4] and rec["plan"] == read_json(out / PLAN)["plan_hash"]
    real_open = builtins.open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(AssertionError(f))
                        if str(f).endswith(MANIFEST) or "progress" in str(f) else real_open(f, *a, **k))
    assert genset.is_complete(out) and genset.is_complete(out, 2) and not genset.is_complete(out, 5)
    monkeypatch.undo()
    victim = next((out / "images").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:50])
    assert run_cli("generate", "--validate", str(out), "--repair") == 1
    assert not genset.is_complete(out, 1)
    run_generate(cfg_for(folder_data, out))
    assert genset.is_complete(out)
    run_generate(cfg_for(folder_data, out, "per_class=6"))  # extended: the first 4 of each class stay complete
    assert genset.is_complete(out, 4) and genset.is_complete(out, 6)


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
    real_write, real_state = genset.write_manifest, shards.read_state
    for module in (genset, shards):
        monkeypatch.setattr(module, "write_manifest", lambda f, r, st=None: manifests.append(st is not None)
                            or real_write(f, r, st))
    monkeypatch.setattr(shards, "read_state", lambda f: checks.append(1) or real_state(f))
    results = [run_generate(cfg_for(folder_data, out, f"shard={i}/3"))["set_complete"] for i in range(3)]
    assert results == [False, False, True]
    assert manifests == [False, True]  # planned once, finalized once (by the last shard)
    assert len(checks) == 1  # only the last shard read the whole set
    assert all(r["status"] == "done" for r in read_jsonl(out / MANIFEST))


def test_writes_are_logged_per_batch_off_the_feeding_thread(folder_data, tmp_path, monkeypatch):
    appends = []
    real = gen_run.append_jsonl

    def spy(path, rows, fsync=True):
        rows = list(rows)
        if Path(path).name.startswith("shard-"):  # progress-log appends (the cost log is appended beside them)
            appends.append((threading.current_thread() is threading.main_thread(), len(rows)))
        return real(path, rows, fsync)

    monkeypatch.setattr(gen_run, "append_jsonl", spy)
    s = run_generate(cfg_for(folder_data, tmp_path / "gen"))  # batch_size=4, 12 images
    assert s["generated"] == 12 and sum(n for _, n in appends) == 12
    assert len(appends) == 3 and not any(main for main, _ in appends)


def test_a_set_in_another_layout_is_refused_in_one_line(folder_data, tmp_path, capsys):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    plan = read_json(out / PLAN)
    write_json(out / PLAN, {**plan, "layout": 2})
    with pytest.raises(DataError, match="another version of synthtl.*new out_dir"):
        read_rows(out)
    assert run_cli("generate", "--status", str(out)) == 2
    assert "another version of synthtl" in capsys.readouterr().err


def test_reading_a_set_reads_no_manifest(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    real_open = builtins.open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(AssertionError(f))
                        if str(f).endswith(MANIFEST) else real_open(f, *a, **k))
    real = load_split("folder", "train", folder_data)
    syn = load_synthetic_set(out, real, per_class=3)[0]
    counts = np.bincount(np.array(syn.labels), minlength=3)
    assert len(syn) == 9 and counts.tolist() == [3, 3, 3] and all(p.startswith("train/") for p in syn.paths)
    assert shards.status(out)["done"] == 12
