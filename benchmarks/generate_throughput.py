"""Images/s of synthtl's generator beside a plain diffusers pipeline call, on the full-size SD v1.5 architecture.

    python benchmarks/generate_throughput.py                      # on a GPU: 512 px, 25 steps, guidance 2.0
    python benchmarks/generate_throughput.py --tiny --steps 4     # CPU smoke test with the tiny pipeline

The UNet, VAE and text encoder are built from SD v1.5's published configs with random weights (identical FLOPs,
no download). (a) plain: `pipe(prompts, ...)` in fp16 (SDPA attention, diffusers defaults) returning PIL images
that are then saved as JPEG one by one, at its best batch size from --plain-batches; (b) ours: synthtl's
generation loop (prompts of different classes in one batch, fused q/k/v, channels_last, optional torch.compile,
JPEG encoding and atomic writes overlapped with the next batch's denoising). Both in the same run. FLOPs per image
are counted with torch.utils.flop_counter and turned into a fraction of the GPU's dense fp16/bf16 peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthtl.config import GenerateConfig, load_config  # noqa: E402
from synthtl.data import genset  # noqa: E402
from synthtl.data.genset import PROGRESS_DIR  # noqa: E402
from synthtl.generation import run as gen_run  # noqa: E402
from synthtl.generation.pipeline import optimize, sd15_components, tiny_components  # noqa: E402
from synthtl.generation.prompts import template_set  # noqa: E402
from synthtl.runtime import dtype_name, resolve_runtime  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "4090": 165.0}


def peak_for(name: str, override: float) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def build(tiny: bool, dtype: torch.dtype, device: torch.device):
    from diffusers import StableDiffusionPipeline

    if tiny:
        parts = tiny_components(0)
    else:
        with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
            parts = sd15_components(dtype)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flops_per_image(pipe, args, device) -> float:
    """UNet (batch of 2 for classifier-free guidance) x steps + VAE decode + text encoder, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = args.height // 8, args.width // 8
    dtype = pipe.unet.dtype
    lat = torch.randn(2, 4, h, w, device=device, dtype=dtype)
    ctx = torch.randn(2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size, device=device,
                      dtype=dtype)
    ids = torch.zeros(2, pipe.tokenizer.model_max_length, dtype=torch.long, device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_fc:
            pipe.unet(lat, 10, encoder_hidden_states=ctx)
        with FlopCounterMode(display=False) as vae_fc:
            pipe.vae.decode(lat[:1])
        with FlopCounterMode(display=False) as te_fc:
            pipe.text_encoder(ids)
    cfg_factor = 1 if args.guidance <= 1 else 2
    return (unet_fc.get_total_flops() / 2 * cfg_factor * args.steps + vae_fc.get_total_flops()
            + te_fc.get_total_flops() / 2 * cfg_factor)


def prompts(n: int) -> list[str]:
    names = ["Boeing 747-400", "Airbus A320", "Cessna 172", "DC-3", "Spitfire", "F-16A/B", "ATR-72", "Fokker 100"]
    return [f"a good photo of the {names[i % len(names)]}, a type of aircraft." for i in range(n)]


def plain(pipe, args, out: Path, batch: int, device) -> float:
    n = args.images
    t0 = None
    done = 0
    for start in range(0, n + batch, batch):  # one warm-up batch first
        if start == batch:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, done = time.perf_counter(), 0
        gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(batch)]
        images = pipe(prompts(batch), num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=args.height, width=args.width, generator=gens).images
        for i, im in enumerate(images):
            im.save(out / f"{start + i:06d}.jpg", quality=95)
        done += len(images)
        if t0 is not None and done >= n:
            break
    return done / (time.perf_counter() - t0)


def ours(pipe, args, out: Path, rt) -> float:
    """synthtl's loop (`generation.run._generate`) on rows planned the way `synthtl generate` plans them (8 classes,
    prompts fitted by `_prompts_and_tokens`, plan and manifest written); the first batch is warm-up."""
    overrides = [f"generator.steps={args.steps}", f"generator.guidance={args.guidance}",
                 f"generator.height={args.height}", f"generator.width={args.width}",
                 f"generator.batch_size={args.batch}", f"generator.compile={str(args.compile).lower()}",
                 f"out_dir={out}", "progress=false", "train_copy=256", "writers=8"]
    cfg = load_config(GenerateConfig, None, overrides)
    optimize(pipe, cfg.generator, rt)
    names = ["Boeing 747-400", "Airbus A320", "Cessna 172", "DC-3", "Spitfire", "F-16A/B", "ATR-72", "Fokker 100"]
    classes = [(f"c{i}", n) for i, n in enumerate(names)]
    per_class = (args.images + args.batch) // len(classes) + 1
    templates = template_set("single")
    prompts, tokens = gen_run._prompts_and_tokens(pipe, cfg, classes, templates, {}, "")
    settings = {**gen_run.settings(cfg, classes, dtype_name(rt.dtype), templates, ""), "model": "bench",
                "revision": "random"}
    rows = genset.write_or_extend(out, settings, genset.class_table(classes, prompts, tokens), per_class)
    _, todo = gen_run.resume_todo(out, rows, per_class, 0, 1)  # by image index, then class: batches span classes
    log = out / PROGRESS_DIR / "shard-0000-of-0001.jsonl"
    gen_run._generate(pipe, rows, todo[: args.batch], out, log, cfg)
    if rt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stats = gen_run._generate(pipe, rows, todo[args.batch: args.batch + args.images], out, log, cfg)
    if rt.is_cuda:
        torch.cuda.synchronize()
    return stats["images"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random pipeline (CPU smoke test)")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--images", type=int, default=64, help="timed images per method")
    ap.add_argument("--batch", type=int, default=16, help="our batch size")
    ap.add_argument("--plain-batches", default="1,4,8,16", help="batch sizes tried for the plain pipeline")
    ap.add_argument("--compile", action="store_true", help="torch.compile our UNet")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense fp16/bf16 peak (default: from the name)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (benchmarks/gpu_check.sh)")
    args = ap.parse_args()
    if args.tiny:
        args.height = args.width = 32
    rt = resolve_runtime("auto", "fp16" if torch.cuda.is_available() else "fp32")
    name = torch.cuda.get_device_name() if rt.is_cuda else "CPU"
    pipe = build(args.tiny, rt.dtype, rt.device)
    fl = flops_per_image(pipe, args, rt.device)
    print(f"device: {name}; {'tiny' if args.tiny else 'SD v1.5 architecture'} at {args.height}x{args.width}, "
          f"{args.steps} steps, guidance {args.guidance}, {rt.dtype}; {fl / 1e12:.2f} TFLOP per image")
    work = Path(tempfile.mkdtemp(prefix="synthtl_genbench_"))
    best, best_bs = 0.0, 0
    for bs in [int(b) for b in args.plain_batches.split(",")]:
        try:
            if rt.is_cuda:
                torch.cuda.reset_peak_memory_stats()
            (work / f"plain{bs}").mkdir()
            rate = plain(pipe, args, work / f"plain{bs}", bs, rt.device)
        except torch.cuda.OutOfMemoryError:
            print(f"  plain batch {bs:>3}: out of memory")
            torch.cuda.empty_cache()
            continue
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if rt.is_cuda else ""
        print(f"  plain batch {bs:>3}: {rate:7.2f} img/s{mem}")
        if rate > best:
            best, best_bs = rate, bs
    if rt.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    rate = ours(pipe, args, work / "ours", rt)
    mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if rt.is_cuda else ""
    print(f"  ours  batch {args.batch:>3}: {rate:7.2f} img/s{mem}")
    line = f"ours / plain(best, batch {best_bs}) = {rate / best:.2f}x"
    peak = peak_for(name, args.peak_tflops)
    if peak:
        line += (f"; achieved {rate * fl / 1e12:.0f} TFLOP/s = {100 * rate * fl / 1e12 / peak:.0f}% of {peak:.0f} "
                 f"TFLOP/s peak (plain: {100 * best * fl / 1e12 / peak:.0f}%)")
    print(line)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "device": name, "command": " ".join(sys.argv[1:]), "plain": best, "plain_batch": best_bs, "ours": rate,
            "percent_of_peak": 100 * rate * fl / 1e12 / peak if peak else None}, indent=1))


if __name__ == "__main__":
    main()
