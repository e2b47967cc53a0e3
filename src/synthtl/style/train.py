"""`synthtl learn-style`: Dataset Style Inversion (one token S* for a dataset) or per-class textual inversion.

Paper (METHOD.md, point 5): one pseudo-token for the whole dataset, learned from its real training images with
prompts that name each image's class ("a {class} photo in the style of S*"), ~20k steps. Ours: per-class mode
(one token per class, same prompts: a clean comparison), VAE latents cached once (with flipped variants), the
frozen models in bf16/fp16 on GPU, the learned vectors as a separate fp32 parameter written into the text
encoder's embedding output by a hook, so no other embedding row can change.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from synthtl.config import StyleConfig, config_hash, to_dict, to_yaml
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.data.splits import fewshot_indices, read_split, write_split
from synthtl.errors import BadImageError, ConfigError, DataError
from synthtl.files import read_json, save_torch, write_bytes, write_json, write_text
from synthtl.runtime import Runtime, derive_seed, is_main, resolve_runtime
from synthtl.style.embeddings import EMBEDS, STYLE_JSON

CHECKPOINT = "checkpoint.pt"
DEFAULT_TEMPLATES = [  # ours: each names the image's class, as the paper's DSI prompt does
    "a {} photo in the style of {token}.",
    "a photo of a {} in the style of {token}.",
    "a rendition of a {} in the style of {token}.",
    "a picture of a {} in the style of {token}.",
    "a cropped photo of a {} in the style of {token}.",
    "a close-up photo of a {} in the style of {token}.",
]


def style_runtime(cfg: StyleConfig) -> Runtime:
    """Frozen models in bf16 on GPU (fp16 where bf16 is missing), fp32 on CPU; the learned vectors stay fp32."""
    precision = cfg.generator.dtype
    if precision == "auto":
        rt = resolve_runtime(cfg.generator.device)
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if rt.is_cuda else "fp32"
    return resolve_runtime(cfg.generator.device, precision)


def class_token(base: str, index: int) -> str:
    return f"{base[:-1]}-{index}>" if base.endswith(">") else f"{base}-{index}"


@dataclass
class Inversion:
    """The learnable state: new tokens (each with `vectors` sub-tokens) and their fp32 vectors."""

    tokens: list[str]  # one per class (class mode) or one (dataset mode)
    sub_tokens: list[list[str]]  # the tokenizer entries of each token: [S*, S*_1, ...]
    ids: torch.Tensor  # tokenizer ids of every sub-token, flattened
    learned: torch.nn.Parameter  # (len(ids), dim) float32
    row_of: dict[int, int] = field(default_factory=dict)  # token id -> row of `learned`

    def prompt_token(self, t: int) -> str:
        """What a prompt contains for token t: every sub-token, as diffusers' multi-vector convention does."""
        return " ".join(self.sub_tokens[t])

    def state(self) -> dict[str, torch.Tensor]:
        """{token: (vectors, dim)}: the learned_embeds.safetensors layout."""
        out, k = {}, 0
        for tok, subs in zip(self.tokens, self.sub_tokens, strict=True):
            out[tok] = self.learned[k:k + len(subs)].detach().float().cpu().clone()
            k += len(subs)
        return out


def add_tokens(tokenizer, text_encoder, cfg: StyleConfig, num_classes: int, device: torch.device) -> Inversion:
    """Adds the new tokens to the tokenizer and embedding table; the learned vectors start from the initializer.

    Raises:
        ConfigError: a token already in the tokenizer, or an initializer that is not exactly one token.
    """
    init_ids = tokenizer.encode(cfg.initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ConfigError(f"initializer={cfg.initializer!r} is {len(init_ids)} tokens for this tokenizer; choose a "
                          "word that is a single token (e.g. photo, style, painting)")
    tokens = [cfg.token] if cfg.mode == "dataset" else [class_token(cfg.token, c) for c in range(num_classes)]
    text_encoder.requires_grad_(False)  # only the separate fp32 vectors learn
    vocab = tokenizer.get_vocab()
    sub_tokens = [[t] + [f"{t}_{i}" for i in range(1, cfg.vectors)] for t in tokens]
    # "photo" is stored as "photo</w>" in CLIP's vocabulary: adding it would silently re-map that word everywhere.
    clash = [s for subs in sub_tokens for s in subs if s in vocab or f"{s.lower()}</w>" in vocab]
    if clash:
        raise ConfigError(f"token {clash[0]!r} is already in the tokenizer; pick another style.token (e.g. "
                          "<my-dataset-style>)")
    flat = [s for subs in sub_tokens for s in subs]
    tokenizer.add_tokens(flat)
    try:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    except TypeError:  # transformers < 4.46
        text_encoder.resize_token_embeddings(len(tokenizer))
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(flat))
    table = text_encoder.get_input_embeddings().weight
    init = table[init_ids[0]].detach().float().clone()
    with torch.no_grad():
        table[ids] = init.to(table.dtype)  # the table rows are never read: the hook replaces them
    learned = torch.nn.Parameter(init.repeat(len(flat), 1).to(device))
    return Inversion(tokens, sub_tokens, ids.to(device), learned, {int(i): r for r, i in enumerate(ids.tolist())})


def install_hook(text_encoder, inv: Inversion):
    """Makes the embedding layer output the fp32 learned vectors (cast) at the new tokens' positions."""
    lookup = torch.full((len(text_encoder.get_input_embeddings().weight),), -1, dtype=torch.long,
                        device=inv.ids.device)
    lookup[inv.ids] = torch.arange(len(inv.ids), device=inv.ids.device)

    def hook(module, inputs, output):
        ids = inputs[0]
        rows = lookup.to(ids.device)[ids]
        mask = rows >= 0
        if not mask.any():
            return output
        out = output.clone()
        out[mask] = inv.learned[rows[mask]].to(out.dtype)
        return out

    return text_encoder.get_input_embeddings().register_forward_hook(hook)


# -------------------------------------------------------------------------------------------------------------- data
def training_images(cfg: StyleConfig, out: Path) -> ImageList:
    """The real training images (train split, or its few-shot subset): never a test image."""
    d = cfg.data
    images = load_data(d, "train")
    seed = d.split_seed if d.split_seed >= 0 else cfg.seed
    if d.split_file:
        idx = read_split(d.split_file, images)
    elif d.shots:
        idx = fewshot_indices(images, d.shots, seed)[0]
    else:
        idx = list(range(len(images)))
    if cfg.images_per_class:
        rng = np.random.default_rng(derive_seed(seed, "style-images") % 2**32)
        keep = []
        for cls in images.subset(idx).by_class():
            keep += sorted(rng.permutation(cls)[: cfg.images_per_class].tolist())
        idx = [idx[i] for i in sorted(keep)]
    if not idx:
        raise DataError(f"dataset {d.name!r} has no images in the chosen training split; nothing to learn a style from")
    write_split(out / "splits" / "train.json", images, idx, kind="style-train", shots=d.shots, seed=seed)
    return images.subset(idx)


def _square(img: Image.Image, size: int, center: bool) -> Image.Image:
    """Short side to `size`; with `center`, also the centre square."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    if center:
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


@torch.inference_mode()
def cache_latents(vae, images: ImageList, cfg: StyleConfig, rt: Runtime) -> tuple[list, list[int], int]:
    """VAE latent means of every image (and of its mirror image), computed once; returns (latents, labels, skipped).

    latents[i] is a (variants, 4, h, w) tensor on CPU in the frozen models' dtype.
    """
    out, labels, skipped = [], [], 0
    bar = tqdm(total=len(images), desc="encode", unit="img", disable=not (cfg.progress and is_main()))
    for i in range(len(images)):
        bar.update()
        try:
            img = _square(load_rgb(images.path(i)), cfg.resolution, cfg.crop == "center")
        except BadImageError:
            if cfg.data.on_bad_image == "skip":
                skipped += 1
                continue
            raise
        variants = [img] + ([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if cfg.random_flip else [])
        x = torch.stack([torch.from_numpy(np.asarray(v, dtype=np.float32)).permute(2, 0, 1) for v in variants])
        x = (x / 127.5 - 1).to(rt.device, vae.dtype)
        with rt.autocast():
            lat = vae.encode(x).latent_dist.mean
        out.append(lat.to("cpu", vae.dtype))
        labels.append(images.labels[i])
    bar.close()
    if not out:
        raise DataError("none of the training images could be read")
    return out, labels, skipped


def by_class_index(labels: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        out.setdefault(y, []).append(i)
    return out


def sample_batch(latents: list, by_class: dict[int, list[int]], cfg: StyleConfig, size: int,
                 g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """A class-balanced batch: a class uniformly at random, then one of its images, a flip and a crop."""
    present = sorted(by_class)
    batch, ys = [], []
    for _ in range(cfg.batch_size):
        y = present[int(torch.randint(len(present), (1,), generator=g))]
        i = by_class[y][int(torch.randint(len(by_class[y]), (1,), generator=g))]
        lat = latents[i]
        v = int(torch.randint(len(lat), (1,), generator=g))
        z = lat[v]
        h, w = z.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g)) if h > size else 0
        left = int(torch.randint(w - size + 1, (1,), generator=g)) if w > size else 0
        batch.append(z[:, top:top + size, left:left + size])
        ys.append(y)
    return torch.stack(batch), ys


# -------------------------------------------------------------------------------------------------------------- run
def freeze(pipe):
    """UNet, VAE and text encoder frozen and in eval mode (their activations still carry gradients to the tokens)."""
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
        m.eval()
    return pipe


def _components(cfg: StyleConfig, rt: Runtime):
    from diffusers import DDPMScheduler

    from synthtl.generation.pipeline import load_pipeline

    pipe = freeze(load_pipeline(cfg.generator, rt))
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return pipe, DDPMScheduler.from_config(pipe.scheduler.config)


def diffusion_loss(pipe, noise_sched, lat: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   rt: Runtime) -> torch.Tensor:
    """The denoising loss of latents `lat` (already scaled) conditioned on token ids."""
    with rt.autocast():
        ehs = pipe.text_encoder(ids)[0]
        noisy = noise_sched.add_noise(lat, noise, t)
        pred = pipe.unet(noisy, t, ehs).sample
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    target = noise_sched.get_velocity(lat, noise, t) if v_pred else noise
    return F.mse_loss(pred.float(), target.float())


def _prompts(cfg: StyleConfig, inv: Inversion, names: tuple[str, ...], ys: list[int], g: torch.Generator) -> list[str]:
    templates = cfg.templates or DEFAULT_TEMPLATES
    out = []
    for y in ys:
        t = templates[int(torch.randint(len(templates), (1,), generator=g))]
        token = inv.prompt_token(0 if cfg.mode == "dataset" else y)
        out.append(t.replace("{token}", token).replace("{}", names[y]))
    return out


def _validation_grid(pipe, inv: Inversion, cfg: StyleConfig, names: tuple[str, ...], path: Path) -> None:
    """A grid: one row per validation class, fixed seeds, the current embedding."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    val = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                  unet=pipe.unet, scheduler=DPMSolverMultistepScheduler.from_config(
                                      pipe.scheduler.config), safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    val.set_progress_bar_config(disable=True)
    template = (cfg.templates or DEFAULT_TEMPLATES)[0]
    rows = []
    for c in range(min(cfg.validation_classes, len(names))):
        token = inv.prompt_token(0 if cfg.mode == "dataset" else c)
        prompt = template.replace("{token}", token).replace("{}", names[c])
        gens = [torch.Generator("cpu").manual_seed(cfg.seed + k) for k in range(cfg.validation_images)]
        with torch.inference_mode():
            imgs = val([prompt] * cfg.validation_images, num_inference_steps=cfg.validation_steps,
                       guidance_scale=cfg.generator.guidance, height=cfg.resolution, width=cfg.resolution,
                       generator=gens).images
        rows.append(imgs)
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, imgs in enumerate(rows):
        for k, im in enumerate(imgs):
            sheet.paste(im, (k * w, r * h))
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One (loss-scaled, for fp16) optimizer step, then clear the gradients."""
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def _peak_memory_mb(rt: Runtime) -> float:
    if rt.is_cuda:
        return torch.cuda.max_memory_allocated(rt.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_learn_style(cfg: StyleConfig) -> dict:
    """Learns (or resumes, or skips if finished) a style embedding; returns style.json's content."""
    out = Path(cfg.out_dir)
    identity = config_hash(cfg, ("progress", "out_dir", "checkpoint_every", "validate_every"))
    if (out / STYLE_JSON).is_file() and (out / EMBEDS).is_file():
        done = read_json(out / STYLE_JSON)
        if done.get("config_hash") != identity:
            raise ConfigError(f"{out} holds a style learned with another config; use another out_dir")
        if is_main():
            print(f"[synthtl] {out} is already finished; nothing to do")
        return done
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", to_yaml(cfg))
    t_start = time.perf_counter()
    rt = style_runtime(cfg)
    pipe, noise_sched = _components(cfg, rt)
    images = training_images(cfg, out)
    inv = add_tokens(pipe.tokenizer, pipe.text_encoder, cfg, images.num_classes, rt.device)
    hook = install_hook(pipe.text_encoder, inv)
    latents, labels, skipped = cache_latents(pipe.vae, images, cfg, rt)
    lr = cfg.lr * (cfg.batch_size * cfg.grad_accum if cfg.scale_lr else 1)
    opt = torch.optim.AdamW([inv.learned], lr=lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None
    step, losses, seconds = 0, [], 0.0
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config_hash"] != identity:
            raise ConfigError(f"{ckpt} belongs to another config; use another out_dir or delete it")
        with torch.no_grad():
            inv.learned.copy_(state["learned"])
        opt.load_state_dict(state["optimizer"])
        step, losses, seconds = state["step"], list(state["losses"]), state["seconds"]
    total_steps = cfg.steps_per_class * images.num_classes if cfg.steps_per_class else cfg.steps
    groups = by_class_index(labels)
    size = cfg.resolution // 8
    scaling = pipe.vae.config.scaling_factor
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc="learn-style", unit="step",
               disable=not (cfg.progress and is_main()))
    while step < total_steps:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "style-step", step))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else lr
        total = 0.0
        for _ in range(cfg.grad_accum):
            lat, ys = sample_batch(latents, groups, cfg, size, g)
            lat = lat.to(rt.device, pipe.unet.dtype) * scaling
            noise = torch.randn(lat.shape, generator=g).to(rt.device, lat.dtype)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(ys),), generator=g).to(rt.device)
            ids = pipe.tokenizer(_prompts(cfg, inv, images.names, ys, g), padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
            loss = diffusion_loss(pipe, noise_sched, lat, ids.to(rt.device), noise, t, rt) / cfg.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.item()
        optimizer_step(opt, scaler)
        step += 1
        losses.append(total)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.update()
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            seconds_now = seconds + time.perf_counter() - t0
            if is_main():
                save_torch(ckpt, {"config_hash": identity, "step": step, "learned": inv.learned.detach().cpu(),
                            "optimizer": opt.state_dict(), "losses": losses, "seconds": seconds_now})
        if cfg.validate_every and step % cfg.validate_every == 0 and step != total_steps and is_main():
            _validation_grid(pipe, inv, cfg, images.names, out / "validation" / f"step-{step:06d}.png")
    bar.close()
    seconds += time.perf_counter() - t0
    if is_main():
        _validation_grid(pipe, inv, cfg, images.names, out / "validation" / f"step-{step:06d}.png")
    hook.remove()
    return _save(cfg, out, inv, images, losses, seconds, time.perf_counter() - t_start, skipped, identity, rt)


def _save(cfg: StyleConfig, out: Path, inv: Inversion, images: ImageList, losses: list[float], seconds: float,
          wall: float, skipped: int, identity: str, rt: Runtime) -> dict:
    from safetensors.torch import save

    from synthtl.files import sha256_file

    state = inv.state()
    write_bytes(out / EMBEDS, save(state))
    if cfg.mode == "class":  # one diffusers-format file per token as well
        for tok, emb in state.items():
            write_bytes(out / "tokens" / f"{tok.strip('<>')}.safetensors", save({tok: emb}))
    window = max(1, len(losses) // 100)
    curve = [{"step": (i + 1) * window, "loss": float(np.mean(losses[i * window:(i + 1) * window]))}
             for i in range(math.ceil(len(losses) / window))]
    info = {
        "mode": cfg.mode, "tokens": inv.tokens, "vectors": cfg.vectors, "initializer": cfg.initializer,
        "class_tokens": {n: inv.tokens[c] for c, n in enumerate(images.names)} if cfg.mode == "class" else {},
        "classes": list(images.names), "train_images": len(images), "skipped_images": skipped,
        "split_file": "splits/train.json", "dataset": cfg.data.name, "model": cfg.generator.model,
        "steps": len(losses), "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "lr": cfg.lr,
        "resolution": cfg.resolution, "loss_curve": curve, "train_seconds": seconds, "wall_s": wall,
        "gpu_s": seconds * rt.gpus, "peak_memory_mb": _peak_memory_mb(rt), "device": str(rt.device),
        "dtype": str(rt.dtype).replace("torch.", ""), "hash": sha256_file(out / EMBEDS)[:16],
        "config_hash": identity, "config": to_dict(cfg)}
    if is_main():
        write_json(out / STYLE_JSON, info)
        (out / CHECKPOINT).unlink(missing_ok=True)
        print(f"[synthtl] learned {len(inv.tokens)} token(s) in {seconds:.0f} s "
              f"(final loss {curve[-1]['loss']:.4f}) -> {out / EMBEDS}")
    return info
