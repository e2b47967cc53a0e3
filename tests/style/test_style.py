"""Dataset Style Inversion and per-class inversion on the tiny random-weight Stable Diffusion (CPU, offline)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from synthtl.config import GenerateConfig, StyleConfig, load_config
from synthtl.errors import ConfigError, DataError
from synthtl.files import read_jsonl
from synthtl.generation.pipeline import load_pipeline
from synthtl.generation.run import run_generate
from synthtl.runtime import resolve_runtime
from synthtl.style import train as style_train
from synthtl.style.embeddings import EMBEDS, load_into_pipeline
from synthtl.style.train import add_tokens, diffusion_loss, install_hook, run_learn_style
from tests.conftest import run_cli

TINY = ["generator.model=tiny", "resolution=32", "batch_size=2", "validation_steps=2", "validation_images=2",
        "progress=false", "lr=0.05"]


def cfg_for(folder_data, out, *extra) -> StyleConfig:
    return load_config(StyleConfig, None, [*TINY, "data.name=folder", f"data.root={folder_data}", f"out_dir={out}",
                                           "steps=6", "validate_every=3", *extra])


def effective_table(pipe, inv):
    """The embedding matrix the text encoder effectively uses: the table with the learned rows written in."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone().float()
    table[inv.ids] = inv.learned.detach().float()
    return table


def test_one_step_changes_only_the_new_token_rows(folder_data, tmp_path):
    cfg = cfg_for(folder_data, tmp_path / "s")
    rt = resolve_runtime("cpu")
    pipe = style_train.freeze(load_pipeline(cfg.generator, rt))
    inv = add_tokens(pipe.tokenizer, pipe.text_encoder, cfg, 3, rt.device)
    hook = install_hook(pipe.text_encoder, inv)
    before = effective_table(pipe, inv)
    opt = torch.optim.AdamW([inv.learned], lr=0.1)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 4, 4, generator=g)
    ids = pipe.tokenizer([f"a fox photo in the style of {cfg.token}."] * 2, padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    loss = diffusion_loss(pipe, sched, lat, ids, torch.randn(lat.shape, generator=g), torch.tensor([10, 500]), rt)
    loss.backward()
    opt.step()
    after = effective_table(pipe, inv)
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == inv.ids.tolist()
    assert inv.learned.grad is not None
    assert all(p.grad is None for m in (pipe.text_encoder, pipe.unet) for p in m.parameters())  # nothing else learns
    hook.remove()


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


def test_resume_equals_uninterrupted(folder_data, tmp_path, monkeypatch):
    whole = run_learn_style(cfg_for(folder_data, tmp_path / "whole", "checkpoint_every=2", "validate_every=0"))
    calls = []
    real = style_train.save_torch

    def die_after_second_checkpoint(path, obj):
        real(path, obj)
        calls.append(obj["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(style_train, "save_torch", die_after_second_checkpoint)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_learn_style(cfg_for(folder_data, killed, "checkpoint_every=2", "validate_every=0"))
    assert calls == [2, 4] and (killed / "checkpoint.pt").is_file()
    monkeypatch.setattr(style_train, "save_torch", real)
    resumed = run_learn_style(cfg_for(folder_data, killed, "checkpoint_every=2", "validate_every=0"))
    a, b = load_file(str(tmp_path / "whole" / EMBEDS)), load_file(str(killed / EMBEDS))
    assert torch.equal(a["<synthtl-style>"], b["<synthtl-style>"])
    assert [c["loss"] for c in resumed["loss_curve"]] == [c["loss"] for c in whole["loss_curve"]]


def test_loss_falls_when_overfitting_a_few_images(folder_data, tmp_path):
    """The learned token lowers the denoising loss on its training images (fixed noise and timesteps)."""
    cfg = cfg_for(folder_data, tmp_path / "s", "steps=80", "validate_every=0", "lr=0.2", "data.shots=2",
                  "random_flip=false", "crop=center", "vectors=2")
    rt = resolve_runtime("cpu")
    pipe = load_pipeline(cfg.generator, rt)
    images = style_train.training_images(cfg, tmp_path / "s")
    latents, labels, _ = style_train.cache_latents(pipe.vae, images, cfg, rt)
    lat = torch.cat(latents) * pipe.vae.config.scaling_factor
    prompts = [f"a {images.names[y]} photo in the style of {cfg.token} {cfg.token}_1." for y in labels]
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(lat.shape, generator=g)
    t = torch.randint(0, 1000, (len(lat),), generator=g)

    def probe_loss(learned_state=None):
        p = load_pipeline(cfg.generator, rt)
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
        ids = p.tokenizer(prompts, padding="max_length", truncation=True, max_length=p.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
        with torch.no_grad():
            return diffusion_loss(p, sched, lat, ids, noise, t, rt).item()

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
])
def test_bad_tokens(folder_data, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        run_learn_style(cfg_for(folder_data, tmp_path / "s", override))


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
