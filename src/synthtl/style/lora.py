"""`synthtl learn-style method=lora` (ours, beyond the paper): a LoRA on the generator, learned from the real images.

As in DataDream (ECCV'24), Diff-Mix (CVPR'24) and Real-Fake (ICLR'24): low-rank updates of the UNet's attention
projections (the text encoder's too, with `lora.train_text_encoder`) trained with the denoising loss on the real
training images, prompts naming each image's class ("a photo of a {class}."). The data is the textual inversion's:
the same images (`training_images`: train split or its few shots), cached VAE latents, class-balanced batches.

- mode=dataset: one LoRA for the dataset, saved as `<out>/pytorch_lora_weights.safetensors`.
- mode=class: one LoRA per class, each trained only on its own class's images, one after the other exactly as N
  separate runs (own initialisation, own optimizer): `<out>/adapters/<class index>/pytorch_lora_weights.safetensors`.

SDXL (as diffusers' SDXL DreamBooth LoRA example): the step is conditioned as inversion's (`train.encode_ids`): both
text encoders' penultimate states, the second's pooled embedding and each image's size/crop time ids; with
`lora.train_text_encoder` each text encoder gets a LoRA (keys `text_encoder.`, `text_encoder_2.`). SDXL never reads
the first encoder's last layer, so that layer's LoRA stays zero, as in diffusers' example.

Each file is what diffusers' `pipe.load_lora_weights(folder)` reads. lora_B is stored multiplied by alpha / rank, so
the file means W + B A with no scale metadata (diffusers' default when none is given), in every diffusers version.

Generation (`prompts.style_lora`): `load_style_lora` adds B A into the weights (fused: no extra cost per image). A
per-class LoRA keeps the base weights and `set_style_lora_class(pipe, class_name)` writes W + B_c A_c before each
batch; until a class is chosen the UNet refuses to run, so a caller that forgets cannot generate unstyled images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from synthtl.config import StyleConfig
from synthtl.errors import ConfigError, DataError
from synthtl.files import (
    read_json,
    save_torch,
    write_bytes,
    write_json,
)
from synthtl.generation.families import family_of_pipeline, is_sdxl, text_encoders
from synthtl.generation.styles import ADAPTERS, STYLE_JSON, WEIGHTS, lora_hash
from synthtl.runtime import derive_seed, is_main
from synthtl.style import train as ti

ADAPTER_JSON = "adapter.json"  # written after an adapter's weights: the adapter is finished
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
ADAPTER = "synthtl-style"  # peft adapter name while training
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' DreamBooth LoRA example
DEFAULT_TEMPLATES = ["a photo of a {}."]  # DataDream's prompt; no style token: the weights carry the style


def lora_scale(cfg: StyleConfig) -> float:
    return (cfg.lora.alpha or cfg.lora.rank) / cfg.lora.rank


def _templates(cfg: StyleConfig) -> list[str]:
    templates = cfg.templates or DEFAULT_TEMPLATES
    if any("{token}" in t for t in templates):
        raise ConfigError("method=lora learns weights, not a token: remove {token} from templates (e.g. "
                          "templates=['a photo of a {}.'])")
    return templates


# --------------------------------------------------------------------------------------------------- the adapters
def add_lora(pipe, cfg: StyleConfig) -> dict[str, torch.nn.Parameter]:
    """Adds one LoRA adapter (peft) to the UNet (and text encoders); returns its parameters by file key.

    The base weights stay frozen; the LoRA parameters are fp32 even when the frozen model is bf16/fp16.

    Raises:
        ConfigError: `lora.targets` names no module of the UNet.
    """
    from peft import LoraConfig, inject_adapter_in_model

    models = {"unet": (pipe.unet, list(cfg.lora.targets))}
    if cfg.lora.train_text_encoder:  # every text encoder (SDXL: two), as diffusers' SDXL DreamBooth LoRA example
        for k, encoder in enumerate(text_encoders(pipe)):
            models["text_encoder" + (f"_{k + 1}" if k else "")] = (encoder, TEXT_TARGETS)
    params = {}
    for prefix, (model, targets) in models.items():
        model.requires_grad_(False)
        config = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha or cfg.lora.rank, target_modules=targets)
        try:
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        except ValueError as e:
            raise ConfigError(f"lora.targets={targets}: {str(e).splitlines()[0][:200]}; name {prefix} modules, e.g. "
                              "[to_q, to_k, to_v, to_out.0]") from None
        for name, p in model.named_parameters():
            if f".{ADAPTER}." in name:
                p.data = p.data.float()
                p.requires_grad_(True)
                params[f"{prefix}.{name.replace(f'.{ADAPTER}.', '.')}"] = p
    return params


def init_lora(params: dict[str, torch.nn.Parameter], seed: int) -> None:
    """peft's default initialisation (A ~ kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0),
    drawn from a seeded generator so that every adapter of a run starts from a reproducible point."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in sorted(params.items()):
            if ".lora_A." in key:
                bound = 1 / math.sqrt(p.shape[1])
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
            else:
                p.zero_()


def lora_state(params: dict[str, torch.nn.Parameter], cfg: StyleConfig) -> dict[str, torch.Tensor]:
    """The file's tensors: `<prefix>.<module>.lora_A/B.weight`, B multiplied by alpha / rank (see the module doc)."""
    scale = lora_scale(cfg)
    return {k: (p.detach().float().cpu() * (scale if ".lora_B." in k else 1)).contiguous() for k, p in params.items()}


def _save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_bytes(path, save(state, metadata={"format": "pt"}))


# -------------------------------------------------------------------------------------------------------- training
def lora_step(pipe, noise_sched, params: dict, opt: torch.optim.Optimizer, cfg: StyleConfig, batches: list,
              rt, step: int, scaler=None) -> float:
    """One optimizer step of the LoRA on `batches` (gradients accumulated over them); returns the loss.

    The conditioning is the inversion's (`train.encode_ids`): SDXL's from both text encoders, with the pooled
    embedding and each image's time ids as added conditions.
    """
    for group in opt.param_groups:
        group["lr"] = ti.token_lr(cfg, step)  # linear warmup over this adapter's steps, then constant
    total = 0.0
    for b in batches:
        ids = ti.tokenize_all(pipe, b.prompts, rt.device)
        loss = ti.diffusion_loss(pipe, noise_sched, b.latents, ids, b.noise, b.timesteps, rt, b.time_ids)
        loss = loss / len(batches)
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.item()
    ti.optimizer_step(opt, scaler)
    return total


def draw_micro_batch(pipe, noise_sched, cfg: StyleConfig, names: tuple[str, ...], latents: list,
                     pool: dict[int, list[int]], rt, g: torch.Generator, sizes: list | None = None) -> ti.MicroBatch:
    """Class-balanced images from `pool` (one class in per-class mode), noise, timesteps and prompts, all from `g`.

    SDXL also gets each image's time ids from `sizes` (`train.cache_latents`), as inversion does.
    """
    batch, ys = ti.draw_images(pipe, noise_sched, cfg, latents, pool, rt, g, sizes)
    templates = _templates(cfg)
    batch.prompts = [templates[int(torch.randint(len(templates), (1,), generator=g))].replace("{}", names[y])
                     for y in ys]
    return batch


@dataclass
class Unit:
    """One adapter to train: the dataset's (index -1) or class `index`'s, from the images in `pool`."""

    index: int
    pool: dict[int, list[int]]
    steps: int
    folder: Path  # where its weights go


def run_learn_lora(cfg: StyleConfig) -> dict:
    """Learns (or resumes, or skips if finished) a style LoRA; returns style.json's content. Called by
    `train.run_learn_style`, which has already refused several processes.

    Raises:
        ConfigError: the folder holds another config's work.
        LockedError: another process is writing the same out_dir.
    """
    _templates(cfg)
    return ti.learn_in_folder(cfg, _learn)


def _units(cfg: StyleConfig, out: Path, groups: dict[int, list[int]], names: tuple[str, ...]) -> list[Unit]:
    n = len(names)
    if cfg.mode == "dataset":
        return [Unit(-1, groups, cfg.steps_per_class * n if cfg.steps_per_class else cfg.steps, out)]
    per_class = cfg.steps_per_class or cfg.steps // n
    if per_class < 1:
        raise ConfigError(f"mode=class with steps={cfg.steps} gives the {n} class LoRAs no step each; set "
                          "steps_per_class or steps >= the number of classes")
    missing = [names[c] for c in range(n) if c not in groups]
    if missing:
        raise DataError(f"class {missing[0]!r} has no readable training image, so its LoRA cannot be learned; add "
                        "images of it or use mode=dataset")
    return [Unit(c, {c: groups[c]}, per_class, out / ADAPTERS / str(c)) for c in range(n)]


def _learn(cfg: StyleConfig, out: Path, identity: str) -> dict:
    """Setup, then each adapter's step loop (checkpointed), then style.json; the caller holds the folder's lock."""
    t_start = time.perf_counter()
    images = ti.training_images(cfg, out)
    rt = ti.style_runtime(cfg)
    pipe, noise_sched = ti._components(cfg, rt)
    sizes: list | None = [] if is_sdxl(pipe) else None  # SDXL's size conditioning
    latents, labels, skipped = ti.cache_latents(pipe.vae, images, cfg, rt, sizes)
    units = _units(cfg, out, ti.by_class_index(labels), images.names)
    params = add_lora(pipe, cfg)
    done = [_train_unit(cfg, u, pipe, noise_sched, params, images.names, latents, rt, identity, sizes)
            for u in units]
    return _save_style(cfg, out, images, done, params, skipped, identity, rt, time.perf_counter() - t_start)


def _train_unit(cfg: StyleConfig, u: Unit, pipe, noise_sched, params: dict, names: tuple[str, ...], latents: list,
                rt, identity: str, sizes: list | None = None) -> dict:
    """Trains one adapter from its initialisation (or its checkpoint) and saves it; returns its record.

    A finished adapter (its adapter.json, written after its weights, names this config) is read, not retrained.
    """
    marker = u.folder / ADAPTER_JSON
    if u.index >= 0 and marker.is_file() and read_json(marker).get("config_hash") == identity:
        return read_json(marker)
    init_lora(params, derive_seed(cfg.seed, "lora-init", u.index))
    opt = torch.optim.AdamW(list(params.values()), lr=ti.base_lr(cfg), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None
    ckpt = u.folder.parent / CHECKPOINT if u.index >= 0 else u.folder / CHECKPOINT
    step, losses, seconds = 0, [], 0.0
    if ckpt.is_file():
        step, losses, seconds = _resume(ckpt, identity, u.index, params, opt)
    what = "learn-lora" if u.index < 0 else f"learn-lora {names[u.index]}"
    bar = tqdm(total=u.steps, initial=step, desc=what, unit="step", disable=not (cfg.progress and is_main()))
    t0 = time.perf_counter()
    while step < u.steps:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "lora-step", u.index, step))
        batches = [draw_micro_batch(pipe, noise_sched, cfg, names, latents, u.pool, rt, g, sizes)
                   for _ in range(cfg.grad_accum)]
        losses.append(lora_step(pipe, noise_sched, params, opt, cfg, batches, rt, step, scaler))
        step += 1
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.update()
        if (step % cfg.checkpoint_every == 0 or step == u.steps) and is_main():
            save_torch(ckpt, {"format": CHECKPOINT_FORMAT, "config_hash": identity, "unit": u.index, "step": step,
                              "lora": {k: p.detach().cpu() for k, p in params.items()}, "optimizer": opt.state_dict(),
                              "losses": losses, "seconds": seconds + time.perf_counter() - t0})
        if u.index < 0 and cfg.validate_every and step % cfg.validate_every == 0 and step != u.steps and is_main():
            _grid(pipe, cfg, names, range(min(cfg.validation_classes, len(names))),
                  u.folder / "validation" / f"step-{step:06d}.png")
    bar.close()
    seconds += time.perf_counter() - t0
    record = {"class_index": u.index, "class_name": names[u.index] if u.index >= 0 else "", "steps": len(losses),
              "loss_curve": _curve(losses), "train_seconds": seconds, "config_hash": identity}
    if is_main():
        _save_weights(u.folder / WEIGHTS, lora_state(params, cfg))
        if u.index < 0:
            _grid(pipe, cfg, names, range(min(cfg.validation_classes, len(names))),
                  u.folder / "validation" / f"step-{step:06d}.png")
        elif u.index < cfg.validation_classes:  # the class's row, drawn with its own adapter
            _grid(pipe, cfg, names, [u.index], u.folder.parent.parent / "validation" / f"class-{u.index}.png")
        if u.index >= 0:
            write_json(marker, {**record, "losses": losses})  # last: the adapter is finished
    return record


def _resume(ckpt: Path, identity: str, index: int, params: dict, opt: torch.optim.Optimizer
            ) -> tuple[int, list[float], float]:
    """Loads a checkpoint of adapter `index` into `params` and `opt`; returns (step, losses, seconds).

    A checkpoint of another adapter (per-class: the previous class, finished since) starts this one afresh.
    """
    state = ti._load_checkpoint(ckpt)
    if state.get("config_hash") != identity or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{ckpt} belongs to another config; use another out_dir or delete it")
    if state["unit"] != index:
        return 0, [], 0.0
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state["lora"][k])
    opt.load_state_dict(state["optimizer"])
    return state["step"], list(state["losses"]), state["seconds"]


def _curve(losses: list[float]) -> list[dict]:
    window = max(1, len(losses) // 100)
    return [{"step": (i + 1) * window, "loss": float(np.mean(losses[i * window:(i + 1) * window]))}
            for i in range(math.ceil(len(losses) / window))]


def _grid(pipe, cfg: StyleConfig, names: tuple[str, ...], classes, path: Path) -> None:
    """A validation sheet: one row per class, fixed seeds, the adapter as it is now (none without classes)."""

    from diffusers import DPMSolverMultistepScheduler

    family = family_of_pipeline(pipe)  # the generator's own pipeline class (SDXL: its two encoders, time ids)
    val = family.pipeline_class()(**{**pipe.components, **family.kwargs(),
                                     "scheduler": DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)})
    val.set_progress_bar_config(disable=True)
    rows = []
    if not list(classes) or cfg.validation_images < 1:
        return
    for c in classes:
        gens = [torch.Generator("cpu").manual_seed(cfg.seed + k) for k in range(cfg.validation_images)]
        with torch.inference_mode():
            rows.append(val([_templates(cfg)[0].replace("{}", names[c])] * cfg.validation_images,
                            num_inference_steps=cfg.validation_steps, guidance_scale=cfg.generator.guidance,
                            height=cfg.resolution, width=cfg.resolution, generator=gens).images)
    ti.write_sheet(rows, path)


def _save_style(cfg: StyleConfig, out: Path, images, done: list[dict], params: dict, skipped: int, identity: str,
                rt, wall: float) -> dict:
    per_class = cfg.mode == "class"
    seconds = sum(d["train_seconds"] for d in done)
    info = {
        "method": "lora", "mode": cfg.mode, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha or cfg.lora.rank,
        "scale": lora_scale(cfg), "targets": list(cfg.lora.targets), "train_text_encoder": cfg.lora.train_text_encoder,
        "trainable_params": sum(p.numel() for p in params.values()),  # of one adapter
        "weights": WEIGHTS, "classes": list(images.names),
        "adapters": {n: f"{ADAPTERS}/{c}" for c, n in enumerate(images.names)} if per_class else {},
        "adapter_steps": {(d["class_name"] or "dataset"): d["steps"] for d in done},
        "steps": sum(d["steps"] for d in done), "steps_per_class": done[0]["steps"] if per_class else None,
        "loss_curve": done[0]["loss_curve"] if not per_class else [],
        "adapter_loss_curves": {d["class_name"]: d["loss_curve"] for d in done} if per_class else {},
        "train_images": len(images), "skipped_images": skipped, "split_file": "splits/train.json",
        "dataset": cfg.data.name, "model": cfg.generator.model, "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum, "lr": cfg.lr, "resolution": cfg.resolution, "train_seconds": seconds,
        "wall_s": wall, "gpu_s": seconds * rt.gpus, "peak_memory_mb": ti._peak_memory_mb(rt),
        "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""), "hash": lora_hash(out),
        "identity": identity}
    if is_main():
        write_json(out / STYLE_JSON, info)
        for ckpt in (out / CHECKPOINT, out / ADAPTERS / CHECKPOINT):
            ckpt.unlink(missing_ok=True)
        print(f"[synthtl] learned {len(done)} LoRA adapter(s) of rank {cfg.lora.rank} in {seconds:.0f} s -> {out}")
    return info
