"""Stable Diffusion v1.5 at full size (random weights, the real CLIP tokenizer) on CPU at 64 px, through the CLI.

Marked `fullsize`: building, saving and two loads of the 1.07B-parameter model cost 190 s on a shared, busy
2-core box (most of it loading fp16 files into fp32 and the 64 px steps). CI still
runs it (plain `pytest -q`); deselect locally with `-m "not fullsize"`.
"""

import json
import math

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from synthtl.data.genset import MANIFEST
from synthtl.files import read_jsonl
from tests.conftest import run_cli

pytestmark = pytest.mark.fullsize

SMALL = ["generator.height=64", "generator.width=64", "generator.steps=1", "generator.device=cpu", "per_class=1",
         "generator.batch_size=1", "progress=false", "writers=1", "train_copy=0"]


def generate(folder, data, out, *extra) -> list[dict]:
    assert run_cli("generate", f"generator.model={folder}", *SMALL, "data.name=folder", f"data.root={data}",
                   "classes=[red_fox]", f"out_dir={out}", *extra) == 0
    rows = read_jsonl(out / MANIFEST)
    assert len(rows) == 1 and rows[0]["status"] == "done"
    with Image.open(out / rows[0]["path"]) as im:
        assert im.size == (64, 64)
    return rows


def test_saved_folder_is_sd15_in_fp16(sd15_folder):
    unet = json.loads((sd15_folder / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    te = json.loads((sd15_folder / "text_encoder" / "config.json").read_text())
    assert te["vocab_size"] == 49408 and te["num_hidden_layers"] == 12 and te["hidden_size"] == 768
    with safe_open(str(sd15_folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.get_slice(keys[0]).get_dtype() == "F16"
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
    assert 855e6 < params < 865e6  # SD v1.5's UNet: 859.5M parameters


def test_one_inversion_step_then_generation_with_the_learned_token_from_fp16_files(sd15_folder, folder_data, tmp_path):
    style = tmp_path / "style"
    assert run_cli("learn-style", f"generator.model={sd15_folder}", "generator.device=cpu", "data.name=folder",
                   f"data.root={folder_data}", "images_per_class=1", "resolution=64", "steps=1", "batch_size=1",
                   "validate_every=0", "validation_classes=1", "validation_images=1", "validation_steps=1",
                   "progress=false", f"out_dir={style}") == 0
    info = json.loads((style / "style.json").read_text())
    assert info["steps"] == 1 and info["dtype"] == "float32" and info["train_images"] == 3
    learned = load_file(str(style / "learned_embeds.safetensors"))["<synthtl-style>"]
    photo = load_file(str(sd15_folder / "text_encoder" / "model.safetensors"))
    table = next(v for k, v in photo.items() if k.endswith("token_embedding.weight"))
    assert learned.shape == (1, 768) and torch.isfinite(learned).all()
    start = table[1125].float()  # the initializer "photo"; one AdamW step moves every coordinate by ~lr
    assert not torch.allclose(learned[0], start) and (learned[0] - start).abs().max() < 0.05
    row = generate(sd15_folder, folder_data, tmp_path / "gen", "prompts.templates=style",
                   f"prompts.style_embedding={style}")[0]
    assert row["prompt"] == "a red fox photo in the style of <synthtl-style>." and len(row["style_hash"]) == 16
    assert row["dtype"] == "fp32" and row["revision"].startswith("local-")  # fp16 files, loaded in fp32 on CPU
