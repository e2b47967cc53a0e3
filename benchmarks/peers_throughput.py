"""Speed of the peers' features (ours, beyond the paper) through synthtl's own entry points, one run, side by side.

    python benchmarks/peers_throughput.py                        # on a GPU: all three parts, full-size architectures
    python benchmarks/peers_throughput.py --parts img2img,lora   # some parts (filter, img2img, lora)
    python benchmarks/peers_throughput.py --tiny                 # CPU smoke test: tiny models, 32 px (~30 s)

1. filter: images/s of `synthtl filter SET -c filter/clip keep.fraction=0.8` (`run_filter`) over a finished set of
   --filter-images 512-px JPEGs written by `synthtl generate` (1 denoising step, no guidance: only the files matter).
   The CLIP is ViT-B/32 (transformers' `CLIPConfig()` defaults, random weights) saved with OpenAI CLIP's
   preprocessing (`CLIPImageProcessor()` defaults) and synthtl's tiny tokenizer to a folder that `clip.model=<folder>`
   loads; the prompts are encoded once per run, so the tokenizer does not move images/s. Two figures: filter.json's
   (model load and weight hashing included, as the report's cost table counts it) and the steady rate of the batches
   after the first (from the filter's cost.jsonl).
2. img2img: images/s of `synthtl generate -c generate/img2img` (strength 0.5: 12 of the 25 DPM-Solver++ steps run)
   beside text-to-image `-c generate/sd15` at the same steps, batch and guidance, 512 px: the figure
   `synthtl generate` prints (denoising, decoding and JPEG writes; set-up excluded), after a one-batch warm-up run
   of each mode. Sources: photo-sized JPEGs of a class-per-folder dataset.
3. lora: steps/s and peak memory of `synthtl learn-style -c style/lora` (rank 16) beside `-c style/dsi` (textual
   inversion), 512 px, batch 4, after a short warm-up run of each: style.json's steps / train_seconds and
   peak_memory_mb (the whole run's peak: latent cache and training). Also counts the LoRA matrices the run moved.

SD v1.5 architecture with random weights: the one substitution is that `generator.model=tiny` builds SD v1.5's
UNet, VAE and text encoder (`sd15_components`, synthtl's tiny tokenizer padded to 77) directly on the device in the
runtime's dtype instead of the tiny pipeline, so every command runs whole without a 4 GB weights folder (same
FLOPs; `--tiny` keeps the real tiny pipeline). SDXL is not measured: synthtl holds no full-size SDXL config offline
(only the tiny test one in generation/families.py), and this benchmark does not invent one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthtl.config import FilterConfig, GenerateConfig, StyleConfig, load_config  # noqa: E402
from synthtl.generation.pipeline import generator_runtime, sd15_components  # noqa: E402
from synthtl.generation.run import run_generate  # noqa: E402
from synthtl.style.recipe import style_runtime  # noqa: E402
from synthtl.style.train import run_learn_style  # noqa: E402

CLASSES = ("boeing_737", "airbus_a320", "cessna_172", "spitfire", "dc_3", "atr_72", "fokker_100", "f_16")
SDXL_NOTE = ("not measured: synthtl has no full-size SDXL config offline (only the tiny test one), and this benchmark "
             "does not invent one")


def make_folder(root: Path, classes: int, train: int, size: tuple[int, int]) -> Path:
    """A class-per-folder dataset of smooth random photo-sized JPEGs (a class colour each): `train` + 2 test each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", 2)):
        for c, name in enumerate(CLASSES[:classes]):
            for i in range(n):
                small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                small[..., c % 3] = 200
                path = root / split / name / f"{i:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return root


@contextlib.contextmanager
def sd15_as_tiny(device: torch.device, dtype: torch.dtype):
    """While open, `generator.model=tiny` builds SD v1.5's architecture (random weights) on `device` in `dtype`.

    Built in the target dtype (no fp32 copy), so a run's peak memory is its own; the identity label is fixed instead
    of hashing 1B random weights.
    """
    from synthtl.generation import pipeline

    saved = pipeline.tiny_components, pipeline.tiny_revision

    def build(seed: int = 0) -> dict:
        torch.manual_seed(seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
                return sd15_components(dtype)
        finally:
            torch.set_default_dtype(default)

    pipeline.tiny_components = build
    pipeline.tiny_revision = lambda seed: "sd15-architecture-random-weights"
    try:
        yield
    finally:
        pipeline.tiny_components, pipeline.tiny_revision = saved


def free(device: torch.device) -> None:
    """Drops the previous run's models before the next one is built (and its peak is measured)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------------------------------------------------- filter
def make_clip(folder: Path, tiny: bool) -> Path:
    """A random-weight transformers CLIP + processor saved where `clip.model=<folder>` loads them."""
    from importlib import resources

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar

    tok = CLIPTokenizer.from_pretrained(str(resources.files("synthtl").joinpath("assets", "tiny_tokenizer")))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if tiny:
        config = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37,
                                         "num_hidden_layers": 2, "num_attention_heads": 2,
                                         "max_position_embeddings": 77, **ids},
                            vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                            projection_dim=16)
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        config = CLIPConfig(text_config=ids)  # ViT-B/32: the defaults are openai/clip-vit-base-patch32's
        processor = CLIPImageProcessor()  # its defaults are OpenAI CLIP's resize, crop and mean/std
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def bench_filter(args, work: Path, data: Path, device: torch.device) -> dict:
    from synthtl.filtering import store
    from synthtl.filtering.run import run_filter

    classes = 8 if not args.tiny else 4
    per_class = max(1, args.filter_images // classes)
    set_dir = work / "filter_set"
    gen = [f"generator.height={args.res}", f"generator.width={args.res}", "generator.steps=1", "generator.guidance=1.0",
           "generator.model=tiny", "data.name=folder", f"data.root={data}", f"data.cache_dir={work / 'cache'}",
           f"per_class={per_class}", f"out_dir={set_dir}", "progress=false"]
    t0 = time.perf_counter()
    if args.tiny:
        run_generate(load_config(GenerateConfig, "generate/sd15", gen))
    else:
        with sd15_as_tiny(device, generator_runtime(load_config(GenerateConfig, None, []).generator).dtype):
            run_generate(load_config(GenerateConfig, "generate/sd15", gen))
    free(device)
    files = sorted((set_dir / "images").rglob("*.jpg"))
    kb = np.mean([p.stat().st_size for p in files]) / 1024
    print(f"  filter set: {len(files)} JPEGs of {args.res} px, {kb:.0f} KB each on average "
          f"({time.perf_counter() - t0:.1f} s to make)")
    clip = make_clip(work / "clip", args.tiny)
    cfg = load_config(FilterConfig, "filter/clip", [f"set_dir={set_dir}", f"clip.model={clip}", "keep.fraction=0.8",
                                                    "progress=false", f"batch_size={args.filter_batch}"])
    t0 = time.perf_counter()
    summary = run_filter(cfg)
    wall = time.perf_counter() - t0
    rows = list(store.read_scores(store.filter_dir(set_dir, summary["name"])).values())  # in scoring order
    later = rows[cfg.batch_size:]  # the first batch also loads the model and hashes its weights
    seconds = sum(r["seconds"] for r in later)
    steady = len(later) / seconds if seconds else float("nan")
    out = {"images": summary["scored"], "jpeg_kb": kb, "batch": cfg.batch_size, "steady": steady, "wall_s": wall,
           "with_load": len(rows) / sum(r["seconds"] for r in rows), "device": str(device)}
    print(f"  filter: {out['with_load']:.1f} img/s with model load ({wall:.1f} s wall), {steady:.1f} img/s steady "
          f"(after the first batch of {cfg.batch_size}), on {out['device']}")
    return out


# --------------------------------------------------------------------------------------------------------- img2img
def bench_img2img(args, work: Path, data: Path, device: torch.device) -> dict:
    classes = 8 if not args.tiny else 4

    def cfg(preset: str, images: int, out: str) -> GenerateConfig:
        return load_config(GenerateConfig, preset, [
            "generator.model=tiny", f"generator.height={args.res}", f"generator.width={args.res}",
            f"generator.steps={args.steps}", f"generator.batch_size={args.batch}", "data.name=folder",
            f"data.root={data}", f"data.cache_dir={work / 'cache'}", f"per_class={max(1, images // classes)}",
            f"out_dir={work / out}", "progress=false"])

    dtype = generator_runtime(cfg("generate/sd15", 1, "x").generator).dtype
    out = {}
    patch = contextlib.nullcontext() if args.tiny else sd15_as_tiny(device, dtype)
    with patch:
        for mode, preset in (("txt2img", "generate/sd15"), ("img2img", "generate/img2img")):
            run_generate(cfg(preset, args.batch, f"{mode}_warm"))  # cuDNN autotuning, the VAE encoder's first call
            free(device)
            s = run_generate(cfg(preset, args.images, mode))
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            out[mode] = {"images_per_s": s["images_per_s"], "images": s["generated"], "peak_gib": peak}
            if s["redraws"]:  # black or non-finite outputs redrawn: the rate counts their extra denoising
                print(f"  {mode}: {s['redraws']} images redrawn (black or non-finite outputs)")
            free(device)
    strength = cfg("generate/img2img", 1, "x").img2img.strength
    out.update(steps=args.steps, strength=strength, batch=args.batch, dtype=str(dtype).replace("torch.", ""))
    ratio = out["img2img"]["images_per_s"] / out["txt2img"]["images_per_s"]
    mem = "" if device.type != "cuda" else \
        f", peak {out['img2img']['peak_gib']:.1f} / {out['txt2img']['peak_gib']:.1f} GiB"
    print(f"  img2img (strength {strength}) {out['img2img']['images_per_s']:.2f} img/s, text-to-image "
          f"{out['txt2img']['images_per_s']:.2f} img/s: {ratio:.2f}x ({args.steps} steps, batch {args.batch}, "
          f"{out['dtype']}{mem})")
    return out


# ------------------------------------------------------------------------------------------------------------ lora
def lora_moved(folder: Path) -> tuple[int, int]:
    """(LoRA B matrices the run moved away from their zero start, all of them) in the saved weights file."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    b = [t for k, t in state.items() if ".lora_B." in k]
    return sum(int(bool(t.abs().sum() > 0)) for t in b), len(b)


def bench_lora(args, work: Path, data: Path, device: torch.device) -> dict:
    def cfg(preset: str, steps: int, out: str) -> StyleConfig:
        return load_config(StyleConfig, preset, [
            "generator.model=tiny", "data.name=folder", f"data.root={data}", f"data.cache_dir={work / 'cache'}",
            f"resolution={args.res}", f"batch_size={args.style_batch}", f"steps={steps}", "images_per_class=4",
            "validate_every=0", "validation_classes=1", "validation_images=1", "validation_steps=1",
            "checkpoint_every=100000", "progress=false", f"out_dir={work / out}"])

    dtype = style_runtime(cfg("style/lora", 1, "x")).dtype
    out = {}
    patch = contextlib.nullcontext() if args.tiny else sd15_as_tiny(device, dtype)
    with patch:
        for method, preset in (("lora", "style/lora"), ("inversion", "style/dsi")):
            run_learn_style(cfg(preset, args.style_warmup, f"{method}_warm"))
            free(device)
            info = run_learn_style(cfg(preset, args.style_steps, method))
            out[method] = {"steps_per_s": info["steps"] / info["train_seconds"], "steps": info["steps"],
                           "peak_gib": info["peak_memory_mb"] / 1024 if device.type == "cuda" else float("nan")}
            if method == "lora":
                out[method]["moved"], out[method]["matrices"] = lora_moved(work / method)
                out[method]["rank"] = info["rank"]
            free(device)
    out.update(batch=args.style_batch, res=args.res, dtype=str(dtype).replace("torch.", ""))
    lo, ti = out["lora"], out["inversion"]
    mem = "" if device.type != "cuda" else f", peak {lo['peak_gib']:.1f} / {ti['peak_gib']:.1f} GiB"
    print(f"  LoRA (rank {lo['rank']}) {lo['steps_per_s']:.2f} steps/s, textual inversion {ti['steps_per_s']:.2f} "
          f"steps/s: {lo['steps_per_s'] / ti['steps_per_s']:.2f}x{mem}; LoRA matrices moved by training: "
          f"{lo['moved']} of {lo['matrices']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random models at 32 px (CPU smoke test)")
    ap.add_argument("--parts", default="filter,img2img,lora", help="comma-separated: filter, img2img, lora")
    ap.add_argument("--filter-images", type=int, help="images of the set the filter scores (512; --tiny 48)")
    ap.add_argument("--filter-batch", type=int, help="the filter's batch_size (filter/clip's 64; --tiny 8)")
    ap.add_argument("--images", type=int, help="timed images per generation mode (64; --tiny 16)")
    ap.add_argument("--batch", type=int, help="generator.batch_size (generate/sd15's 16; --tiny 8)")
    ap.add_argument("--steps", type=int, help="generator.steps (generate/sd15's 25; --tiny 4)")
    ap.add_argument("--style-steps", type=int, help="timed learn-style steps per method (20; --tiny 4)")
    ap.add_argument("--style-warmup", type=int, help="steps of the warm-up learn-style run per method (3; --tiny 1)")
    ap.add_argument("--style-batch", type=int, default=4)
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (benchmarks/gpu_check.sh)")
    args = ap.parse_args()
    for key, full, tiny in (("filter_images", 512, 48), ("filter_batch", 64, 8), ("images", 64, 16), ("batch", 16, 8),
                            ("steps", 25, 4), ("style_steps", 20, 4), ("style_warmup", 3, 1)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"filter", "img2img", "lora"})
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose among filter, img2img, lora")
    args.res = 32 if args.tiny else 512
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; {'tiny models' if args.tiny else 'SD v1.5 / CLIP ViT-B/32 architectures'} at "
          f"{args.res} px; SDXL {SDXL_NOTE}")
    work = Path(tempfile.mkdtemp(prefix="synthtl_peersbench_"))
    try:
        data = make_folder(work / "data", 8 if not args.tiny else 4, 6, (640, 480) if not args.tiny else (64, 48))
        result = {"device": name, "command": " ".join(sys.argv[1:]), "sdxl": SDXL_NOTE}
        for part, fn in (("filter", bench_filter), ("img2img", bench_img2img), ("lora", bench_lora)):
            if part in parts:
                t0 = time.perf_counter()
                result[part] = fn(args, work, data, device)
                print(f"  ({part}: {time.perf_counter() - t0:.1f} s in all)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
