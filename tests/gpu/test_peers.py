"""The peers' features on CUDA (ours, beyond the paper): img2img generation in fp16, a LoRA style step, and CLIP
filter scores equal to the CPU's."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthtl.config import FilterConfig, GenerateConfig, StyleConfig, load_config
from synthtl.data.genset import MANIFEST, PLAN
from synthtl.files import read_json, read_jsonl
from synthtl.filtering.run import run_filter
from synthtl.generation.run import run_generate
from synthtl.style.train import run_learn_style
from tests.gpu.conftest import needs_cuda

pytestmark = needs_cuda

SRC = Path(__file__).resolve().parents[2] / "src"


def test_img2img_generates_a_few_images_in_fp16_on_cuda(folder_data, tmp_path):
    out = tmp_path / "i2i"
    cfg = load_config(GenerateConfig, "generate/img2img", [
        "generator.model=tiny", "generator.device=cuda", "generator.dtype=fp16", "generator.height=64",
        "generator.width=64", "generator.steps=4", "generator.batch_size=4", "data.name=folder",
        f"data.root={folder_data}", f"data.cache_dir={tmp_path / 'cache'}", "per_class=1", f"out_dir={out}",
        "progress=false", "train_copy=0"])
    s = run_generate(cfg)
    assert s["generated"] == 3 and s["set_complete"]
    assert s["redraws"] == 0  # no fp16 output was black or non-finite
    plan = read_json(out / PLAN)
    assert plan["settings"]["mode"] == "img2img" and plan["settings"]["dtype"] == "fp16"
    for r in read_jsonl(out / MANIFEST):
        assert r["status"] == "done" and r["strength"] == 0.5
        assert (folder_data / "train" / r["source"]).is_file()  # started from a train image
        arr = np.asarray(Image.open(out / r["path"]).convert("RGB"))
        assert arr.shape == (64, 64, 3) and arr.std() > 0


def test_lora_style_steps_on_cuda_train_every_lora_matrix(folder_data, tmp_path):
    """Two steps of `learn-style method=lora` on CUDA (bf16 frozen model): the loss is finite and every LoRA matrix of
    every targeted projection moved. A projection the forward pass skips (e.g. to_q/to_k/to_v replaced by a fused
    to_qkv on CUDA) keeps its zero-initialised B: the file would hold LoRAs that were never trained."""
    out = tmp_path / "lora"
    cfg = load_config(StyleConfig, "style/lora_tiny", [
        "generator.device=cuda", "data.name=folder", f"data.root={folder_data}", f"data.cache_dir={tmp_path / 'c'}",
        "steps=2", "batch_size=2", "images_per_class=2", "validate_every=0", "validation_classes=1",
        "validation_images=1", "validation_steps=1", "progress=false", f"out_dir={out}"])
    info = run_learn_style(cfg)
    assert info["device"].startswith("cuda") and info["steps"] == 2 and info["peak_memory_mb"] > 0
    assert info["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert all(math.isfinite(p["loss"]) for p in info["loss_curve"])
    from safetensors.torch import load_file

    state = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())
    b = {k: t for k, t in state.items() if ".lora_B." in k}
    untrained = sorted(k for k, t in b.items() if not t.abs().sum() > 0)
    assert b and not untrained, f"{len(untrained)} of {len(b)} LoRA B matrices never moved, e.g. {untrained[:3]}"


def tiny_clip(folder: Path) -> Path:
    """A random transformers CLIP (32 px, 2 layers) with synthtl's tiny tokenizer, saved as `clip.model` loads it."""
    from importlib import resources

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(resources.files("synthtl").joinpath("assets", "tiny_tokenizer")))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                                     **ids},
                        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    return folder


def test_clip_filter_scores_on_cuda_equal_the_cpu_scores(folder_data, tmp_path):
    """`synthtl filter device=cuda` (its own process, as a user runs it) scores each image as device=cpu does, up to
    the float rounding of the GPU's kernels (PyTorch's default TF32 convolutions in the patch embedding included)."""
    set_dir = tmp_path / "set"
    run_generate(load_config(GenerateConfig, "generate/tiny", [
        "generator.device=cpu", "data.name=folder", f"data.root={folder_data}", "per_class=6", "generator.steps=2",
        f"out_dir={set_dir}", "progress=false"]))
    clip = tiny_clip(tmp_path / "clip")
    common = [f"clip.model={clip}", "keep.fraction=0.5", "batch_size=5", "progress=false"]
    run_filter(load_config(FilterConfig, "filter/clip", [f"set_dir={set_dir}", "device=cpu", "name=cpu", *common]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "synthtl", "filter", str(set_dir), "-c", "filter/clip", "device=cuda",
                           "name=cuda", *common], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu, cuda = (sorted(read_jsonl(set_dir / "filters" / n / "scores.jsonl"), key=lambda d: d["id"])
                 for n in ("cpu", "cuda"))
    assert [d["id"] for d in cpu] == [d["id"] for d in cuda] and len(cpu) == 18
    assert cuda[0]["gpu_seconds"] > 0 and cpu[0]["gpu_seconds"] == 0  # each row's cost share, on the GPU or not
    a, b = np.array([d["score"] for d in cpu]), np.array([d["score"] for d in cuda])
    assert np.all((a > 0) & (a < 1)) and a.std() > 0  # probabilities that differ between images
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-3)
