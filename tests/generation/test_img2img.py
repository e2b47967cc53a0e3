"""mode=img2img: generation from noised real train images with the tiny random Stable Diffusion (offline, CPU)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthtl.config import GenerateConfig, load_config
from synthtl.data.datasets import image_folder, load_split
from synthtl.data.genset import MANIFEST, PLAN, read_rows
from synthtl.data.splits import train_indices
from synthtl.data.synthetic import check_sources
from synthtl.errors import ConfigError, DataError
from synthtl.files import read_json, read_jsonl
from synthtl.generation import img2img
from synthtl.generation import run as gen_run
from synthtl.generation.run import run_generate
from tests.generation.conftest import generate_until_write
from tests.generation.test_generate import TINY

I2I = [*TINY, "mode=img2img", "img2img.strength=0.5", "generator.steps=2"]


def i2i_cfg(folder_data: Path, out: Path, *extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, [*I2I, "data.name=folder", f"data.root={folder_data}",
                                              f"data.cache_dir={out.parent / 'cache'}", "per_class=3",
                                              f"out_dir={out}", *extra])


def images_of(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.jpg"))}


def test_rows_carry_their_train_source_and_the_plan_its_hashes(folder_data, tmp_path, one_pipeline):
    out = tmp_path / "gen"
    s = run_generate(i2i_cfg(folder_data, out, "per_class=10", "classes=[red_fox]"))
    assert s["generated"] == 10 and s["set_complete"]
    train = load_split("folder", "train", folder_data)  # ids are the train listing's (as in split files)
    fox = sorted(p for p, y in zip(train.paths, train.labels, strict=True) if train.names[y] == "red fox")
    rows = read_jsonl(out / MANIFEST)
    # image i starts from source i mod 8 of the class's sorted train images: every source, some twice
    assert [r["source"] for r in rows] == [fox[i % len(fox)] for i in range(10)]
    assert all(r["strength"] == 0.5 for r in rows)
    plan = read_json(out / PLAN)
    (k,) = plan["classes"]
    assert k["sources"] == fox and len(k["source_sha256"]) == 8 and len(set(k["source_sha256"])) == 8
    assert plan["settings"]["mode"] == "img2img" and plan["settings"]["strength"] == 0.5
    assert len(read_rows(out)) == 10
    # other sources are another set: refused, naming the source that changed
    (folder_data / "train" / "red_fox" / "img_000.jpg").write_bytes(
        (folder_data / "train" / "red_fox" / "img_001.jpg").read_bytes())
    with pytest.raises(ConfigError, match=r"source 'red_fox/img_000.jpg' of class 'red fox' has changed bytes"):
        run_generate(i2i_cfg(folder_data, out, "per_class=10", "classes=[red_fox]"))


def test_few_shot_uses_only_the_k_shots_each_feeding_several_outputs(folder_data, tmp_path, one_pipeline):
    with pytest.raises(ConfigError, match="data.split_seed"):
        run_generate(i2i_cfg(folder_data, tmp_path / "g0", "data.shots=2"))
    out = tmp_path / "gen"
    run_generate(i2i_cfg(folder_data, out, "data.shots=2", "data.split_seed=7", "per_class=5"))
    train = load_split("folder", "train", folder_data)
    shots, _ = train_indices(train, load_config(GenerateConfig, None, ["data.shots=2"]).data, 7)  # fine-tuning's
    rows = read_jsonl(out / MANIFEST)
    assert {r["source"] for r in rows} == {train.paths[i] for i in shots} and len(shots) == 6
    for name in ("red fox", "blue jay", "green frog"):
        used = [r["source"] for r in rows if r["class_name"] == name]
        assert len(used) == 5 and len(set(used)) == 2 and min(used.count(u) for u in set(used)) >= 2
    # training: a run on these shots may use the set; a run on other shots (or fewer images) is refused
    check_sources(out, train.subset(shots))
    other, _ = train_indices(train, load_config(GenerateConfig, None, ["data.shots=2"]).data, 8)
    assert set(other) != set(shots)
    with pytest.raises(DataError, match=r"made by img2img from \d+ real images this run does not train on"):
        check_sources(out, train.subset(other))


def test_strength_sets_how_much_the_source_matters(folder_data, tmp_path):
    cfg = i2i_cfg(folder_data, tmp_path / "g", "generator.steps=10")
    pipe = img2img.pipeline(gen_run.load_pipeline(cfg.generator))
    row = {"prompt": "a good photo of the red fox.", "negative_prompt": ""}
    fox, jay = img2img.load_sources(folder_data / "train", [{"source": "red_fox/img_000.jpg"},
                                                            {"source": "blue_jay/img_000.jpg"}], 32, 32)

    def change(strength: float) -> float:
        """Mean pixel change when only the source changes (same prompt, same seed)."""
        c = load_config(GenerateConfig, None, [*I2I, "generator.steps=10", f"img2img.strength={strength}"])
        a, _ = gen_run.denoise(pipe, [row, row], [1, 2], c, [fox, fox])
        b, _ = gen_run.denoise(pipe, [row, row], [1, 2], c, [jay, jay])
        return float(np.abs(a.astype(float) - b).mean())

    low, high = change(0.1), change(1.0)
    assert low > 5 * high and high < 1.0  # s=1 all but ignores the source (the residual is diffusers' 0.07 scale)
    with pytest.raises(ConfigError, match=r"runs no denoising step"):
        load_config(GenerateConfig, None, [*I2I, "generator.steps=4", "img2img.strength=0.2"])
    with pytest.raises(ConfigError, match="mode=img2img"):
        load_config(GenerateConfig, None, ["img2img.strength=0.3"])


def test_deterministic_resumable_and_sharded_like_text_to_image(folder_data, tmp_path, one_pipeline):
    exact = ["generator.batch_size=1", "writers=1", "per_class=2"]
    run_generate(i2i_cfg(folder_data, tmp_path / "a", *exact))
    whole = images_of(tmp_path / "a")
    assert len(whole) == 6
    run_generate(i2i_cfg(folder_data, tmp_path / "b", *exact))
    assert images_of(tmp_path / "b") == whole  # same seeds and sources -> same bytes
    generate_until_write(i2i_cfg(folder_data, tmp_path / "c", *exact), 3)
    assert 0 < len(images_of(tmp_path / "c")) < 6
    s = run_generate(i2i_cfg(folder_data, tmp_path / "c", *exact))
    assert s["set_complete"] and images_of(tmp_path / "c") == whole  # kill + resume == uninterrupted
    for i in range(2):
        run_generate(i2i_cfg(folder_data, tmp_path / "d", *exact, f"shard={i}/2"))
    assert images_of(tmp_path / "d") == whole
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "d" / MANIFEST).read_bytes()


def test_a_test_image_is_never_a_source(folder_data, tmp_path):
    planted = folder_data / "train" / "blue_jay" / "img_planted.jpg"
    shutil.copy(folder_data / "test" / "blue_jay" / "img_002.jpg", planted)
    with pytest.raises(DataError, match=r"img2img source blue_jay/img_planted.jpg .* byte-identical to the test "
                                        r"image blue_jay/img_002.jpg"):
        run_generate(i2i_cfg(folder_data, tmp_path / "gen", "data.allow_overlap=true"))
    assert not (tmp_path / "gen" / PLAN).exists()  # refused before anything is planned
    # a re-encoded copy (JPEG q90, other bytes) is refused by its perceptual hash, with the report's threshold
    with Image.open(folder_data / "test" / "blue_jay" / "img_002.jpg") as im:
        im.convert("RGB").save(planted, quality=90)
    with pytest.raises(DataError, match=r"img2img source blue_jay/img_planted.jpg .* near-copy of the test image "
                                        r"blue_jay/img_002.jpg \(perceptual hashes \d+ of 64 bits apart"):
        run_generate(i2i_cfg(folder_data, tmp_path / "gen", "data.allow_overlap=true"))


def test_leakage_report_expects_own_sources_and_still_flags_test_copies(folder_data, tmp_path, one_pipeline):
    from synthtl.reporting.collect import collect_gensets, collect_runs
    from synthtl.reporting.quality import quality
    from tests.reporting.test_report import RANDOM_FEATURES, canned_run, labels

    root = tmp_path / "study"
    gen = root / "gen" / "i2i"
    run_generate(i2i_cfg(folder_data, gen))
    canned_run(root, "b0", labels("folder", "bridged++", 0), 75.0, syn_path=gen, data_root=folder_data)
    rows = read_jsonl(gen / MANIFEST)
    # planted: two outputs are exact copies of their own sources, one is a copy of a test image
    for r in rows[:2]:
        shutil.copy(folder_data / "train" / r["source"], gen / r["path"])
    leak = rows[4]
    shutil.copy(folder_data / "test" / "green_frog" / "img_003.jpg", gen / leak["path"])
    with pytest.warns(UserWarning, match="below the feature dimension"):
        qr = quality(collect_runs(root), collect_gensets(root), RANDOM_FEATURES, tmp_path / "cache")
    (s,) = qr.synthetic_leak.raw
    assert s["img2img"] and s["own_source_pairs"] >= 2 and s["sources_not_in_train"] == 0
    assert s["synthetic_flagged"] >= 1 and s["near_duplicates"] >= 1  # the test copy is still a leak
    assert any(e["left_caption"].endswith(leak["path"]) and "green_frog/img_003.jpg" in e["right_caption"]
               for e in qr.synthetic_examples)
    # the own-source copies are counted apart, not as near-duplicates of train images: the two counts add up to
    # every (output, train image) pair within the threshold
    from synthtl.metrics.leakage import Search, near_duplicates
    from synthtl.reporting.quality import Scanned

    syn = Scanned.of(image_folder(gen / "images"))  # the outputs
    train = Scanned.of(load_split("folder", "train", folder_data))
    total, _, _ = near_duplicates(syn.hashes, train.hashes, search=Search(max_bits=RANDOM_FEATURES.leak_hash_bits))
    assert total == s["own_source_pairs"] + s["other_train_pairs"]
    assert "own-source pairs (expected, excluded)" in qr.synthetic_leak.columns


def test_fine_tuning_refuses_an_img2img_set_made_from_other_shots(folder_data, tmp_path, one_pipeline, capsys,
                                                                  tiny_overrides):
    from tests.conftest import run_cli

    out = tmp_path / "gen"
    run_generate(i2i_cfg(folder_data, out, "data.shots=2", "data.split_seed=0", "per_class=2"))
    args = [*tiny_overrides, "strategy=bridged", f"synthetic.path={out}", "data.shots=2", "synth_stage.batch_size=2"]
    assert run_cli("finetune", *args, "data.split_seed=0", "run_name=same") == 0  # its own shots: fine
    assert run_cli("finetune", *args, "data.split_seed=5", "run_name=other") == 2  # other shots: refused
    assert "was made by img2img from" in capsys.readouterr().err


def test_refusal_counts_only_the_sources_the_run_reads(folder_data, tmp_path, one_pipeline, capsys, tiny_overrides):
    """A full-split set read 2 per class by a 2-shot run: only each class's first 2 sources reach the run (image i
    starts from source i mod its sources), so only those are counted in the refusal."""
    import re

    from tests.conftest import run_cli

    out = tmp_path / "gen"
    run_generate(i2i_cfg(folder_data, out, "per_class=2"))  # sources: all 8 train images of each class
    args = [*tiny_overrides, "strategy=bridged", f"synthetic.path={out}", "synthetic.per_class=2", "data.shots=2",
            "synth_stage.batch_size=2", "data.split_seed=5", "run_name=k2"]
    assert run_cli("finetune", *args) == 2
    n = int(re.search(r"from (\d+) real images this run does not train on", capsys.readouterr().err).group(1))
    assert 0 < n <= 3 * 2  # at most the 2 read sources of each of the 3 classes (not 3 x 8 minus the shots)
