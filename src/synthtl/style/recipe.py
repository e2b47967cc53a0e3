"""Learning a style as a recipe (torchtune's shape): `setup()` builds the frozen pipeline, noise scheduler, cached
latents and trainable parameters once; `train_unit()` runs one unit's checkpointed step loop; `save()` writes the
files and style.json. Textual inversion and LoRA differ only in parameters, prompts, checkpoint state, validation and
files. A unit is one step loop: the whole style (index -1) or one class's adapter of a per-class LoRA. Each step draws
from a generator seeded from (seed, unit, step), so a resumed run draws what an uninterrupted one draws."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from synthtl import faults
from synthtl.config import StyleConfig
from synthtl.errors import ConfigError, DataError
from synthtl.files import atomic_open, load_torch, save_torch, write_json
from synthtl.generation.families import is_sdxl, text_encoders, tokenizers
from synthtl.generation.styles import STYLE_JSON
from synthtl.runtime import Runtime, is_main, resolve_runtime
from synthtl.style.data import cache_latents, sample_picks, training_images


@dataclass
class MicroBatch:
    """One forward/backward's worth of training data, drawn before any compute."""

    latents: torch.Tensor  # scaled VAE latents (b, 4, h, w) on the device
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]
    time_ids: torch.Tensor | None = None  # SDXL: (b, 6) original size, crop top-left, target size


@dataclass
class Unit:
    index: int  # -1: the whole style; else the class whose adapter this loop trains
    steps: int
    pool: Callable[[int], dict[int, list[int]]]  # step -> the images (by class) its batches are drawn from
    checkpoint: Path


def style_runtime(cfg: StyleConfig) -> Runtime:
    """Frozen models in bf16 on GPU (fp16 where bf16 is missing), fp32 on CPU; the learned parameters stay fp32."""
    return resolve_runtime(cfg.generator.device, cfg.generator.dtype, auto_gpu="bf16")


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompt ids padded to the text encoder's length: the ids are fed to the text encoder as they are."""
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def conditioning(pipe, ids: list[torch.Tensor], time_ids: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """SDXL's (encoder hidden states, added conditions) of prompt ids, one (batch, length) tensor per text encoder.

    SDXL (Podell et al. 2023, sec. 2.2) concatenates both encoders' penultimate hidden states (CLIP ViT-L, OpenCLIP
    ViT-bigG), with the second's pooled projection and six "time ids" per image: original size, crop top-left, target
    size, each (h, w). Training feeds true values (`draw_one`); None: diffusers' defaults (original = target, no crop).
    """
    first = pipe.text_encoder(ids[0], output_hidden_states=True)
    second = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    added = {"text_embeds": second.text_embeds}
    if time_ids is not None:
        added["time_ids"] = time_ids.to(states.device, torch.float32)  # exact sizes; the UNet embeds them in fp32
    return states, added


def loss_curve(losses: list[float]) -> list[dict]:
    window = max(1, len(losses) // 100)
    return [{"step": (i + 1) * window, "loss": float(np.mean(losses[i * window:(i + 1) * window]))}
            for i in range(math.ceil(len(losses) / window))]


class StyleRecipe:
    """The shared recipe. A subclass sets `checkpoint_format` and `default_templates` and defines add_params (the
    trainable parameters and `self.opt`), make_units, step_seed, params_state, load_params_state,
    validation_inputs(class), files(records) (writes the learned files on rank 0; returns style.json's method-specific
    fields) and style_hash; it may override check_images, start_unit, end_unit and prompt (below)."""

    checkpoint_format = 1
    default_templates: list[str]  # the prompts when `templates` is empty

    def __init__(self, cfg: StyleConfig, out: str | Path, identity: str = ""):
        self.cfg, self.out, self.identity = cfg, Path(out), identity
        self.rt = style_runtime(cfg)

    def setup(self) -> None:
        self.t_start = time.perf_counter()
        self.images = training_images(self.cfg, self.out)
        self.check_images()
        self.pipe, self.noise_sched = self.components()
        self.sdxl = is_sdxl(self.pipe)
        self.add_params()
        self.data = cache_latents(self.pipe.vae, self.images, self.cfg, self.rt, sizes=self.sdxl)
        self.groups = {y: [i for i, z in enumerate(self.data.labels) if z == y] for y in sorted(set(self.data.labels))}
        self.scaler = torch.amp.GradScaler("cuda") if self.rt.dtype == torch.float16 else None
        self.units = self.make_units()

    def components(self):
        """The frozen pipeline (every component in eval mode) and a DDPM scheduler of its noise schedule."""
        from diffusers import DDPMScheduler

        from synthtl.generation.pipeline import load_pipeline

        pipe = load_pipeline(self.cfg.generator, self.rt)
        for m in (pipe.unet, pipe.vae, *text_encoders(pipe)):
            m.requires_grad_(False).eval()
        if self.cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        return pipe, DDPMScheduler.from_config(pipe.scheduler.config)

    def draw(self, unit: Unit, step: int) -> list[MicroBatch]:
        """A step's micro-batches (images, flip, crop, noise, timesteps, prompts), from one generator per step."""
        g = torch.Generator().manual_seed(self.step_seed(unit, step))
        pool = unit.pool(step)
        return [self.draw_one(pool, g) for _ in range(self.cfg.grad_accum)]

    def draw_one(self, pool: dict[int, list[int]], g: torch.Generator) -> MicroBatch:
        cfg, cells = self.cfg, self.cfg.resolution // 8
        picks = sample_picks(self.data, pool, cfg.batch_size, cells, g)
        lat = torch.stack([self.data.latents[i][v][:, top:top + cells, left:left + cells]
                           for _, i, v, top, left in picks])
        ys, time_ids = [y for y, *_ in picks], None
        if self.sdxl:  # SDXL's time ids (`conditioning`): original (h, w), crop top-left, target (h, w)
            px, sizes = self.pipe.vae_scale_factor, self.data.sizes  # pixels per latent cell (8 in SD/SDXL)
            time_ids = torch.tensor([[*sizes[i][:2], sizes[i][2] + top * px, sizes[i][3] + left * px, cfg.resolution,
                                      cfg.resolution] for _, i, _, top, left in picks])
        lat = lat.to(self.rt.device, self.pipe.unet.dtype) * self.pipe.vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g).to(self.rt.device, lat.dtype)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (len(ys),), generator=g).to(self.rt.device)
        return MicroBatch(lat, noise, t, self.prompts(ys, g), time_ids)

    @property
    def templates(self) -> list[str]:
        """The prompt templates in use: `templates`, else the method's defaults."""
        return self.cfg.templates or self.default_templates

    def prompts(self, ys: list[int], g: torch.Generator) -> list[str]:
        """One prompt per image: a template drawn from `g`, filled in for the image's class (`prompt`)."""
        templates = self.templates
        return [self.prompt(templates[int(torch.randint(len(templates), (1,), generator=g))], y) for y in ys]

    def prompt(self, template: str, y: int) -> str:
        return template.replace("{}", self.images.names[y])

    def encode(self, prompts: list[str], time_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict | None]:
        """The UNet's text conditioning of prompts: (encoder hidden states, SDXL's added conditions or None)."""
        ids = [tokenize(tok, prompts).to(self.rt.device) for tok in tokenizers(self.pipe)]
        if len(ids) > 1:  # SDXL: one id tensor per text encoder
            return conditioning(self.pipe, ids, time_ids)
        return self.pipe.text_encoder(ids[0])[0], None

    def loss(self, b: MicroBatch) -> torch.Tensor:
        """The denoising loss; the target is what the model predicts: the noise, or the velocity (SD 2.x at 768 px)."""
        kind = self.noise_sched.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the generator's scheduler predicts {kind!r}; style learning supports epsilon and "
                              "v_prediction models (SD 1.x/2.x, SDXL)")
        with self.rt.autocast():
            states, added = self.encode(b.prompts, b.time_ids)
            noisy = self.noise_sched.add_noise(b.latents, b.noise, b.timesteps)
            pred = self.pipe.unet(noisy, b.timesteps, states, added_cond_kwargs=added).sample
        target = self.noise_sched.get_velocity(b.latents, b.noise, b.timesteps) if kind == "v_prediction" else b.noise
        return F.mse_loss(pred.float(), target.float())

    def step(self, step: int, batches: list[MicroBatch]) -> float:
        """One optimizer step on `batches` (gradients accumulated over them); returns the loss."""
        self.set_lr(step)
        total = 0.0
        for b in batches:
            loss = self.loss(b) / len(batches)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        self.apply()
        return total

    def apply(self) -> bool:
        """The (loss-scaled, for fp16) optimizer step, then gradients set to None (a zero gradient would make AdamW
        decay a parameter and move its moments); returns whether it stepped (the scaler skips inf/NaN steps)."""
        taken = True
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            taken = self.scaler.get_scale() >= scale  # the scaler lowers its scale exactly when it skipped
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return taken

    def set_lr(self, step: int) -> None:
        for group in self.opt.param_groups:  # linear warmup over the unit's steps, then constant
            group["lr"] = self.lr_at(step)

    @property
    def total_steps(self) -> int:
        return self.cfg.steps_per_class * len(self.images.names) if self.cfg.steps_per_class else self.cfg.steps

    @property
    def grid_classes(self) -> range:
        return range(min(self.cfg.validation_classes, len(self.images.names)))

    def require_every_class(self, what: str) -> None:
        """Per-class mode: refuses a class without a readable training image."""
        missing = [name for c, name in enumerate(self.images.names) if c not in self.groups]
        if missing:
            raise DataError(f"class {missing[0]!r} has no readable training image, so its {what} cannot be learned; "
                            "add images of it or use mode=dataset")

    @property
    def base_lr(self) -> float:
        return self.cfg.lr * (self.cfg.batch_size * self.cfg.grad_accum if self.cfg.scale_lr else 1)

    def lr_at(self, updates: int) -> float:
        """The lr of an update: linear warmup over `warmup_steps` updates, then constant."""
        warmup = self.cfg.warmup_steps
        return self.base_lr * min(1.0, (updates + 1) / warmup) if warmup else self.base_lr

    def train_unit(self, u: Unit) -> dict:
        """A unit's step loop from its start (or its checkpoint); returns its record (`end_unit`)."""
        done = self.start_unit(u)
        if done is not None:
            return done
        step, losses, seconds = self.resume(u) if u.checkpoint.is_file() else (0, [], 0.0)
        name = "learn-style" if u.index < 0 else f"learn-style {self.images.names[u.index]}"
        bar = tqdm(total=u.steps, initial=step, desc=name, unit="step", disable=not (self.cfg.progress and is_main()))
        t0 = time.perf_counter()
        while step < u.steps:
            losses.append(self.step(step, self.draw(u, step)))
            step += 1
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            bar.update()
            if (step % self.cfg.checkpoint_every == 0 or step == u.steps) and is_main():
                save_torch(u.checkpoint, {"format": self.checkpoint_format, "config_hash": self.identity,
                                          "unit": u.index, "step": step, "optimizer": self.opt.state_dict(),
                                          "losses": losses, "seconds": seconds + time.perf_counter() - t0,
                                          **self.params_state()})
                faults.point("style.checkpoint", step=step, unit=u.index)
            every = self.cfg.validate_every
            if u.index < 0 and every and step % every == 0 and step != u.steps and is_main():
                self.validate(self.grid_classes, self.out / "validation" / f"step-{step:06d}.png")
        bar.close()
        return self.end_unit(u, {"class_index": u.index, "steps": len(losses), "losses": losses,
                                 "train_seconds": seconds + time.perf_counter() - t0})

    def resume(self, u: Unit) -> tuple[int, list[float], float]:
        """A unit's checkpoint as (step, losses, seconds); another unit's (a finished class) starts afresh."""
        state = load_torch(u.checkpoint, "synthtl style checkpoint", "delete it to start the style over")
        if state.get("config_hash") != self.identity or state.get("format") != self.checkpoint_format:
            raise ConfigError(f"{u.checkpoint} belongs to another config or version of synthtl; delete it to start "
                              "over")
        if state.get("unit", -1) != u.index:
            return 0, [], 0.0
        self.load_params_state(state)
        self.opt.load_state_dict(state["optimizer"])
        return state["step"], list(state["losses"]), state["seconds"]

    def save(self, records: list[dict]) -> dict:
        cfg, rt, seconds = self.cfg, self.rt, sum(r["train_seconds"] for r in records)
        info = {**self.files(records), "train_images": len(self.images), "skipped_images": self.data.skipped,
                "split_file": "splits/train.json", "dataset": cfg.data.name, "model": cfg.generator.model,
                "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "lr": cfg.lr, "resolution": cfg.resolution,
                "train_seconds": seconds, "wall_s": time.perf_counter() - self.t_start, "gpu_s": seconds * rt.gpus,
                "peak_memory_mb": torch.cuda.max_memory_allocated(rt.device) / 2**20 if rt.is_cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
                "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""), "identity": self.identity,
                "hash": self.style_hash()}
        if is_main():
            write_json(self.out / STYLE_JSON, info)
            for u in self.units:
                u.checkpoint.unlink(missing_ok=True)
        return info

    @torch.inference_mode()
    def validate(self, classes, path: Path) -> None:
        """A grid: one row per class (`validation_inputs`), fixed seeds, the learned parameters as they are now; drawn
        by the generator's own pipeline class (SDXL: its two encoders, time ids) on the frozen components."""
        from diffusers import DPMSolverMultistepScheduler

        from synthtl.generation.families import family_of_pipeline

        cfg, family = self.cfg, family_of_pipeline(self.pipe)
        val = family.pipeline_class()(**{**self.pipe.components, **family.kwargs(),
                                         "scheduler": DPMSolverMultistepScheduler.from_config(
                                             self.pipe.scheduler.config)})
        val.set_progress_bar_config(disable=True)
        rows = [val(**self.validation_inputs(c), num_inference_steps=cfg.validation_steps,
                    guidance_scale=cfg.generator.guidance, height=cfg.resolution, width=cfg.resolution,
                    generator=[torch.Generator("cpu").manual_seed(cfg.seed + k)
                               for k in range(cfg.validation_images)]).images for c in classes]
        w, h = rows[0][0].size
        sheet = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
        for r, imgs in enumerate(rows):
            for k, im in enumerate(imgs):
                sheet.paste(im, (k * w, r * h))
        with atomic_open(path, "wb") as f:
            sheet.save(f, format="PNG")

    def run(self) -> dict:
        self.setup()
        return self.save([self.train_unit(u) for u in self.units])

    def check_images(self) -> None:
        """Refuses what cannot be learned from these images, before any model loads."""

    def start_unit(self, u: Unit) -> dict | None:
        """Prepares a unit's parameters and optimizer; returns its record instead when it is already finished."""

    def end_unit(self, u: Unit, record: dict) -> dict:
        """Writes what a finished unit leaves (rank 0); returns its record."""
        return record
