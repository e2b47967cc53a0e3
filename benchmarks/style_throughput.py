"""Textual-inversion training steps/s and peak memory: synthtl's loop beside a reference loop, same batch, one run.

    python benchmarks/style_throughput.py                       # on a GPU: SD v1.5 architecture, 512 px, batch 4
    python benchmarks/style_throughput.py --tiny --steps 5      # CPU smoke test

Reference = what diffusers' textual-inversion example does per step: VAE-encode the batch, the whole text encoder
in fp32 with AdamW over the full embedding matrix (all other rows restored after the step), frozen fp16 UNet/VAE
under autocast. Ours = synthtl's loop: latents cached once (random here: the cache is built before training), frozen
models in bf16, only the new token's vectors as an fp32 parameter written in by a hook. Both get their inputs
already on the device, so the ratio is the training step itself. Weights are random (same FLOPs, no download).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthtl.config import StyleConfig, load_config  # noqa: E402
from synthtl.generation.pipeline import sd15_components, tiny_components  # noqa: E402
from synthtl.runtime import resolve_runtime  # noqa: E402
from synthtl.style.inversion import InversionRecipe, add_tokens, install_hook  # noqa: E402
from synthtl.style.recipe import MicroBatch  # noqa: E402


def components(tiny: bool, device: torch.device):
    if tiny:
        return tiny_components(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        return sd15_components(torch.float32)


def timed(step_fn, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    for _ in range(warmup):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return steps / (time.perf_counter() - t0), mem


def reference(args, device) -> tuple[float, float]:
    from diffusers import DDPMScheduler

    c = components(args.tiny, device)
    half = torch.float16 if device.type == "cuda" else torch.float32
    tok, te, vae, unet = c["tokenizer"], c["text_encoder"], c["vae"], c["unet"]
    tok.add_tokens(["<ref-style>"])
    te.resize_token_embeddings(len(tok))
    vae.to(device, half).requires_grad_(False)
    unet.to(device, half).requires_grad_(False)
    te.to(device, torch.float32)
    te.requires_grad_(False)
    te.get_input_embeddings().weight.requires_grad_(True)  # the example trains the whole token-embedding matrix
    orig = te.get_input_embeddings().weight.detach().clone()
    new_id = tok.convert_tokens_to_ids("<ref-style>")
    keep = torch.ones(len(tok), dtype=torch.bool)
    keep[new_id] = False
    opt = torch.optim.AdamW(te.get_input_embeddings().parameters(), lr=5e-3, weight_decay=1e-2)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pixels = torch.randn(args.batch, 3, args.res, args.res, device=device, dtype=half)
    ids = tok(["a pug photo in the style of <ref-style>."] * args.batch, padding="max_length", truncation=True,
              max_length=tok.model_max_length, return_tensors="pt").input_ids.to(device)

    def step():
        with torch.autocast(device.type, dtype=half, enabled=device.type == "cuda"):
            lat = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(lat)
            t = torch.randint(0, 1000, (args.batch,), device=device)
            ehs = te(ids)[0].to(half)
            pred = unet(sched.add_noise(lat, noise, t), t, ehs).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            te.get_input_embeddings().weight[keep] = orig[keep]

    return timed(step, args.steps, args.warmup, device)


def ours(args, device) -> tuple[float, float]:
    from diffusers import DDPMScheduler

    rt = resolve_runtime("cuda" if device.type == "cuda" else "cpu",
                         ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32")
    c = components(args.tiny, device)
    for m in (c["unet"], c["vae"], c["text_encoder"]):
        m.to(device, rt.dtype).requires_grad_(False)
    if device.type == "cuda":
        c["unet"].to(memory_format=torch.channels_last)

    class Pipe:
        unet, vae, text_encoder, tokenizer = c["unet"], c["vae"], c["text_encoder"], c["tokenizer"]

    cfg = load_config(StyleConfig, None, [f"batch_size={args.batch}", f"resolution={args.res}"])
    r = InversionRecipe(cfg, Path(tempfile.mkdtemp(prefix="synthtl_style_")))
    r.rt, r.pipe, r.sdxl = rt, Pipe, False
    r.noise_sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    r.scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None
    r.inv = add_tokens(Pipe, cfg, 1, device)
    install_hook(Pipe.text_encoder, r.inv)
    r.opt = torch.optim.AdamW([{"params": [p]} for p in r.inv.learned], lr=5e-3, weight_decay=1e-2)
    cached = torch.randn(args.batch, 4, args.res // 8, args.res // 8, device=device, dtype=rt.dtype)
    prompts = [f"a pug photo in the style of {cfg.token}."] * args.batch

    def step():  # synthtl's step: tokenize, encode (the hook writes the token), denoise, the loss, AdamW
        noise = torch.randn_like(cached)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        r.step(0, [MicroBatch(cached, noise, t, prompts)])

    return timed(step, args.steps, args.warmup, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (benchmarks/gpu_check.sh)")
    args = ap.parse_args()
    if args.tiny:
        args.res = 32
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; {'tiny' if args.tiny else 'SD v1.5 architecture'} at {args.res} px, batch {args.batch}")
    ref_rate, ref_mem = reference(args, device)
    print(f"  reference {ref_rate:6.2f} steps/s, peak {ref_mem:.1f} GiB")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    our_rate, our_mem = ours(args, device)
    print(f"  ours      {our_rate:6.2f} steps/s, peak {our_mem:.1f} GiB")
    print(f"ours / reference = {our_rate / ref_rate:.2f}x steps/s")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "device": name, "command": " ".join(sys.argv[1:]), "reference": ref_rate, "ours": our_rate,
            "reference_gib": ref_mem, "ours_gib": our_mem}, indent=1))


if __name__ == "__main__":
    main()
