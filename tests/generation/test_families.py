"""Generator families (SD 1.x/2.x, SDXL): detection from the files and generation from a diffusers folder of each,
built from tiny random-weight components (offline)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthtl.config import GenerateConfig, GeneratorConfig, load_config
from synthtl.data.genset import MANIFEST
from synthtl.errors import ConfigError
from synthtl.files import read_jsonl
from synthtl.generation.families import (
    FAMILIES,
    family_of,
    save_tiny,
    text_encoders,
    tiny_sd2_components,
    tiny_sdxl_components,
)
from synthtl.generation.pipeline import load_pipeline
from synthtl.generation.run import run_generate


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{"sd2": a tiny SD 2.x v-prediction folder, "sdxl": a tiny SDXL folder}, written once for the module."""
    root = tmp_path_factory.mktemp("generators")
    return {"sd2": save_tiny(tiny_sd2_components(0), root / "sd2", "sd"),
            "sdxl": save_tiny(tiny_sdxl_components(0), root / "sdxl", "sdxl")}


def test_family_and_pipeline_class_come_from_the_folder(folders):
    assert family_of(GeneratorConfig(model="tiny")).name == "sd"
    assert family_of(GeneratorConfig(model=str(folders["sd2"]))).name == "sd"
    assert family_of(GeneratorConfig(model=str(folders["sdxl"]))).name == "sdxl"
    sdxl = load_pipeline(GeneratorConfig(model=str(folders["sdxl"]), device="cpu"))
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline" and len(text_encoders(sdxl)) == 2
    widths = [e.get_input_embeddings().weight.shape[1] for e in text_encoders(sdxl)]
    assert widths == [16, 24] and sdxl.unet.config.addition_embed_type == "text_time"
    sd2 = load_pipeline(GeneratorConfig(model=str(folders["sd2"]), device="cpu", scheduler="ddim"))
    assert type(sd2).__name__ == "StableDiffusionPipeline"
    assert sd2.scheduler.config.prediction_type == "v_prediction"  # kept when the configured scheduler replaces it


def test_unsupported_family_is_refused_naming_the_supported_ones(tmp_path):
    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ConfigError, match="StableDiffusion3Pipeline.*supported generator families: sd: .*sdxl: "):
        load_pipeline(GeneratorConfig(model=str(folder), device="cpu"))


def test_single_file_family_from_its_key_names(tmp_path):
    from safetensors.torch import save_file

    layouts = {"sdxl": ["conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x"],
               "sd": ["cond_stage_model.transformer.x", "model.diffusion_model.x"]}
    for name, keys in layouts.items():
        save_file({k: torch.zeros(1) for k in keys}, str(tmp_path / f"{name}.safetensors"))
        assert family_of(GeneratorConfig(model=str(tmp_path / f"{name}.safetensors"))) is FAMILIES.get(name)
    save_file({"conditioner.embedders.0.model.x": torch.zeros(1)}, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(ConfigError, match="not a text-to-image SD/SDXL base checkpoint"):
        family_of(GeneratorConfig(model=str(tmp_path / "refiner.safetensors")))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_generation_from_a_folder_of_each_family(folders, folder_data, tmp_path, family):
    out = tmp_path / "gen"
    argv = ["generator.height=32", "generator.width=32", "generator.steps=2", "generator.batch_size=3",
            "progress=false", "data.name=folder", f"data.root={folder_data}", "per_class=1", f"out_dir={out}",
            f"generator.model={folders[family]}", "prompts.negative=blurry"]
    summary = run_generate(load_config(GenerateConfig, None, argv))
    rows = read_jsonl(out / MANIFEST)
    assert summary["generated"] == 3 and len(rows) == 3 and rows[0]["model"] == "local"
    images = [np.asarray(Image.open(out / r["path"])) for r in rows]
    assert all(im.shape == (32, 32, 3) for im in images)
    assert not np.array_equal(images[0], images[1])  # different seeds and prompts
    again = run_generate(load_config(GenerateConfig, None, argv))
    assert again["generated"] == 0  # a finished set: nothing regenerated


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_img2img_from_a_folder_of_each_family(folders, folder_data, tmp_path, family):
    """Real-guided img2img (ours) runs on SD 2.x and SDXL folders too, each row starting from a train image."""
    out = tmp_path / "gen"
    argv = ["mode=img2img", "img2img.strength=0.5", "generator.height=32", "generator.width=32",
            "generator.steps=2", "generator.batch_size=3", "progress=false", "data.name=folder",
            f"data.root={folder_data}", "per_class=1", f"out_dir={out}", f"generator.model={folders[family]}"]
    summary = run_generate(load_config(GenerateConfig, None, argv))
    rows = read_jsonl(out / MANIFEST)
    assert summary["generated"] == 3 and summary["set_complete"]
    assert all(r["source"] and (folder_data / "train" / r["source"]).is_file() for r in rows)
    assert json.loads((out / "plan.json").read_text())["settings"]["mode"] == "img2img"
    assert all(np.asarray(Image.open(out / r["path"])).shape == (32, 32, 3) for r in rows)
