"""Style LoRA (method=lora, ours) on the tiny random-weight Stable Diffusion (CPU, offline)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from synthtl import faults
from synthtl.config import GenerateConfig, PromptConfig, StyleConfig, load_config
from synthtl.errors import ConfigError, SynthTLError
from synthtl.generation import styles
from synthtl.generation.pipeline import load_pipeline
from synthtl.style import lora
from synthtl.style.recipe import MicroBatch, tokenize
from synthtl.style.train import run_learn_style
from tests.conftest import run_cli
from tests.style.test_style import learn_until_checkpoint

TINY = ["generator.model=tiny", "resolution=32", "batch_size=2", "validation_steps=2", "validation_images=1",
        "validation_classes=1", "progress=false", "method=lora", "lora.rank=2", "lr=0.01"]


def cfg_for(folder_data, out, *extra) -> StyleConfig:
    return load_config(StyleConfig, None, [*TINY, "data.name=folder", f"data.root={folder_data}", f"out_dir={out}",
                                           "steps=6", "validate_every=0", "images_per_class=3", *extra])


def tiny_gen():
    return load_config(GenerateConfig, None, ["generator.model=tiny"]).generator


def unet_out(pipe, prompt="a photo of a red fox."):
    """The UNet's noise prediction for fixed latents, timestep and prompt."""
    g = torch.Generator().manual_seed(0)
    ids = tokenize(pipe.tokenizer, [prompt])
    with torch.no_grad():
        return pipe.unet(torch.randn(1, 4, 4, 4, generator=g), 500, pipe.text_encoder(ids)[0]).sample


def images(pipe, prompt="a photo of a red fox.", seed=3):
    out = pipe([prompt] * 2, num_inference_steps=2, guidance_scale=2.0, height=32, width=32, output_type="np",
               generator=[torch.Generator().manual_seed(seed + k) for k in range(2)]).images
    return torch.from_numpy(out)


def test_training_changes_only_the_lora_parameters(folder_data, tmp_path):
    """Two steps with the text-encoder LoRA on: every base weight of UNet, VAE and text encoder is bit-identical."""
    cfg = cfg_for(folder_data, tmp_path / "s", "lora.train_text_encoder=true", "weight_decay=0.1")
    r = lora.LoraRecipe(cfg, tmp_path / "s")
    pipe, _ = r.components()
    before = {f"{n}.{k}": v.clone() for n in ("unet", "vae", "text_encoder")
              for k, v in getattr(pipe, n).state_dict().items()}
    r.setup()
    pipe, params = r.pipe, r.params
    r.start_unit(r.units[0])
    start = {k: p.detach().clone() for k, p in params.items()}
    for step in range(2):
        r.step(step, r.draw(r.units[0], step))
    after = {}
    for n in ("unet", "vae", "text_encoder"):  # peft wraps a layer: its weight is now `<layer>.base_layer.weight`
        after.update({f"{n}.{k.replace('.base_layer', '')}": v for k, v in getattr(pipe, n).state_dict().items()
                      if ".lora_" not in k})
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert any(k.startswith("text_encoder.") for k in params) and any(k.startswith("unet.") for k in params)
    assert all(not torch.equal(p, start[k]) for k, p in params.items())  # every LoRA matrix learned


def test_fused_qkv_on_cuda_does_not_bypass_the_lora(folder_data, tmp_path, monkeypatch):
    """On CUDA, loading fuses q/k/v projections (generator.fuse_qkv): a LoRA injected into to_q/to_k/to_v would then
    get no gradient. Simulated on CPU by fusing wherever the loader is asked to."""
    from synthtl.generation import pipeline

    real = pipeline.optimize

    def as_on_cuda(pipe, gen, rt):
        if gen.fuse_qkv:
            pipe.fuse_qkv_projections()
        return real(pipe, gen, rt)

    monkeypatch.setattr(pipeline, "optimize", as_on_cuda)
    cfg = cfg_for(folder_data, tmp_path / "s", "steps=2")
    run_learn_style(cfg)
    learned = load_file(str(tmp_path / "s" / styles.WEIGHTS))
    ups = {k: v for k, v in learned.items() if "lora_B" in k or "lora_up" in k}
    assert ups and all(v.abs().sum() > 0 for v in ups.values())  # every LoRA matrix learned: none was bypassed


def test_dataset_lora_files_style_json_and_finished_noop(folder_data, tmp_path):
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, "validate_every=3"))
    state = load_file(str(out / styles.WEIGHTS))
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    assert info["method"] == "lora" and info["mode"] == "dataset" and info["rank"] == 2 and info["alpha"] == 2
    assert info["steps"] == 6 and len(info["loss_curve"]) == 6 and info["adapter_steps"] == {"dataset": 6}
    assert info["trainable_params"] == sum(t.numel() for t in state.values())
    assert info["hash"] == styles.lora_hash(out) and info["peak_memory_mb"] > 0 and info["wall_s"] > 0
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-000003.png", "step-000006.png"]
    assert not (out / "checkpoint.pt").exists()
    (out / "checkpoint.pt").write_bytes(b"resume state a kill left after style.json")
    assert run_learn_style(cfg_for(folder_data, out, "validate_every=3")) == info  # finished: a no-op
    assert not (out / "checkpoint.pt").exists()  # that leftover is removed


def test_diffusers_load_lora_weights_reads_it_and_matches_our_loading(folder_data, tmp_path):
    out = tmp_path / "s"
    run_learn_style(cfg_for(folder_data, out, "lr=0.05", "lora.alpha=4"))  # alpha != rank: the scale is in the file
    base = load_pipeline(tiny_gen())
    plain = load_pipeline(tiny_gen())
    plain.load_lora_weights(str(out))  # diffusers' own loader, from the folder
    ours = load_pipeline(tiny_gen(), style_lora=str(out))  # fused into the weights
    assert not torch.allclose(unet_out(plain), unet_out(base), atol=1e-4)
    torch.testing.assert_close(unet_out(ours), unet_out(plain), rtol=0, atol=1e-5)

    # ...and equals the model as it was at the end of training (peft layers, alpha / rank applied at run time)
    cfg = cfg_for(folder_data, out, "lr=0.05", "lora.alpha=4")
    trained = load_pipeline(tiny_gen())
    params = lora.add_lora(trained, cfg)
    state = load_file(str(out / styles.WEIGHTS))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k] / (2.0 if ".lora_B." in k else 1.0))  # the file holds B x alpha / rank = B x 2
    torch.testing.assert_close(unet_out(ours), unet_out(trained), rtol=0, atol=1e-5)


def test_loss_falls_when_overfitting_a_few_images(folder_data, tmp_path):
    """The learned LoRA lowers the denoising loss on its training images (fixed noise and timesteps)."""
    out = tmp_path / "s"
    cfg = cfg_for(folder_data, out, "steps=40", "lr=0.02", "data.shots=2", "random_flip=false", "crop=center",
                  "lora.rank=4")
    r = lora.LoraRecipe(cfg, tmp_path / "probe")
    r.setup()  # its LoRA starts at B = 0: the base model's loss
    lat = torch.cat(r.data.latents) * r.pipe.vae.config.scaling_factor
    prompts = [f"a photo of a {r.images.names[y]}." for y in r.data.labels]
    g = torch.Generator().manual_seed(1)
    batch = MicroBatch(lat, torch.randn(lat.shape, generator=g), torch.randint(0, 1000, (len(lat),), generator=g),
                       prompts)

    def probe(p):
        r.pipe = p
        with torch.no_grad():
            return r.loss(batch).item()

    start = probe(load_pipeline(cfg.generator, r.rt))
    run_learn_style(cfg)
    assert probe(load_pipeline(cfg.generator, r.rt, style_lora=str(out))) < start


def test_resume_equals_uninterrupted_and_clears_leftovers(folder_data, tmp_path):
    args = ("checkpoint_every=2", "warmup_steps=2")
    whole = run_learn_style(cfg_for(folder_data, tmp_path / "whole", *args))
    killed = tmp_path / "killed"
    calls = learn_until_checkpoint(cfg_for(folder_data, killed, *args), n=2)
    assert calls == [2, 4] and (killed / "checkpoint.pt").is_file() and not (killed / styles.WEIGHTS).exists()
    leftover = killed / f".{styles.WEIGHTS}.x1y2z3.tmp"  # what a kill during an atomic write leaves
    leftover.write_bytes(b"half")
    resumed = run_learn_style(cfg_for(folder_data, killed, *args))
    assert not leftover.exists()
    a, b = load_file(str(tmp_path / "whole" / styles.WEIGHTS)), load_file(str(killed / styles.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["loss_curve"] == whole["loss_curve"] and resumed["hash"] == whole["hash"]


def test_per_class_adapters_each_trained_only_on_their_class(folder_data, tmp_path):
    """N adapters, each from batches of its own class only; a kill during class 1 resumes to the same weights."""
    seen = []

    class Watched(lora.LoraRecipe):
        def prompts(self, ys, g):
            seen.append(tuple(sorted(set(ys))))
            return super().prompts(ys, g)

    args = ("mode=class", "steps_per_class=2", "checkpoint_every=1")
    whole = run_learn_style(cfg_for(folder_data, tmp_path / "whole", *args), Watched)
    assert seen == [(0,)] * 2 + [(1,)] * 2 + [(2,)] * 2  # class after class, each batch of one class
    assert whole["adapter_steps"] == {"blue jay": 2, "green frog": 2, "red fox": 2} and whole["steps"] == 6
    assert whole["adapters"] == {"blue jay": "adapters/0", "green frog": "adapters/1", "red fox": "adapters/2"}
    files = [tmp_path / "whole" / "adapters" / str(c) / styles.WEIGHTS for c in range(3)]
    states = [load_file(str(f)) for f in files]
    assert all(not torch.equal(states[0][k], states[c][k]) for c in (1, 2) for k in states[0] if ".lora_B." in k)
    outs = []
    for c in range(3):  # each adapter is a LoRA diffusers reads
        p = load_pipeline(tiny_gen())
        p.load_lora_weights(str(files[c].parent))
        outs.append(unet_out(p))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])

    def die_in_class_1(step, unit):
        if unit == 1:
            raise KeyboardInterrupt

    killed = tmp_path / "killed"
    with faults.inject("style.checkpoint", die_in_class_1), pytest.raises(KeyboardInterrupt):
        run_learn_style(cfg_for(folder_data, killed, *args))
    assert (killed / "adapters" / "0" / lora.ADAPTER_JSON).is_file() and not (killed / "adapters" / "1").exists()
    resumed = run_learn_style(cfg_for(folder_data, killed, *args))
    assert resumed["hash"] == whole["hash"] and resumed["adapter_loss_curves"] == whole["adapter_loss_curves"]
    assert not (killed / "adapters" / "checkpoint.pt").exists()


def test_generation_with_a_style_lora_differs_and_is_reproducible(folder_data, tmp_path):
    out, pc = tmp_path / "s", tmp_path / "pc"
    run_learn_style(cfg_for(folder_data, out, "lr=0.05", "steps=2"))
    base = images(load_pipeline(tiny_gen()))
    styled = images(load_pipeline(tiny_gen(), style_lora=str(out)))
    assert not torch.equal(styled, base)
    assert torch.equal(styled, images(load_pipeline(tiny_gen(), style_lora=str(out))))

    run_learn_style(cfg_for(folder_data, pc, "lr=0.05", "mode=class", "steps_per_class=2"))
    pipe = load_pipeline(tiny_gen(), style_lora=str(pc))
    with pytest.raises(SynthTLError, match="call set_style_lora_class"):
        images(pipe)  # a per-class LoRA never silently generates with the base weights
    by_class = {}
    for name in ("red fox", "blue jay", "red fox"):  # switching back gives the same weights: no drift
        styles.set_style_lora_class(pipe, name)
        by_class.setdefault(name, []).append(images(pipe, f"a photo of a {name}."))
    assert torch.equal(*by_class["red fox"])
    other = load_pipeline(tiny_gen())
    other.load_lora_weights(str(pc / "adapters" / "2"))  # red fox is class 2 (sorted folder names)
    torch.testing.assert_close(by_class["red fox"][0], images(other, "a photo of a red fox."), rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match="class 'zebra' has no adapter"):
        styles.set_style_lora_class(pipe, "zebra")


def test_generation_style_hash_records_the_lora(folder_data, tmp_path):
    out = tmp_path / "s"
    info = run_learn_style(cfg_for(folder_data, out, "steps=1"))
    assert styles.generation_style_hash(PromptConfig(style_lora=str(out))) == f"lora-{info['hash']}"
    assert styles.generation_style_hash(PromptConfig()) == ""


@pytest.mark.parametrize("override, message", [
    ("lora.rank=0", "lora.rank=0: must be >= 1"),
    ("method=dreambooth", "method='dreambooth': choose one of inversion, lora"),
    ("lora.targets=[no_such_layer]", "lora.targets=\\['no_such_layer'\\]"),
    ("templates=['a {} in the style of {token}.']", "remove {token} from templates"),
    ("mode=class", "gives the 3 class LoRAs no step each"),  # steps=2 below
])
def test_bad_config_is_one_line(folder_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        run_learn_style(cfg_for(folder_data, tmp_path / "s", override, "steps=2"))
    assert "\n" not in str(e.value)


def test_style_lora_that_is_not_a_lora_or_for_another_model(folder_data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a LoRA"):
        load_pipeline(tiny_gen(), style_lora=str(tmp_path / "empty"))
    save_file({"<synthtl-style>": torch.zeros(1, 16)}, str(tmp_path / "ti.safetensors"))  # a token, not a LoRA
    with pytest.raises(ConfigError, match="not a LoRA weight"):
        load_pipeline(tiny_gen(), style_lora=str(tmp_path / "ti.safetensors"))
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{key}.lora_A.weight": torch.zeros(2, 320), f"{key}.lora_B.weight": torch.zeros(320, 2)},
              str(tmp_path / "sd15.safetensors"))  # SD 1.5's 320 channels; the tiny UNet has 8
    with pytest.raises(ConfigError, match=r"does not fit this generator: .*to_q is \(8, 8\), the LoRA expects "
                                          r"\(320, 320\)") as e:
        load_pipeline(tiny_gen(), style_lora=str(tmp_path / "sd15.safetensors"))
    assert "\n" not in str(e.value)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "pytorch_lora_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ConfigError, match="could not be read as a safetensors file") as e:
        load_pipeline(tiny_gen(), style_lora=str(tmp_path / "damaged"))
    assert "\n" not in str(e.value)


def test_text_encoder_lora_is_applied(folder_data, tmp_path):
    out = tmp_path / "s"
    run_learn_style(cfg_for(folder_data, out, "lora.train_text_encoder=true", "lr=0.05", "steps=3"))
    assert any(k.startswith("text_encoder.") for k in load_file(str(out / styles.WEIGHTS)))
    ids = tokenize(load_pipeline(tiny_gen()).tokenizer, ["a photo of a red fox."])
    with torch.no_grad():
        base = load_pipeline(tiny_gen()).text_encoder(ids)[0]
        ours = load_pipeline(tiny_gen(), style_lora=str(out)).text_encoder(ids)[0]
    assert not torch.allclose(base, ours, atol=1e-5)
    plain = load_pipeline(tiny_gen())
    try:
        plain.load_lora_weights(str(out))
    except ValueError as e:  # transformers' adapter support wants a newer peft than this machine has
        pytest.skip(f"diffusers cannot load a text-encoder LoRA here: {e}")
    with torch.no_grad():
        torch.testing.assert_close(plain.text_encoder(ids)[0], ours, rtol=0, atol=1e-5)


def test_cli_and_presets(folder_data, tmp_path):
    assert run_cli("learn-style", *TINY, "data.name=folder", f"data.root={folder_data}", "images_per_class=2",
                   f"out_dir={tmp_path / 's'}", "steps=1", "validate_every=0") == 0
    assert json.loads((tmp_path / "s" / "style.json").read_text())["method"] == "lora"
    dataset, per_class = load_config(StyleConfig, "style/lora"), load_config(StyleConfig, "style/lora_per_class")
    assert dataset.method == per_class.method == "lora" and dataset.mode == "dataset" and per_class.mode == "class"
    assert per_class.steps_per_class > 0 and load_config(StyleConfig, "style/lora_tiny").generator.model == "tiny"


# -------------------------------------------------------------- generation (needs the run.py change in the report)
def test_generate_with_a_style_lora(folder_data, tmp_path):
    """A set made with prompts.style_lora records the LoRA's hash, differs from the unstyled set and is reproducible;
    with a per-class LoRA each class's images are exactly those its own adapter makes (batches of one class)."""
    from synthtl.files import read_jsonl
    from synthtl.generation.run import run_generate

    out, pc = tmp_path / "s", tmp_path / "pc"
    info = run_learn_style(cfg_for(folder_data, out, "lr=0.05", "steps=2"))
    run_learn_style(cfg_for(folder_data, pc, "lr=0.05", "mode=class", "steps_per_class=1"))

    def generate(name, *extra):
        run_generate(load_config(GenerateConfig, None, [
            "generator.model=tiny", "generator.height=32", "generator.width=32", "generator.steps=2", "per_class=2",
            "generator.batch_size=1", "data.name=folder", f"data.root={folder_data}", f"out_dir={tmp_path / name}",
            "progress=false", "image_format=png", "train_copy=0", *extra]))
        rows = read_jsonl(tmp_path / name / "manifest.jsonl")
        return rows, {(r["class_name"], r["index"]): (tmp_path / name / r["path"]).read_bytes() for r in rows}

    _, base = generate("base")
    rows, styled = generate("lora", f"prompts.style_lora={out}")
    assert {r["style_hash"] for r in rows} == {f"lora-{info['hash']}"}
    assert all(styled[k] != base[k] for k in base)
    assert generate("again", f"prompts.style_lora={out}")[1] == styled
    _, per_class = generate("pc_set", f"prompts.style_lora={pc}", "generator.batch_size=4")
    _, fox = generate("fox", f"prompts.style_lora={pc / 'adapters' / '2'}")  # red fox's adapter as a plain LoRA
    assert all(per_class[k] == fox[k] for k in fox if k[0] == "red fox")
    assert all(per_class[k] != fox[k] for k in fox if k[0] != "red fox")
    # the report tells a per-class LoRA set from a dataset one (plan.json notes it; not part of the set's identity)
    from synthtl.reporting.collect import _prompt_label

    assert [_prompt_label(tmp_path / n)[1] for n in ("lora", "pc_set", "base")] == ["lora", "lora_per_class", "single"]


def test_a_style_lora_path_that_does_not_exist_says_so(tmp_path):
    """A typo in prompts.style_lora is named as a missing path, not as a folder that "is not a LoRA"."""
    missing = tmp_path / "styles" / "nope"
    with pytest.raises(ConfigError, match=r"prompts.style_lora=.*nope' does not exist: point it at a folder") as e:
        styles.generation_style_hash(PromptConfig(style_lora=str(missing)))  # what generation asks first
    assert "\n" not in str(e.value) and "is not a LoRA" not in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tiny_gen(), style_lora=str(missing))


def test_a_lora_folder_of_another_config_names_the_keys_that_differ(folder_data, tmp_path):
    out = tmp_path / "s"
    run_learn_style(cfg_for(folder_data, out, "steps=2"))
    with pytest.raises(ConfigError) as e:
        run_learn_style(cfg_for(folder_data, out, "steps=3", "lora.rank=4"))
    msg = str(e.value)
    assert "\n" not in msg and "holds a style made with another config" in msg
    assert "lora.rank (2 there, 4 now)" in msg and "steps (2 there, 3 now)" in msg
    assert "Use another out_dir" in msg
