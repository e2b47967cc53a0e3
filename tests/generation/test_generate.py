"""Generation with a tiny random-weight Stable Diffusion built from configs (32x32 images, offline)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthtl.config import GenerateConfig, load_config
from synthtl.data import genset
from synthtl.data.datasets import load_split
from synthtl.data.genset import MANIFEST
from synthtl.errors import ConfigError, SynthTLError
from synthtl.files import DiskFullError, read_jsonl
from synthtl.generation import run as gen_run
from synthtl.generation.run import run_generate
from tests.conftest import run_cli
from tests.data.sets import load_synthetic
from tests.generation.conftest import generate_until_write

TINY = ["generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=3",
        "generator.batch_size=4", "progress=false", "writers=2"]


def cfg_for(folder_data: Path, out: Path, *extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, [*TINY, "data.name=folder", f"data.root={folder_data}", "per_class=4",
                                              f"out_dir={out}", *extra])


def logged_ids(out: Path) -> list[str]:
    return [r["id"] for log in sorted((out / "progress").glob("shard-*.jsonl")) for r in read_jsonl(log)]


def test_manifest_is_written_before_any_image(folder_data, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    seen = []
    real = gen_run.denoise

    def check(pipe, rows, seeds, cfg, sources=None):
        seen.append(((out / MANIFEST).is_file(), len(list((out / "images").rglob("*.jpg")))
                     if (out / "images").exists() else 0))
        return real(pipe, rows, seeds, cfg, sources)

    monkeypatch.setattr(gen_run, "denoise", check)
    summary = run_generate(cfg_for(folder_data, out))
    assert seen[0] == (True, 0) and summary["generated"] == 12 and summary["set_complete"]
    rows = read_jsonl(out / MANIFEST)
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows)
    r = rows[0]
    assert r["prompt"] == "a good photo of the blue jay." and r["model"] == "tiny" and r["revision"].startswith("tiny-")
    assert {"seed", "scheduler", "steps", "guidance", "height", "width", "style_hash", "path", "train_path"} <= set(r)
    with Image.open(out / r["path"]) as im:
        assert im.size == (32, 32) and im.format == "JPEG"
    assert (out / r["train_path"]).is_file()
    assert len({x["seed"] for x in rows}) == 12  # every (class, index) has its own seed


def test_same_row_gives_identical_bytes(folder_data, tmp_path):
    run_generate(cfg_for(folder_data, tmp_path / "a"))
    run_generate(cfg_for(folder_data, tmp_path / "b"))
    rows = read_jsonl(tmp_path / "a" / MANIFEST)
    for r in rows:
        assert (tmp_path / "a" / r["path"]).read_bytes() == (tmp_path / "b" / r["path"]).read_bytes()
    # One row regenerated alone (batch of 1) matches its batched version up to floating-point noise (batched
    # kernels are not bitwise batch-invariant), compared losslessly.
    run_generate(cfg_for(folder_data, tmp_path / "p4", "image_format=png"))
    run_generate(cfg_for(folder_data, tmp_path / "p1", "image_format=png", "generator.batch_size=1"))
    for r in read_jsonl(tmp_path / "p4" / MANIFEST):
        a = np.asarray(Image.open(tmp_path / "p4" / r["path"]), dtype=int)
        c = np.asarray(Image.open(tmp_path / "p1" / r["path"]), dtype=int)
        assert np.abs(a - c).max() <= 2


def test_shards_are_disjoint_and_complete(folder_data, tmp_path):
    out = tmp_path / "gen"
    for i in range(3):
        s = run_generate(cfg_for(folder_data, out, f"shard={i}/3"))
        assert s["set_complete"] == (i == 2)
    ids = logged_ids(out)
    planned = [r["id"] for r in read_jsonl(out / MANIFEST)]
    assert sorted(ids) == sorted(planned) and len(ids) == len(set(ids))
    per_log = [{r["id"] for r in read_jsonl(p)} for p in (out / "progress").glob("shard-*.jsonl")]
    assert len(per_log) == 3 and sum(len(x) for x in per_log) == 12


def test_killed_run_restarts_to_exactly_the_planned_set(folder_data, tmp_path):
    out = tmp_path / "gen"
    generate_until_write(cfg_for(folder_data, out, "writers=1"), 6)
    partial = logged_ids(out)
    assert 0 < len(partial) < 12
    real_syn = load_synthetic(out, load_split("folder", "train", folder_data), allow_partial=True)
    assert len(real_syn) == len(partial)  # the reader returns only completed rows
    s = run_generate(cfg_for(folder_data, out))
    assert s["already_done"] == len(partial) and s["generated"] == 12 - len(partial)
    ids = logged_ids(out)
    assert sorted(ids) == sorted(r["id"] for r in read_jsonl(out / MANIFEST)) and len(ids) == len(set(ids))
    assert len(list((out / "images").rglob("*.jpg"))) == 12


def _break_decode(monkeypatch, value: float):
    """The first VAE decode returns `value` for the first image (NaN, or -1 = black)."""
    real = gen_run.load_pipeline
    state = {"first": True}

    def load(gen, rt=None, **kwargs):
        pipe = real(gen, rt, **kwargs)
        decode = pipe.vae.decode

        def broken(z, return_dict=False):
            out = decode(z, return_dict=return_dict)
            if state["first"]:
                state["first"] = False
                out[0][0] = value
            return out

        pipe.vae.decode = broken
        return pipe

    monkeypatch.setattr(gen_run, "load_pipeline", load)


@pytest.mark.parametrize("value", [float("nan"), -1.0])
def test_black_or_nan_output_is_redrawn_with_a_new_recorded_seed(folder_data, tmp_path, monkeypatch, value):
    _break_decode(monkeypatch, value)
    out = tmp_path / "gen"
    s = run_generate(cfg_for(folder_data, out))
    assert s["redraws"] == 1 and s["generated"] == 12
    rows = {r["id"]: r for r in read_jsonl(out / MANIFEST)}
    redrawn = [r for r in rows.values() if r["redraws"]]
    assert len(redrawn) == 1
    r = redrawn[0]
    assert r["seed"] == genset.image_seed(0, r["class_index"], r["index"], redraw=1)
    assert np.asarray(Image.open(out / r["path"])).max() > 2


def test_unsafe_class_names_get_safe_folders(tmp_path, folder_data):
    labels = ["F/A-18", "../escape", "Café crème " + "x" * 100]
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\n" + "".join(f"train/red_fox/img_00{i}.jpg,{lab}\n" for i, lab in enumerate(labels)))
    out = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [*TINY, "data.name=csv", f"data.root={folder_data}",
                                                    f"data.train_csv={csv}", f"data.test_csv={csv}", "per_class=1",
                                                    f"out_dir={out}"]))
    rows = read_jsonl(out / MANIFEST)
    assert {r["class_name"] for r in rows} == set(labels)
    assert any("F/A-18" in r["prompt"] for r in rows)
    for r in rows:
        p = (out / r["path"]).resolve()
        assert p.is_file() and out.resolve() in p.parents and len(r["folder"]) <= 64 and r["folder"].isascii()
        assert "/" not in r["folder"]


def test_conflicting_replan_is_refused_and_more_images_extend_the_plan(folder_data, tmp_path):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "per_class=2"))
    first = {r["id"]: r for r in read_jsonl(out / MANIFEST)}
    with pytest.raises(ConfigError, match=r"another config: generator.steps \(3 there, 5 now\)"):
        run_generate(cfg_for(folder_data, out, "per_class=2", "generator.steps=5"))
    s = run_generate(cfg_for(folder_data, out, "per_class=4"))
    assert s["already_done"] == 6 and s["generated"] == 6
    rows = read_jsonl(out / MANIFEST)
    assert len(rows) == 12 and all(first[i]["seed"] == r["seed"] for r in rows for i in [r["id"]] if i in first)
    syn = load_synthetic(out, load_split("folder", "train", folder_data), per_class=2)
    assert sorted(syn.paths) == sorted(r["train_path"] for r in first.values())  # first k per class


def test_cuda_oom_halves_the_batch(folder_data, tmp_path, monkeypatch, capsys):
    real = gen_run.denoise

    def picky(pipe, rows, seeds, cfg, sources=None):
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pipe, rows, seeds, cfg, sources)

    monkeypatch.setattr(gen_run, "denoise", picky)
    s = run_generate(cfg_for(folder_data, tmp_path / "gen", "generator.batch_size=8"))
    assert s["generated"] == 12
    out = capsys.readouterr().out
    assert "batch_size=4" in out and "batch_size=2" in out


def test_full_disk_stops_cleanly_then_resumes(folder_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen"
    real = gen_run.write_bytes
    count = []

    def filling(path, data):
        if Path(path).suffix == ".jpg" and "images" in Path(path).parts:
            count.append(1)
            if len(count) > 5:
                raise DiskFullError(f"no space left on the device while writing {path}")
        return real(path, data)

    monkeypatch.setattr(gen_run, "write_bytes", filling)
    assert run_cli("generate", *TINY, "data.name=folder", f"data.root={folder_data}", "per_class=4",
                   f"out_dir={out}") == 2
    assert "no space left" in capsys.readouterr().err
    ids = logged_ids(out)
    assert len(ids) == 5 and all((out / f"images/{i}").exists() is False for i in ids)  # ids are not paths
    rows = {r["id"]: r for r in read_jsonl(out / MANIFEST)}
    assert all((out / rows[i]["path"]).is_file() for i in ids)
    monkeypatch.setattr(gen_run, "write_bytes", real)
    assert run_cli("generate", *TINY, "data.name=folder", f"data.root={folder_data}", "per_class=4",
                   f"out_dir={out}") == 0
    assert sorted(logged_ids(out)) == sorted(rows)


def test_status_validate_and_repair(folder_data, tmp_path, capsys):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    assert run_cli("generate", "--status", str(out)) == 0
    assert "12/12" in capsys.readouterr().out
    victim = next((out / "images").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:50])
    assert run_cli("generate", "--validate", str(out)) == 1
    assert "corrupt" in capsys.readouterr().out
    assert run_cli("generate", "--validate", str(out), "--repair") == 1
    assert not victim.exists()
    s = run_generate(cfg_for(folder_data, out))
    assert s["generated"] == 1 and victim.is_file()
    assert run_cli("generate", "--validate", str(out)) == 0


def test_repair_drops_a_damaged_progress_line_and_the_next_run_redraws_it(folder_data, tmp_path, capsys):
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    log = next((out / "progress").glob("shard-*.jsonl"))
    lines = log.read_bytes().splitlines(keepends=True)
    lost = json.loads(lines[3])["id"]
    log.write_bytes(b"".join([*lines[:3], b"\x00\x00 a failing disk's bytes\n", *lines[4:]]))
    capsys.readouterr()
    assert run_cli("generate", "--validate", str(out)) == 2  # without --repair: one line naming the fix
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 4" in err and "--repair" in err
    assert run_cli("generate", "--validate", str(out), "--repair") == 0
    assert f"damaged  progress/{log.name}  (dropped line(s) 4" in capsys.readouterr().out
    assert not genset.is_complete(out)  # one image is no longer logged as done
    s = run_generate(cfg_for(folder_data, out))
    assert s["generated"] == 1 and lost in {r["id"] for r in read_jsonl(log)}
    assert genset.is_complete(out) and run_cli("generate", "--validate", str(out)) == 0


def test_style_embedding_in_prompts_and_manifest(folder_data, tmp_path):
    from safetensors.torch import save_file

    emb = tmp_path / "style"
    emb.mkdir()
    save_file({"<my-style>": torch.randn(2, 16)}, str(emb / "learned_embeds.safetensors"))
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out, "prompts.templates=style", f"prompts.style_embedding={emb}"))
    rows = read_jsonl(out / MANIFEST)
    assert rows[0]["prompt"] == "a blue jay photo in the style of <my-style>." and len(rows[0]["style_hash"]) == 16
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"<wide>": torch.randn(1, 768)}, str(bad / "learned_embeds.safetensors"))
    with pytest.raises(ConfigError, match="size 768.*uses 16"):
        run_generate(cfg_for(folder_data, tmp_path / "g2", "prompts.templates=style", f"prompts.style_embedding={bad}"))
    with pytest.raises(ConfigError, match="style_embedding"):
        run_generate(cfg_for(folder_data, tmp_path / "g3", "prompts.templates=style"))


def test_offline_hub_model_gets_a_clear_error(folder_data, tmp_path, capsys):
    assert run_cli("generate", "data.name=folder", f"data.root={folder_data}", f"out_dir={tmp_path / 'g'}",
                   "generator.device=cpu") == 2
    err = capsys.readouterr().err
    assert "stable-diffusion-v1-5" in err and "generator.model" in err


def test_every_scheduler_runs(folder_data, tmp_path):
    for name in ("ddim", "euler_a", "euler", "pndm"):
        s = run_generate(cfg_for(folder_data, tmp_path / name, f"generator.scheduler={name}", "per_class=1"))
        assert s["generated"] == 3


def test_export_reads_back_with_datasets(folder_data, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "gen"
    run_generate(cfg_for(folder_data, out))
    assert run_cli("export", str(out), "--out", str(tmp_path / "hf")) == 0
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"), split="train")
    assert len(ds) == 12 and {"image", "label", "class_name", "prompt", "seed"} <= set(ds.column_names)
    assert sorted(set(zip(ds["label"], ds["class_name"], strict=True))) == [(0, "blue jay"), (1, "green frog"),
                                                                             (2, "red fox")]
    row = ds[0]
    assert row["prompt"].startswith("a good photo of the") and row["image"].size == (32, 32)
    meta = [json.loads(x) for x in (tmp_path / "hf" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 12 and "revision" in meta[0]


def test_grid_images_writes_one_sheet_per_class(folder_data, tmp_path):
    run_generate(cfg_for(folder_data, tmp_path / "a"))
    run_generate(cfg_for(folder_data, tmp_path / "b", "prompts.templates=imagenet80"))
    assert run_cli("grid-images", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "single,imagenet80", "--out",
                   str(tmp_path / "grids"), "--real", "data.name=folder", "--real", f"data.root={folder_data}") == 0
    sheets = sorted((tmp_path / "grids").glob("*.png"))
    assert len(sheets) == 3
    with Image.open(sheets[0]) as im:
        assert im.size[1] == 3 * 128 + 24 and np.asarray(im).std() > 0
        ink = np.flatnonzero((np.asarray(im.convert("L"))[24:24 + 128, :150] < 128).any(axis=1))
        assert ink.max() - ink.min() >= 12  # the row label "real" in a readable size, not an 11-px bitmap font


def test_generator_error_is_a_synthtl_error():
    assert issubclass(gen_run.SynthTLError, Exception) and SynthTLError is gen_run.SynthTLError


def test_shard_from_torchrun_environment(folder_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert gen_run.parse_shard("") == (1, 2) and gen_run.parse_shard("0/3") == (0, 3)
    s = run_generate(cfg_for(folder_data, tmp_path / "gen"))
    assert s["shard"] == "1/2" and 0 < s["planned"] < 12
    assert (tmp_path / "gen" / "progress" / "shard-0001-of-0002.jsonl").is_file()
