"""Style inversion for other generator families: SD 2.x v-prediction and SDXL (two text encoders, pooled embeddings,
size/crop time ids), with tiny random-weight folders loaded through generator.model=<folder> (offline)."""

import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthtl.config import GenerateConfig, GeneratorConfig, StyleConfig, load_config
from synthtl.errors import ConfigError
from synthtl.files import read_jsonl
from synthtl.generation import styles
from synthtl.generation.families import save_tiny, text_encoders, tiny_sd2_components, tiny_sdxl_components, tokenizers
from synthtl.generation.pipeline import load_pipeline
from synthtl.generation.run import run_generate
from synthtl.generation.styles import EMBEDS
from synthtl.style.data import cache_latents, sample_picks
from synthtl.style.inversion import InversionRecipe
from synthtl.style.recipe import MicroBatch, conditioning, tokenize
from synthtl.style.train import run_learn_style


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generators")
    return {"sd2": save_tiny(tiny_sd2_components(0), root / "sd2", "sd"),
            "sd2_eps": save_tiny(tiny_sd2_components(0, "epsilon"), root / "sd2_eps", "sd"),
            "sdxl": save_tiny(tiny_sdxl_components(0), root / "sdxl", "sdxl")}


def cfg_for(folder_data, out, model, *extra) -> StyleConfig:
    return load_config(StyleConfig, None, [
        f"generator.model={model}", "generator.device=cpu", "resolution=32", "batch_size=2", "validation_steps=2",
        "validation_images=1", "validation_classes=1", "images_per_class=2", "progress=false", "lr=0.05",
        "data.name=folder", f"data.root={folder_data}", f"out_dir={out}", "steps=2", "validate_every=0", *extra])


class Oracle(torch.nn.Module):
    """A UNet stand-in that predicts a fixed tensor: the loss is zero exactly when that tensor is the target."""

    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction = prediction

    def forward(self, noisy, t, states, added_cond_kwargs=None):
        return types.SimpleNamespace(sample=self.prediction)


@pytest.mark.parametrize("model, target", [("sd2", "velocity"), ("sd2_eps", "noise")])
def test_inversion_target_follows_the_prediction_type(folders, folder_data, tmp_path, model, target):
    r = InversionRecipe(cfg_for(folder_data, tmp_path / "s", folders[model]), tmp_path / "s")
    pipe, sched = r.components()
    r.noise_sched = sched
    assert sched.config.prediction_type == ("v_prediction" if target == "velocity" else "epsilon")
    g = torch.Generator().manual_seed(0)
    lat, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([100, 900])
    velocity = sched.get_velocity(lat, noise, t)
    assert not torch.allclose(velocity, noise)

    def loss_if_unet_predicts(prediction):
        r.pipe = types.SimpleNamespace(text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                       unet=Oracle(prediction))
        return r.loss(MicroBatch(lat, noise, t, ["a photo"] * 2)).item()

    right, wrong = (velocity, noise) if target == "velocity" else (noise, velocity)
    assert loss_if_unet_predicts(right) == 0.0 and loss_if_unet_predicts(wrong) > 0.01


def test_a_sample_predicting_scheduler_is_refused(folders, folder_data, tmp_path):
    from diffusers import DDPMScheduler

    r = InversionRecipe(cfg_for(folder_data, tmp_path / "s", folders["sd2"]), tmp_path / "s")
    r.pipe, sched = r.components()
    r.noise_sched = DDPMScheduler.from_config(sched.config, prediction_type="sample")
    with pytest.raises(ConfigError, match="predicts 'sample'.*epsilon and v_prediction"):
        r.loss(MicroBatch(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4), torch.tensor([1]), ["a photo"]))


def tables(pipe) -> list[torch.Tensor]:
    return [e.get_input_embeddings().weight.detach().clone() for e in text_encoders(pipe)]


@pytest.mark.parametrize("model", ["sd2", "sdxl"])
def test_one_inversion_step_changes_only_the_token_in_every_text_encoder(folders, folder_data, tmp_path, model):
    r = InversionRecipe(cfg_for(folder_data, tmp_path / "s", folders[model], "vectors=2"), tmp_path / "s")
    r.setup()
    pipe, inv = r.pipe, r.inv
    prompt = [f"a photo in the style of {inv.prompt_token(0)}"]

    def effective():  # each encoder's input embeddings of the prompt, as the hooks make them
        return [e.get_input_embeddings()(tokenize(tok, prompt)).detach().clone()
                for e, tok in zip(text_encoders(pipe), tokenizers(pipe), strict=True)]

    before, before_tables = effective(), tables(pipe)
    batch = r.draw(r.units[0], 0)
    assert (batch[0].time_ids is not None) == (model == "sdxl")
    loss = r.step(0, batch)
    after = effective()
    assert np.isfinite(loss) and inv.updates == [1]
    assert all(torch.equal(a, b) for a, b in zip(before_tables, tables(pipe), strict=True))  # no table row moves
    assert all(p.grad is None for m in (pipe.unet, *text_encoders(pipe)) for p in m.parameters())
    for k, tok in enumerate(tokenizers(pipe)):
        ids = tokenize(tok, prompt)[0]
        token_at = torch.isin(ids, inv.encoder_ids[k])
        moved = (before[k][0] != after[k][0]).any(dim=1)
        assert token_at.sum() == 2 and torch.equal(moved, token_at)  # both sub-tokens, in every encoder, only they
    assert inv.learned[0].shape == (2, sum(e.get_input_embeddings().weight.shape[1] for e in text_encoders(pipe)))


def test_sdxl_time_ids_are_each_images_size_and_crop(folders, folder_data, tmp_path):
    """folder_data's images are 48x40 (w x h): original (40, 48), crops inside the resized 38x32 image, target 32."""
    cfg = cfg_for(folder_data, tmp_path / "s", folders["sdxl"], "batch_size=8")
    r = InversionRecipe(cfg, tmp_path / "s")
    r.setup()
    pipe, sizes, rt = r.pipe, r.data.sizes, r.rt
    assert sizes and all(s == (40, 48, 0, 0) for s in sizes)  # random crops: taken later, from the latents
    batch = r.draw_one(r.groups, torch.Generator().manual_seed(3))
    picks = sample_picks(r.data, r.groups, cfg.batch_size, cfg.resolution // 8, torch.Generator().manual_seed(3))
    px = pipe.vae_scale_factor
    expected = [[40, 48, top * px, left * px, 32, 32] for _, _, _, top, left in picks]
    assert batch.time_ids.tolist() == expected and any(left > 0 for *_, left in picks)

    center = cfg_for(folder_data, tmp_path / "c", folders["sdxl"], "crop=center")
    sizes = cache_latents(pipe.vae, r.images, center, rt, sizes=True).sizes
    assert all(s == (40, 48, 0, 3) for s in sizes)  # 48x40 -> 38x32, centre 32x32 starts 3 px in
    noise, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([300, 600])

    def loss(time_ids):
        with torch.no_grad():
            return r.loss(MicroBatch(batch.latents[:2], noise, t, ["a photo"] * 2, time_ids)).item()

    small, large = torch.tensor([[40, 48, 0, 0, 32, 32]] * 2), torch.tensor([[1024, 1024, 0, 0, 32, 32]] * 2)
    assert loss(small) != loss(large)  # the UNet reads them


def test_sdxl_style_file_loads_with_diffusers_sdxl_calls_and_drives_generation(folders, folder_data, tmp_path):
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, folders["sdxl"], "vectors=2"))
    state = load_file(str(out / EMBEDS))
    assert set(state) == {"clip_l", "clip_g"} and state["clip_l"].shape == (2, 16) and state["clip_g"].shape == (2, 24)
    assert info["tokens"] == ["<synthtl-style>"] and (out / "validation" / "step-000002.png").is_file()

    pipe = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"))
    token = info["tokens"][0]
    # diffusers' documented SDXL calls: one per text encoder
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for key, encoder, tok in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                              ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
        ids = tok.convert_tokens_to_ids([token, f"{token}_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), state[key])

    ours = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"))
    assert styles.load_into_pipeline(ours, out) == [token]
    assert all(torch.equal(a, b) for a, b in zip(tables(ours), tables(pipe), strict=True))  # same as diffusers' calls

    def generate(prompt):
        g = torch.Generator().manual_seed(0)
        return pipe(prompt=prompt, num_inference_steps=2, guidance_scale=2.0, height=32, width=32, generator=g,
                    output_type="np").images[0]

    styled, plain = generate(f"a red fox photo in the style of {token}"), generate("a red fox photo in the style of")
    assert np.isfinite(styled).all() and not np.array_equal(styled, plain)

    with pytest.raises(ConfigError, match="already in the tokenizer"):
        styles.load_into_pipeline(ours, out)
    with pytest.raises(ConfigError, match="mode=class is not supported for SDXL"):
        run_learn_style(cfg_for(folder_data, tmp_path / "c", folders["sdxl"], "mode=class", "steps=3"))


def style_then_generate(model, folder_data, tmp_path) -> tuple:
    """Learns a style against `model`, then generates one image per class with it: (style folder, set, rows)."""
    out, gen = tmp_path / "s", tmp_path / "gen"
    run_learn_style(cfg_for(folder_data, out, model))
    run_generate(load_config(GenerateConfig, None, [
        f"generator.model={model}", "generator.height=32", "generator.width=32", "generator.steps=2",
        "per_class=1", "data.name=folder", f"data.root={folder_data}", f"out_dir={gen}", "prompts.templates=style",
        f"prompts.style_embedding={out}", "progress=false"]))
    rows = read_jsonl(gen / "manifest.jsonl")
    assert len(rows) == 3 and all("in the style of <synthtl-style>" in r["prompt"] for r in rows)
    return out, gen, rows


def test_sd2_style_drives_generation_through_generate(folders, folder_data, tmp_path):
    out, _, _ = style_then_generate(folders["sd2"], folder_data, tmp_path)
    assert load_file(str(out / EMBEDS))["<synthtl-style>"].shape == (1, 24)
    with pytest.raises(ConfigError, match="not an SDXL embedding"):
        styles.load_into_pipeline(load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu")), out)


def test_sdxl_style_drives_generation_through_generate(folders, folder_data, tmp_path):
    _, gen, rows = style_then_generate(folders["sdxl"], folder_data, tmp_path)
    assert all((gen / r["path"]).is_file() for r in rows)


def sdxl_unet_out(pipe, prompt="a photo of a red fox."):
    """The SDXL UNet's prediction for fixed latents, timestep, prompt (both encoders, pooled) and time ids."""
    ids = [tokenize(tok, [prompt]) for tok in tokenizers(pipe)]
    with torch.no_grad():
        states, added = conditioning(pipe, ids, torch.tensor([[32, 32, 0, 0, 32, 32]]))
        noisy = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        return pipe.unet(noisy, 500, states, added_cond_kwargs=added).sample


def test_sdxl_lora_learns_on_both_text_encoders_and_loads_with_diffusers_sdxl_loader(folders, folder_data, tmp_path):
    """method=lora on SDXL: time ids and pooled embeddings condition the step, a LoRA on each text encoder, and the
    file is what StableDiffusionXLPipeline.load_lora_weights reads; our fused loading gives the same UNet."""
    from diffusers import StableDiffusionXLPipeline


    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, folders["sdxl"], "method=lora", "lora.rank=2",
                                               "lora.train_text_encoder=true"))
    assert info["method"] == "lora" and (out / "validation" / "step-000002.png").is_file()
    state = load_file(str(out / styles.WEIGHTS))
    assert {k.split(".")[0] for k in state} == {"unet", "text_encoder", "text_encoder_2"}
    base = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"))
    # Every LoRA learned except the first encoder's last layer: SDXL reads that encoder's penultimate hidden states.
    last = f"text_encoder.encoder.layers.{base.text_encoder.config.num_hidden_layers - 1}."
    still = {k for k, v in state.items() if ".lora_B." in k and not v.abs().sum() > 0}
    assert still and all(k.startswith(last) for k in still)

    plain = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"))
    assert isinstance(plain, StableDiffusionXLPipeline)
    plain.load_lora_weights(str(out))  # diffusers' own SDXL loader, from the folder
    ours = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"), style_lora=str(out))
    assert not torch.allclose(sdxl_unet_out(plain), sdxl_unet_out(base), atol=1e-4)
    torch.testing.assert_close(sdxl_unet_out(ours), sdxl_unet_out(plain), rtol=0, atol=1e-5)


def test_sdxl_per_class_lora_drives_generation_through_generate(folders, folder_data, tmp_path):
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, folders["sdxl"], "method=lora", "lora.rank=2",
                                               "mode=class", "steps=3"))
    assert info["adapter_steps"] == {"red fox": 1, "blue jay": 1, "green frog": 1}
    gen = tmp_path / "gen"
    run_generate(load_config(GenerateConfig, None, [
        f"generator.model={folders['sdxl']}", "generator.height=32", "generator.width=32", "generator.steps=2",
        "per_class=1", "data.name=folder", f"data.root={folder_data}", f"out_dir={gen}", f"prompts.style_lora={out}",
        "progress=false"]))
    rows = read_jsonl(gen / "manifest.jsonl")
    assert len(rows) == 3 and all((gen / r["path"]).is_file() for r in rows)
