"""Generated sets survive full disks, kills, two writers and odd inputs; identities come from the weights."""

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthtl import files
from synthtl.config import GenerateConfig, GeneratorConfig, load_config
from synthtl.data import genset
from synthtl.data.datasets import load_split
from synthtl.data.genset import MANIFEST
from synthtl.data.synthetic import load_synthetic_set
from synthtl.errors import DataError
from synthtl.files import DiskFullError, read_json, read_jsonl, torn_tail
from synthtl.generation import pipeline, shards
from synthtl.generation import run as gen_run
from synthtl.generation.run import run_generate
from synthtl.identity import generator_weights
from tests.conftest import run_cli
from tests.data.sets import load_synthetic
from tests.generation.conftest import generate_until_write
from tests.generation.test_generate import TINY, cfg_for

EXACT = ["generator.batch_size=1", "writers=1", "per_class=2"]  # one image per batch: bytes independent of resume


class _Failing:
    """A file whose write puts part of the bytes on disk, then fails like a full disk (or a kill)."""

    def __init__(self, f, error: BaseException):
        self.f, self.error = f, error

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise self.error

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail_append(monkeypatch, nth: int, error: BaseException) -> None:
    """The nth append to a progress log (counted from now) tears: part of its bytes are written, then `error`."""
    count = [0]

    def fake_open(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)  # noqa: SIM115 (handed to the caller, who closes it)
        if mode == "ab" and "progress" in Path(path).parts and Path(path).name.startswith("shard-"):
            count[0] += 1
            if count[0] == nth:
                return _Failing(f, error)
        return f

    monkeypatch.setattr(files, "open", fake_open, raising=False)


def _kill_in_append(monkeypatch, nth: int) -> None:
    """The process dies in the middle of its nth progress-log append: part of the row reaches the disk, then
    nothing more is written (a killed process cleans nothing up)."""
    import json

    count = [0]
    real = gen_run.append_jsonl

    def dying(path, rows, fsync=True):
        if not Path(path).name.startswith("shard-"):  # the cost log: not a progress-log append
            return real(path, rows, fsync)
        count[0] += 1
        if count[0] < nth:
            return real(path, rows, fsync)
        if count[0] == nth:
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            with open(path, "ab") as f:
                f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(gen_run, "append_jsonl", dying)


def _the_set(out: Path) -> tuple[list[dict], dict[str, bytes]]:
    rows = read_jsonl(out / MANIFEST)
    return rows, {r["path"]: (out / r["path"]).read_bytes() for r in rows}


def test_full_disk_at_each_append_then_resume_gives_the_uninterrupted_set(folder_data, tmp_path, monkeypatch,
                                                                         one_pipeline):
    exact = [*EXACT, "per_class=1"]
    run_generate(cfg_for(folder_data, tmp_path / "ref", *exact))
    out = tmp_path / "gen"
    nth = 1
    while True:  # run k hits ENOSPC in the middle of its k-th append: every position in the log gets hit once
        _fail_append(monkeypatch, nth, OSError(errno.ENOSPC, "No space left on device"))
        try:
            s = run_generate(cfg_for(folder_data, out, *exact))
        except DiskFullError:
            assert all(torn_tail(p) == 0 for p in (out / "progress").glob("*.jsonl"))  # cut back, never glued
            nth += 1
            continue
        break
    assert nth == 3 and s["set_complete"]  # runs 1 and 2 hit the disk at their 1st and 2nd append; run 3 finished
    assert _the_set(out) == _the_set(tmp_path / "ref")
    ids = [r["id"] for p in (out / "progress").glob("shard-*.jsonl") for r in read_jsonl(p)]
    assert len(ids) == len(set(ids)) == 3


def test_a_torn_log_line_from_a_kill_is_survived_everywhere(folder_data, tmp_path, monkeypatch, capsys,
                                                           one_pipeline):
    run_generate(cfg_for(folder_data, tmp_path / "ref", *EXACT))
    out = tmp_path / "gen"
    _kill_in_append(monkeypatch, 4)  # killed in the middle of the 4th append (image 0 of each class is logged by then)
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg_for(folder_data, out, *EXACT))
    monkeypatch.undo()
    monkeypatch.setattr(gen_run, "load_pipeline", one_pipeline)
    log = out / "progress" / "shard-0000-of-0001.jsonl"
    assert torn_tail(log) > 0
    assert run_cli("generate", "--status", str(out)) == 0
    assert run_cli("export", str(out), "--out", str(tmp_path / "hf"), "--allow-partial") == 0
    syn, record = load_synthetic_set(out, load_split("folder", "train", folder_data), allow_partial=True)
    assert record["partial"] and record["allow_partial"] and len(syn) == record["done"] == 3 and record["total"] == 6
    capsys.readouterr()
    assert run_cli("generate", "--validate", str(out), "--repair") == 0
    assert "torn     progress/shard-0000-of-0001.jsonl" in capsys.readouterr().out and torn_tail(log) == 0
    _kill_in_append(monkeypatch, 1)  # torn again; this time resume straight over it
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg_for(folder_data, out, *EXACT))
    monkeypatch.undo()
    monkeypatch.setattr(gen_run, "load_pipeline", one_pipeline)
    assert torn_tail(log) > 0
    assert run_generate(cfg_for(folder_data, out, *EXACT))["set_complete"]
    assert _the_set(out) == _the_set(tmp_path / "ref")


def test_leftover_temp_files_are_removed_on_resume_and_repair(folder_data, tmp_path, capsys):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=2", "shard=0/2"))
    rows = read_jsonl(out / MANIFEST)

    def temp_of(row):  # what atomic_open leaves when killed while writing the row's image
        p = out / row["path"]
        return p.parent / f".{p.name}.k1ll3d_x.tmp"

    mine = [r for r in rows if shards.shard_of(r["id"], 2) == 1]
    other = [r for r in rows if shards.shard_of(r["id"], 2) == 0]
    leftovers = [temp_of(mine[0]), temp_of(other[0]), out / ".manifest.jsonl.k1ll3d_x.tmp"]
    for t in leftovers:
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_bytes(b"half")
    run_generate(cfg_for(folder_data, out, "per_class=2", "shard=1/2"))
    assert [t.exists() for t in leftovers] == [False, True, False]  # only shard 1's own, and the plan's
    capsys.readouterr()
    assert run_cli("generate", "--validate", str(out), "--repair") == 0
    assert "removed  1 leftover temp files" in capsys.readouterr().out and not leftovers[1].exists()


def _hold(lock_dir: Path, what: str, release: Path) -> subprocess.Popen:
    """Another process holding a lock (as a generate run does) until `release` exists."""
    code = ("import sys, time, pathlib; from synthtl.files import exclusive\n"
            "with exclusive(pathlib.Path(sys.argv[1]), 'x'):\n"
            "    print('held', flush=True)\n"
            "    while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_dir), str(release)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_two_writers_never_share_a_shard_or_the_plan(folder_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    argv = ["generate", *TINY, "data.name=folder", f"data.root={folder_data}", "per_class=1", f"out_dir={out}"]
    holder = _hold(out / shards.LOCKS / genset.shard_name(0, 1), "shard", tmp_path / "go")
    try:
        assert run_cli(*argv) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "shard 0/1" in err and len(err.strip().splitlines()) == 1
        assert not (out / MANIFEST).exists()
        assert run_cli(*argv, "shard=1/2") == 0  # another shard runs beside it
    finally:
        (tmp_path / "go").touch()
        holder.wait(10)
    monkeypatch.setattr(shards, "SET_LOCK_WAIT", 0.2)
    holder = _hold(out, "set", tmp_path / "go2")  # e.g. another shard finalizing the set
    try:
        assert run_cli(*argv, "shard=0/2") == 2
        assert f"generated set {out} is being written by pid {holder.pid}" in capsys.readouterr().err
    finally:
        (tmp_path / "go2").touch()
        holder.wait(10)
    assert run_cli(*argv, "shard=0/2") == 0


def test_stats_of_every_shard_are_summed(folder_data, tmp_path, monkeypatch, capsys, one_pipeline):
    out = tmp_path / "gen"
    a = run_generate(cfg_for(folder_data, out, "shard=0/2"))
    b = run_generate(cfg_for(folder_data, out, "shard=1/2"))
    assert b["set_complete"] and a["generated"] + b["generated"] == 12
    assert b["set"]["shards"] == 2 and b["set"]["images"] == 12
    assert b["set"]["seconds"] == pytest.approx(a["seconds"] + b["seconds"], rel=1e-6)
    assert run_cli("generate", "--status", str(out)) == 0
    assert "work of 2 shard(s): 12 images" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # a torchrun rank other than 0 keeps its own stats too
    monkeypatch.setenv("WORLD_SIZE", "3")
    s = run_generate(cfg_for(folder_data, tmp_path / "tr", "per_class=1"))
    assert genset.set_stats(tmp_path / "tr")["images"] == s["generated"] > 0
    assert genset.cost_file(tmp_path / "tr", 1, 3).is_file()


def test_torchrun_rank_uses_its_own_gpu(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d).index))
    monkeypatch.setenv("LOCAL_RANK", "1")
    rt = pipeline.generator_runtime(GeneratorConfig(device="cuda", dtype="fp32"))
    assert rt.device == torch.device("cuda", 1) and chosen and set(chosen) == {1}


def test_long_class_names_keep_the_style_token(capfd, tmp_path, folder_data):
    from safetensors.torch import save_file

    emb = tmp_path / "style"
    emb.mkdir()
    save_file({"<my-style>": torch.randn(1, 16)}, str(emb / "learned_embeds.safetensors"))
    long = "very " * 60 + "long bird"
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\n" + "".join(f"train/red_fox/img_00{i}.jpg,{lab}\n" for i, lab in
                                            enumerate([long, "fox"])))
    out = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [
        *TINY, "data.name=csv", f"data.root={folder_data}", f"data.train_csv={csv}", f"data.test_csv={csv}",
        "per_class=1", f"out_dir={out}", "prompts.templates=style", f"prompts.style_embedding={emb}"]))
    assert "sequence length is longer" not in capfd.readouterr().err  # the cut is recorded, not warned about
    rows = {r["class_name"]: r for r in read_jsonl(out / MANIFEST)}
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(Path(pipeline.__file__).parents[1] / "assets" / "tiny_tokenizer"))
    tok.add_tokens(["<my-style>"])
    r = rows[long]
    assert r["truncated"] and r["requested_prompt"] == f"a {long} photo in the style of <my-style>."
    assert r["prompt"].startswith("a very very") and r["prompt"].endswith(" photo in the style of <my-style>.")
    assert len(tok(r["prompt"]).input_ids) <= tok.model_max_length < len(tok(r["requested_prompt"]).input_ids)
    assert not rows["fox"]["truncated"] and "requested_prompt" not in rows["fox"]


def test_export_types_label_as_class_names_and_refuses_an_unfinished_set(folder_data, tmp_path, capsys,
                                                                         one_pipeline):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=2"))
    lost = out / read_jsonl(out / MANIFEST)[0]["path"]
    lost.unlink()  # e.g. deleted by --validate --repair: the set is unfinished until it is redrawn
    assert run_cli("export", str(out), "--out", str(tmp_path / "hf")) == 2
    assert "unfinished: 5 of 6" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert run_cli("export", str(out), "--out", str(tmp_path / "hf"), "--allow-partial") == 0
    assert "5 of 6 planned images" in (tmp_path / "hf" / "README.md").read_text()
    run_generate(cfg_for(folder_data, out, "per_class=2"))
    assert run_cli("export", str(out), "--out", str(tmp_path / "hf2")) == 0
    ds = datasets.load_dataset(str(tmp_path / "hf2"), split="train")
    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == ["blue jay", "green frog", "red fox"]
    assert all(label.int2str(y) == c for y, c in zip(ds["label"], ds["class_name"], strict=True)) and len(ds) == 6


def test_bad_paths_get_one_clear_line(folder_data, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert run_cli("generate", "--validate", str(tmp_path / "plain")) == 2
    err = capsys.readouterr().err
    assert "not a generated set" in err and len(err.strip().splitlines()) == 1
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert run_cli("generate", *TINY, "data.name=folder", f"data.root={folder_data}", f"out_dir={a_file}") == 2
    assert "is an existing file" in capsys.readouterr().err
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=1"))
    assert run_cli("export", str(out), "--out", str(a_file)) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and len(err.strip().splitlines()) == 1


def test_single_file_checkpoint_offline_names_the_config_key(folder_data, tmp_path, capsys):
    from safetensors.torch import save_file

    ckpt = tmp_path / "finetuned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(ckpt))
    assert run_cli("generate", *TINY[1:], f"generator.model={ckpt}", "generator.device=cpu", "data.name=folder",
                   f"data.root={folder_data}", f"out_dir={tmp_path / 'g'}") == 2
    err = capsys.readouterr().err
    assert "generator.single_file_config" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, content", [("broken.safetensors", b"\x10\x00\x00\x00not a header"),
                                           ("broken.ckpt", b"PK\x03\x04 truncated zip"), ("empty.ckpt", b"")])
def test_a_broken_single_file_checkpoint_is_not_a_valid_checkpoint(folder_data, tmp_path, capsys, name, content):
    ckpt = tmp_path / name
    ckpt.write_bytes(content)
    assert run_cli("generate", *TINY[1:], f"generator.model={ckpt}", "generator.device=cpu", "data.name=folder",
                   f"data.root={folder_data}", f"out_dir={tmp_path / 'g'}") == 2
    err = capsys.readouterr().err.strip()
    assert "is not a valid checkpoint file" in err and "single_file_config" not in err and "hub" not in err
    assert len(err.splitlines()) == 1


def test_classes_differing_only_in_case_are_two_classes(tmp_path, folder_data):
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\ntrain/red_fox/img_000.jpg,Cat\ntrain/blue_jay/img_000.jpg,cat\n")
    out = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [
        *TINY, "data.name=csv", f"data.root={folder_data}", f"data.train_csv={csv}", f"data.test_csv={csv}",
        "per_class=2", f"out_dir={out}"]))
    rows = read_jsonl(out / MANIFEST)
    folders = {r["class_name"]: r["folder"] for r in rows}
    assert folders["Cat"].lower() != folders["cat"].lower()  # distinct on a case-insensitive file system too
    real = load_split("csv", "train", folder_data, train_csv=str(csv), test_csv=str(csv))
    syn = load_synthetic(out, real)
    assert len(syn) == 4
    by_path = {r["train_path"]: r["class_name"] for r in rows}
    assert all(real.names[y] == by_path[p] for p, y in zip(syn.paths, syn.labels, strict=True))


def test_a_class_folder_whose_name_is_not_utf8_is_generated_and_matched(tmp_path, folder_data):
    import os

    bad = os.fsdecode(b"jay\xff\xfe")  # a legal folder name on Linux that is not UTF-8
    for split in ("train", "test"):
        try:
            (folder_data / split / "blue_jay").rename(folder_data / split / bad)
        except OSError:
            pytest.skip("this file system refuses non-UTF-8 names")
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=1"))
    rows = read_jsonl(out / MANIFEST)
    assert len(rows) == 3 and all("\ufffd" not in r["prompt"] or "jay" in r["prompt"] for r in rows)
    real = load_split("folder", "train", folder_data)
    syn = load_synthetic(out, real)
    assert sorted(real.names[y] for y in syn.labels) == sorted(real.names)  # every class matched, the odd one too


def _save_tiny(folder: Path, seed: int) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**pipeline.tiny_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def test_local_generator_is_identified_by_its_weights(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("SYNTHTL_CACHE", str(tmp_path / "cache"))
    a = _save_tiny(tmp_path / "a", 0)
    _save_tiny(tmp_path / "b", 1)  # another "fine-tune": same configs, other weights
    shutil.copytree(a, tmp_path / "moved")
    ids = {k: generator_weights(GeneratorConfig(model=str(tmp_path / k))) for k in ("a", "b", "moved")}
    assert ids["a"]["model"] == "local" and ids["a"]["revision"].startswith("local-")
    assert ids["a"] != ids["b"] and ids["a"] == ids["moved"]
    from synthtl import files

    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, algo="sha256": hashed.append(p) or real(p, algo=algo))
    assert generator_weights(GeneratorConfig(model=str(a))) == ids["a"]
    assert hashed == []  # memoised by (path, size, mtime): a 4 GB folder is read once
    time.sleep(0.01)
    weights = next(a.rglob("diffusion_pytorch_model*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # touched: same bytes, new mtime -> re-hashed, same identity
    assert generator_weights(GeneratorConfig(model=str(a))) == ids["a"] and hashed == [weights]


def test_style_embedding_does_not_change_the_recorded_revision(folder_data, tmp_path):
    from safetensors.torch import save_file

    emb = tmp_path / "style"
    emb.mkdir()
    save_file({"<my-style>": torch.randn(1, 16)}, str(emb / "learned_embeds.safetensors"))
    run_generate(cfg_for(folder_data, tmp_path / "plain", "per_class=1"))
    run_generate(cfg_for(folder_data, tmp_path / "styled", "per_class=1", "prompts.templates=style",
                         f"prompts.style_embedding={emb}"))
    plain, styled = (read_json(tmp_path / k / "plan.json")["settings"] for k in ("plain", "styled"))
    assert plain["revision"] == styled["revision"] == generator_weights(GeneratorConfig(model="tiny"))[
        "revision"]
    assert read_jsonl(tmp_path / "styled" / MANIFEST)[0]["revision"] == plain["revision"]


def test_unfinished_set_is_refused_unless_allowed(folder_data, tmp_path):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=2"))
    real = load_split("folder", "train", folder_data)
    (out / read_jsonl(out / MANIFEST)[-1]["path"]).unlink()  # the last image of the last class is not there
    with pytest.raises(DataError, match=r"unfinished: 5 of 6 planned images.*synthetic.allow_partial=true"):
        load_synthetic(out, real)
    syn, record = load_synthetic_set(out, real, allow_partial=True)
    assert record == {"path": str(out), "generated": True, "done": 5, "total": 6, "partial": True,
                      "allow_partial": True} and len(syn) == 5
    _, record = load_synthetic_set(out, real, per_class=1)  # the first image of every class is done: not partial
    assert not record["partial"] and record["done"] == record["total"] == 3


def test_a_killed_shard_keeps_the_cost_of_the_work_it_did(tmp_path, folder_data, monkeypatch, one_pipeline):
    out = tmp_path / "gen"
    cfg = cfg_for(folder_data, out, "per_class=4", "generator.batch_size=2", "writers=1")
    generate_until_write(cfg, 5)  # killed as it starts writing the third batch (two images per batch)
    logged = sum(len(read_jsonl(f)) for f in (out / "progress").glob("shard-*.jsonl"))
    stats = genset.set_stats(out)
    assert stats["images"] == logged == 4 and stats["seconds"] > 0  # the two finished batches are counted
    run_generate(cfg)
    assert genset.set_stats(out)["images"] == 12  # the whole set, counted once
