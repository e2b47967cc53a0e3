"""Dataset Style Inversion and per-class inversion on the tiny random-weight Stable Diffusion (CPU, offline)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from synthtl import faults, identity
from synthtl.config import GenerateConfig, StyleConfig, load_config
from synthtl.errors import ConfigError, DataError
from synthtl.files import LockedError, read_jsonl
from synthtl.generation.pipeline import load_pipeline
from synthtl.generation.run import run_generate
from synthtl.generation.styles import EMBEDS, load_into_pipeline
from synthtl.style.data import training_images
from synthtl.style.inversion import InversionRecipe
from synthtl.style.recipe import MicroBatch
from synthtl.style.train import run_learn_style
from tests.conftest import run_cli

TINY = ["generator.model=tiny", "resolution=32", "batch_size=2", "validation_steps=2", "validation_images=2",
        "progress=false", "lr=0.05"]


def cfg_for(folder_data, out, *extra) -> StyleConfig:
    return load_config(StyleConfig, None, [*TINY, "data.name=folder", f"data.root={folder_data}", f"out_dir={out}",
                                           "steps=6", "validate_every=3", *extra])


SMALL = ["images_per_class=3", "validation_classes=1", "validation_images=1"]  # fewer latents and grid images


def effective_table(pipe, inv):
    """The embedding matrix the text encoder effectively uses: the table with the learned rows written in."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone().float()
    table[inv.ids] = torch.cat([p.detach().float() for p in inv.learned])
    return table


def ready(cfg, out) -> InversionRecipe:
    """A set-up inversion recipe: pipeline, tokens and hooks, latents, optimizer."""
    r = InversionRecipe(cfg, out)
    r.setup()
    return r


def test_one_step_changes_only_the_new_token_rows(folder_data, tmp_path):
    cfg = cfg_for(folder_data, tmp_path / "s", "mode=class", *SMALL)
    r = ready(cfg, tmp_path / "s")
    before = effective_table(r.pipe, r.inv)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 4, 4, generator=g)
    prompts = [f"a fox photo in the style of {t}." for t in r.inv.tokens[:2]]
    r.step(0, [MicroBatch(lat, torch.randn(lat.shape, generator=g), torch.tensor([10, 500]), prompts)])
    after = effective_table(r.pipe, r.inv)
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == r.inv.ids[:2].tolist() and r.inv.updates == [1, 1, 0]  # the third token was not in the batch
    assert all(p.grad is None for m in (r.pipe.text_encoder, r.pipe.unet) for p in m.parameters())  # nothing else


def test_dsi_end_to_end_files_and_validation_grids(folder_data, tmp_path):
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out))
    assert set(load_file(str(out / EMBEDS))) == {"<synthtl-style>"}
    assert info["mode"] == "dataset" and info["steps"] == 6 and info["train_images"] == 24
    assert len(info["loss_curve"]) == 6 and info["peak_memory_mb"] > 0 and info["wall_s"] > 0
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-000003.png", "step-000006.png"]
    split = json.loads((out / "splits" / "train.json").read_text())
    assert split["count"] == 24 and all(i.split("/")[0] in ("red_fox", "blue_jay", "green_frog") for i in split["ids"])
    assert not (out / "checkpoint.pt").exists()
    assert run_learn_style(cfg_for(folder_data, out)) == info  # finished: a no-op


def learn_until_checkpoint(cfg, n: int = 1) -> list:
    """Runs learn-style and "kills" it right after its n-th checkpoint; returns their steps."""
    calls = []

    def die_after_checkpoint(step, unit):
        calls.append(step)
        if len(calls) == n:
            raise KeyboardInterrupt

    with faults.inject("style.checkpoint", die_after_checkpoint), pytest.raises(KeyboardInterrupt):
        run_learn_style(cfg)
    return calls


def test_resume_equals_uninterrupted(folder_data, tmp_path):
    whole = run_learn_style(cfg_for(folder_data, tmp_path / "whole", "checkpoint_every=2", "validate_every=0"))
    killed = tmp_path / "killed"
    calls = learn_until_checkpoint(cfg_for(folder_data, killed, "checkpoint_every=2", "validate_every=0"),
                                   n=2)
    assert calls == [2, 4] and (killed / "checkpoint.pt").is_file()
    resumed = run_learn_style(cfg_for(folder_data, killed, "checkpoint_every=2", "validate_every=0"))
    a, b = load_file(str(tmp_path / "whole" / EMBEDS)), load_file(str(killed / EMBEDS))
    assert torch.equal(a["<synthtl-style>"], b["<synthtl-style>"])
    assert [c["loss"] for c in resumed["loss_curve"]] == [c["loss"] for c in whole["loss_curve"]]


def test_loss_falls_when_overfitting_a_few_images(folder_data, tmp_path):
    """The learned token lowers the denoising loss on its training images (fixed noise and timesteps)."""
    cfg = cfg_for(folder_data, tmp_path / "s", "steps=80", "validate_every=0", "lr=0.2", "data.shots=2",
                  "random_flip=false", "crop=center", "vectors=2")
    probe = ready(cfg, tmp_path / "probe")
    lat = torch.cat(probe.data.latents) * probe.pipe.vae.config.scaling_factor
    prompts = [f"a {probe.images.names[y]} photo in the style of {cfg.token} {cfg.token}_1." for y in probe.data.labels]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(lat.shape, generator=g)
    t = torch.randint(0, 1000, (len(lat),), generator=g)

    def probe_loss(learned_state=None):
        p = load_pipeline(cfg.generator, probe.rt)
        if learned_state is not None:
            from safetensors.torch import save_file

            save_file(learned_state, str(tmp_path / "probe.safetensors"))
            load_into_pipeline(p, tmp_path / "probe.safetensors")
        else:
            p.tokenizer.add_tokens([cfg.token, f"{cfg.token}_1"])
            p.text_encoder.resize_token_embeddings(len(p.tokenizer))
            table = p.text_encoder.get_input_embeddings().weight
            with torch.no_grad():
                table[-2:] = table[p.tokenizer.encode("photo", add_special_tokens=False)[0]].clone()
        probe.pipe = p  # the probe's loss on another pipeline: the learned token written in its table
        with torch.no_grad():
            return probe.loss(MicroBatch(lat, noise, t, prompts)).item()

    start = probe_loss()
    run_learn_style(cfg)
    learned = load_file(str(tmp_path / "s" / EMBEDS))
    end = probe_loss(learned)
    assert learned["<synthtl-style>"].shape == (2, 16)
    assert end < start


def test_saved_file_loads_with_diffusers_and_drives_generation(folder_data, tmp_path):
    out = tmp_path / "s"
    run_learn_style(cfg_for(folder_data, out))
    pipe = load_pipeline(load_config(GenerateConfig, None, ["generator.model=tiny"]).generator)
    pipe.load_textual_inversion(str(out / EMBEDS))  # diffusers' own loader reads it
    assert "<synthtl-style>" in pipe.tokenizer.get_vocab()
    gen = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [
        "generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=2", "per_class=2",
        "data.name=folder", f"data.root={folder_data}", f"out_dir={gen}", "prompts.templates=style",
        f"prompts.style_embedding={out}", "progress=false"]))
    rows = read_jsonl(gen / "manifest.jsonl")
    assert len(rows) == 6 and "in the style of <synthtl-style>" in rows[0]["prompt"]
    assert rows[0]["style_hash"] == json.loads((out / "style.json").read_text())["hash"]


def test_per_class_mode_learns_one_distinct_row_per_class(folder_data, tmp_path):
    out = tmp_path / "pc"
    info = run_learn_style(cfg_for(folder_data, out, "mode=class"))
    state = load_file(str(out / EMBEDS))
    assert sorted(state) == ["<synthtl-style-0>", "<synthtl-style-1>", "<synthtl-style-2>"]
    rows = torch.cat(list(state.values()))
    assert len({tuple(r.tolist()) for r in rows}) == 3  # each class's token moved differently
    assert info["class_tokens"] == {"blue jay": "<synthtl-style-0>", "green frog": "<synthtl-style-1>",
                                    "red fox": "<synthtl-style-2>"}
    assert len(list((out / "tokens").glob("*.safetensors"))) == 3
    gen = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [
        "generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=2", "per_class=1",
        "data.name=folder", f"data.root={folder_data}", f"out_dir={gen}", "prompts.templates=style",
        f"prompts.style_embedding={out}", "progress=false"]))
    prompts = {r["class_name"]: r["prompt"] for r in read_jsonl(gen / "manifest.jsonl")}
    assert prompts["red fox"] == "a red fox photo in the style of <synthtl-style-2>."


@pytest.mark.parametrize("override, error, message", [
    ("token=photo", ConfigError, "already in the tokenizer"),
    ("initializer=butterfly", ConfigError, "is 9 tokens"),
    ("mode=class", ConfigError, "leaves some of the 3 class tokens untrained"),  # with steps=2 below
])
def test_bad_tokens(folder_data, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        run_learn_style(cfg_for(folder_data, tmp_path / "s", override, "steps=2"))


def test_dataset_without_training_images(tmp_path, folder_data):
    csv = tmp_path / "empty.csv"
    csv.write_text("path,label\n")
    with pytest.raises(DataError, match="no rows"):
        run_learn_style(cfg_for(folder_data, tmp_path / "s", "data.name=csv", f"data.train_csv={csv}",
                                f"data.test_csv={csv}"))
    split = tmp_path / "split.json"
    from synthtl.data.datasets import load_split
    from synthtl.data.splits import write_split

    write_split(split, load_split("folder", "train", folder_data), [])
    with pytest.raises(DataError, match="no images in the chosen training split"):
        run_learn_style(cfg_for(folder_data, tmp_path / "s2", f"data.split_file={split}"))


def test_embedding_of_another_width_is_refused(folder_data, tmp_path):
    from safetensors.torch import save_file

    save_file({"<x>": torch.randn(1, 768)}, str(tmp_path / "wide.safetensors"))
    pipe = load_pipeline(load_config(GenerateConfig, None, ["generator.model=tiny"]).generator)
    with pytest.raises(ConfigError, match="size 768"):
        load_into_pipeline(pipe, tmp_path / "wide.safetensors")


def test_cli_learn_style(folder_data, tmp_path):
    assert run_cli("learn-style", *TINY, "data.name=folder", f"data.root={folder_data}",
                   f"out_dir={tmp_path / 's'}", "steps=2", "validate_every=0") == 0
    assert (tmp_path / "s" / EMBEDS).is_file()


def test_steps_per_class_scales_with_the_classes(folder_data, tmp_path):
    info = run_learn_style(cfg_for(folder_data, tmp_path / "s", "mode=class", "steps_per_class=2", "validate_every=0"))
    assert info["steps"] == 6 and len(info["loss_curve"]) == 6
    assert info["total_steps"] == 6 and info["steps_per_class"] == 2
    # classes take turns, each step on one class's batch: every token took exactly its steps_per_class updates
    assert info["token_updates"] == {"<synthtl-style-0>": 2, "<synthtl-style-1>": 2, "<synthtl-style-2>": 2}


def test_presets_resolve_steps():
    per_class = load_config(StyleConfig, "style/per_class")
    assert per_class.mode == "class" and per_class.steps_per_class == 5000  # the paper's 5k steps per class
    assert load_config(StyleConfig, "style/dsi").steps_per_class == 0  # DSI: `steps` in total


# ---------------------------------------------------------------- per-class tokens are N separate runs (docs/method.md)
def test_a_token_absent_from_the_batch_does_not_move(folder_data, tmp_path):
    """Class 0 is in the first batch only: its token after 6 steps is bit-identical to its token after 3 steps."""

    class FirstClassZeroThenMixed(InversionRecipe):  # batches of class 0, then of classes 1 and 2 mixed
        def make_units(self):
            units = super().make_units()
            units[0].pool = lambda step: {0: self.groups[0]} if step == 0 else {1: self.groups[1], 2: self.groups[2]}
            return units

    args = ("mode=class", "validate_every=0", "weight_decay=0.1", *SMALL)
    run_learn_style(cfg_for(folder_data, tmp_path / "three", *args, "steps=3"), FirstClassZeroThenMixed)
    info = run_learn_style(cfg_for(folder_data, tmp_path / "six", *args, "steps=6"), FirstClassZeroThenMixed)
    three, six = load_file(str(tmp_path / "three" / EMBEDS)), load_file(str(tmp_path / "six" / EMBEDS))
    assert torch.equal(three["<synthtl-style-0>"], six["<synthtl-style-0>"])  # 3 more steps without a gradient
    assert not torch.equal(three["<synthtl-style-1>"], six["<synthtl-style-1>"])  # the tokens in those batches moved
    assert info["token_updates"]["<synthtl-style-0>"] == 1
    others = [info["token_updates"][f"<synthtl-style-{c}>"] for c in (1, 2)]
    assert all(n <= 5 for n in others) and sum(others) >= 5  # a mixed batch steps every token in it, once


def test_one_class_alone_matches_its_token_inside_a_per_class_run(folder_data, tmp_path):
    """Token 0 of a per-class run ends where a single-token run fed only class 0's batches ends, though other
    classes' steps come in between (weight decay and warmup on, so shared optimizer state would show)."""
    common = ("warmup_steps=3", "weight_decay=0.1", "batch_size=3")
    pc = ready(cfg_for(folder_data, tmp_path / "pc", "mode=class", *common), tmp_path / "pc")
    alone = ready(cfg_for(folder_data, tmp_path / "alone", "token=<alone>", *common), tmp_path / "alone")
    for s, c in enumerate([0, 1, 0, 2, 2, 1, 0]):  # 8 images per class: 3-image batches vary
        batch = pc.draw_one({c: pc.groups[c]}, torch.Generator().manual_seed(s))
        pc.step(s, [batch])
        if c == 0:
            same = MicroBatch(batch.latents, batch.noise, batch.timesteps,
                              [p.replace("<synthtl-style-0>", "<alone>") for p in batch.prompts])
            alone.step(s, [same])
    assert pc.inv.updates == [3, 2, 2] and alone.inv.updates == [3]
    start = pc.pipe.text_encoder.get_input_embeddings().weight[pc.inv.ids[0]].float()
    assert not torch.equal(alone.inv.learned[0].detach()[0], start)  # it did learn
    torch.testing.assert_close(pc.inv.learned[0].detach(), alone.inv.learned[0].detach(), rtol=0, atol=1e-6)


def test_per_class_resume_equals_uninterrupted_and_clears_leftovers(folder_data, tmp_path):
    args = ("mode=class", "steps=5", "checkpoint_every=2", "validate_every=0", "warmup_steps=2", *SMALL)
    whole = run_learn_style(cfg_for(folder_data, tmp_path / "whole", *args))
    killed = tmp_path / "killed"
    learn_until_checkpoint(cfg_for(folder_data, killed, *args))
    leftovers = [killed / ".checkpoint.pt.x1y2z3.tmp", killed / "validation" / ".step-000002.png.abc.tmp"]
    for p in leftovers:  # what a kill during an atomic write leaves
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    resumed = run_learn_style(cfg_for(folder_data, killed, *args))
    assert not any(p.exists() for p in leftovers)
    a, b = load_file(str(tmp_path / "whole" / EMBEDS)), load_file(str(killed / EMBEDS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["token_updates"] == whole["token_updates"] and sum(whole["token_updates"].values()) == 5
    assert [c["loss"] for c in resumed["loss_curve"]] == [c["loss"] for c in whole["loss_curve"]]


def test_a_checkpoint_of_another_format_is_refused_in_one_line(folder_data, tmp_path):
    cfg = cfg_for(folder_data, tmp_path / "pc", "mode=class", "steps=3", "validate_every=0", *SMALL)
    identity.claim(tmp_path / "pc", "style", identity.identity(cfg))
    torch.save({"config_hash": "old", "step": 1, "learned": torch.zeros(3, 16), "optimizer": {}, "losses": [1.0],
                "seconds": 0.0}, tmp_path / "pc" / "checkpoint.pt")  # one parameter for every token: another format
    with pytest.raises(ConfigError, match="another config or version of synthtl; delete it") as e:
        run_learn_style(cfg)
    assert "\n" not in str(e.value)


def test_per_class_needs_images_of_every_class(folder_data, tmp_path):
    for f in (folder_data / "train" / "blue_jay").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError, match="class 'blue jay' has no readable training image"):
        run_learn_style(cfg_for(folder_data, tmp_path / "s", "mode=class", "data.on_bad_image=skip", *SMALL))


# ------------------------------------------------------------------------------------------------ validation grids
def test_validation_grid_feeds_each_sub_token_once(folder_data, tmp_path):
    """A 3-vector token reaches the text encoder as S* S*_1 S*_2, once each (diffusers' prompt expansion repeated
    an already expanded token)."""
    rows, new_ids = [], []

    class Watched(InversionRecipe):
        def validate(self, classes, path):
            new_ids.extend(self.inv.ids.tolist())
            emb = self.pipe.text_encoder.get_input_embeddings()
            h = emb.register_forward_pre_hook(lambda module, args: rows.extend(args[0].clone()))
            try:
                super().validate(classes, path)
            finally:
                h.remove()

    run_learn_style(cfg_for(folder_data, tmp_path / "s", "vectors=3", "steps=1", "validate_every=0",
                            "images_per_class=3", "validation_classes=2"), Watched)
    prompted = [r.tolist() for r in rows if any(i in new_ids for i in r.tolist())]
    assert len(new_ids) == 3 and len(prompted) == 2 * 2  # 2 classes x 2 images
    assert all(r.count(i) == 1 for r in prompted for i in new_ids)


# ------------------------------------------------------------------------------------------- processes and folders
def test_several_processes_are_refused_before_loading(folder_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(InversionRecipe, "components", lambda *a: pytest.fail("loaded models"))
    with pytest.raises(ConfigError, match="run learn-style as a single process"):
        run_learn_style(cfg_for(folder_data, tmp_path / "s"))
    assert not (tmp_path / "s").exists()


HOLD_LOCK = """
import sys
from synthtl.files import exclusive
with exclusive(sys.argv[1], "style folder"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""

TRY_LOCK = """
import sys
from synthtl.files import LockedError, exclusive
try:
    with exclusive(sys.argv[1], "style folder"):
        pass
except LockedError as e:
    print(e)
    sys.exit(3)
"""


def test_one_writer_per_style_folder(folder_data, tmp_path):
    """A second learn-style on a folder being written is refused, naming the holder; the lock lasts the whole run."""
    import subprocess
    import sys

    out = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"style folder {out} is being written by pid {holder.pid}"):
            run_learn_style(cfg_for(folder_data, out))
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not (out / "config.yaml").exists()  # refused before writing anything

    seen = []

    class TryingASecondWriter(InversionRecipe):
        def step(self, step, batches):
            if not seen:
                seen.append(subprocess.run([sys.executable, "-c", TRY_LOCK, str(out)], capture_output=True, text=True))
            return super().step(step, batches)

    run_learn_style(cfg_for(folder_data, out, "steps=1", "validate_every=0", *SMALL), TryingASecondWriter)
    assert seen[0].returncode == 3 and f"pid {os.getpid()}" in seen[0].stdout


def test_style_and_fine_tuning_use_the_same_shots(folder_data, tmp_path, tiny_overrides):
    """One few-shot selection: the same (data config, seed) gives style learning and fine-tuning the same k shots,
    even when one of them is unreadable (both skip it rather than draw another)."""
    bad = folder_data / "train" / "blue_jay" / "img_006.jpg"  # one of blue_jay's 3 shots for split_seed=7
    bad.write_bytes(bad.read_bytes()[:100])
    shots = ["data.shots=3", "data.split_seed=7", "data.on_bad_image=skip"]
    style_dir = tmp_path / "style"
    training_images(cfg_for(folder_data, style_dir, *shots), style_dir)
    style_ids = json.loads((style_dir / "splits" / "train.json").read_text())["ids"]
    assert run_cli("finetune", *tiny_overrides, *shots, "run_name=few") == 0
    run_ids = json.loads((tmp_path / "runs" / "few" / "splits" / "train.json").read_text())["ids"]
    assert len(style_ids) == 9 and "blue_jay/img_006.jpg" in style_ids
    assert sorted(run_ids) == sorted(set(style_ids) - {"blue_jay/img_006.jpg"})


def test_style_identity_ignores_paths_and_speed(folder_data, tmp_path):
    import shutil

    shutil.copytree(folder_data, tmp_path / "elsewhere")
    a = cfg_for(folder_data, tmp_path / "a")
    moved = cfg_for(tmp_path / "elsewhere", tmp_path / "b", "data.num_workers=0", f"data.cache_dir={tmp_path}")
    assert identity.identity(a) == identity.identity(moved)
    assert identity.identity(a) != identity.identity(cfg_for(folder_data, tmp_path / "a", "lr=0.1"))


def test_a_style_folder_of_another_config_names_the_keys_that_differ(folder_data, tmp_path):
    """A finished style: the message names each differing key with both values; paths and speed settings (moved
    dataset, other checkpoint_every) are the same style, so they finish as a no-op."""
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, *SMALL, "steps=2", "validate_every=0"))
    with pytest.raises(ConfigError) as e:
        run_learn_style(cfg_for(folder_data, out, *SMALL, "steps=3", "validate_every=0", "lr=0.1"))
    msg = str(e.value)
    assert "\n" not in msg and f"{out} holds a style made with another config" in msg
    assert "steps (2 there, 3 now)" in msg and "lr (0.05 there, 0.1 now)" in msg
    assert "data.root" not in msg and "Use another out_dir, or delete that folder" in msg

    moved = tmp_path / "moved"
    os.rename(folder_data, moved)
    same = run_learn_style(cfg_for(moved, out, *SMALL, "steps=2", "validate_every=5", "checkpoint_every=7"))
    assert same == info


def test_an_unfinished_style_of_another_config_names_the_keys_and_keeps_its_config(folder_data, tmp_path):
    """A killed run's checkpoint is checked before anything is written: config.yaml still describes it."""
    out = tmp_path / "s"
    learn_until_checkpoint(cfg_for(folder_data, out, *SMALL, "steps=4", "checkpoint_every=1", "validate_every=0"))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        run_learn_style(cfg_for(folder_data, out, *SMALL, "steps=4", "checkpoint_every=1", "validate_every=0",
                                "vectors=2"))
    msg = str(e.value)
    assert "\n" not in msg and "holds a style made with another config" in msg and "vectors (1 there, 2 now)" in msg
    assert (out / "config.yaml").read_text() == saved
