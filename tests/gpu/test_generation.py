"""Generation on CUDA: the speed settings change no image, a real out-of-memory halves the batch and goes on, and
`torchrun --nproc-per-node 1` generates a complete set."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthtl.config import GenerateConfig, GeneratorConfig, load_config
from synthtl.data.genset import MANIFEST
from synthtl.files import read_jsonl
from synthtl.generation.pipeline import optimize, tiny_components
from synthtl.generation.run import run_generate
from synthtl.runtime import resolve_runtime
from tests.gpu.conftest import needs_cuda, plain_pipeline, sd15_on_gpu

pytestmark = needs_cuda

PROMPTS = ["a good photo of the Boeing 737-800.", "a good photo of the Cessna 172."]


def images(pipe, size: int, steps: int) -> np.ndarray:
    gens = [torch.Generator("cpu").manual_seed(i) for i in range(len(PROMPTS))]
    with torch.inference_mode():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=2.0, height=size, width=size, generator=gens,
                    output_type="np").images


def unet_out(pipe, size: int) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(0)
    lat = torch.randn(2, 4, size // 8, size // 8, generator=g).to("cuda", pipe.unet.dtype)
    ctx = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        return pipe.unet(lat, 500, encoder_hidden_states=ctx.to("cuda", pipe.unet.dtype)).sample.float()


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert diff.mean() < 0.02 and (diff > 0.1).mean() < 0.01, (diff.mean(), (diff > 0.1).mean())


def test_fused_qkv_and_channels_last_match_plain_diffusers_on_sd15():
    pipe = plain_pipeline(sd15_on_gpu(torch.float16))
    ref_unet, ref = unet_out(pipe, 256), images(pipe, 256, 4)
    gen = GeneratorConfig(fuse_qkv=True, channels_last=True, compile=False)
    optimize(pipe, gen, resolve_runtime("cuda", "fp16"))
    assert any(type(p).__name__.startswith("Fused") for p in pipe.unet.attn_processors.values())
    out = unet_out(pipe, 256)
    assert torch.linalg.vector_norm(out - ref_unet) < 1e-2 * torch.linalg.vector_norm(ref_unet)
    assert_same_images(images(pipe, 256, 4), ref)


def test_compiled_unet_matches_plain_diffusers():
    # The tiny pipeline: compiling SD v1.5's UNet takes minutes; the wrapper path is the same.
    pipe = plain_pipeline(tiny_components(0))
    pipe.to("cuda")
    ref = images(pipe, 64, 4)
    optimize(pipe, GeneratorConfig(fuse_qkv=True, channels_last=True, compile=True), resolve_runtime("cuda", "fp32"))
    assert hasattr(pipe.unet, "_orig_mod")  # really compiled
    assert_same_images(images(pipe, 64, 4), ref)


def gen_cfg(data: Path, out: Path, *extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, ["generator.model=tiny", "generator.height=512", "generator.width=512",
                                              "generator.steps=2", "generator.device=cuda", "data.name=folder",
                                              f"data.root={data}", "per_class=4", f"out_dir={out}", "progress=false",
                                              "image_format=png", "train_copy=0", *extra])


def test_real_out_of_memory_halves_the_batch_and_finishes(folder_data, tmp_path, capsys):
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_generate(gen_cfg(folder_data, tmp_path / "probe", "generator.batch_size=1"))
    per_image = torch.cuda.max_memory_allocated() - base  # weights + one image's activations
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    # Leave room for about 3 images: a batch of 16 cannot fit, so the run must halve (16 -> 8 -> 4 -> 2).
    filler = torch.empty(max(0, free - 3 * per_image), dtype=torch.uint8, device="cuda")
    try:
        summary = run_generate(gen_cfg(folder_data, tmp_path / "oom", "generator.batch_size=16"))
    finally:
        del filler
        torch.cuda.empty_cache()
    printed = capsys.readouterr().out
    assert "CUDA out of memory: continuing with generator.batch_size=" in printed
    assert summary["generated"] == 12 and summary["set_complete"]
    for row in read_jsonl(tmp_path / "oom" / MANIFEST):  # the same seeds give the same images
        a = np.asarray(Image.open(tmp_path / "oom" / row["path"]), dtype=np.float64) / 255
        b = np.asarray(Image.open(tmp_path / "probe" / row["path"]), dtype=np.float64) / 255
        assert_same_images(a, b)


def test_torchrun_one_process_generates_the_whole_set(folder_data, tmp_path):
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "synthtl",
           "generate", "generator.model=tiny", "generator.height=64", "generator.width=64", "generator.steps=2",
           "data.name=folder", f"data.root={folder_data}", "per_class=2", f"out_dir={out}", "progress=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_jsonl(out / MANIFEST)
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    assert all((out / r["path"]).is_file() for r in rows)
    assert list((out / "progress").glob("shard-0000-of-0001*"))  # RANK 0 of WORLD_SIZE 1 from torchrun
