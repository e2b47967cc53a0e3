"""`synthtl learn-style method=lora` (ours, beyond the paper; as in DataDream ECCV'24, Diff-Mix CVPR'24, Real-Fake
ICLR'24): low-rank updates of the UNet's attention (and the text encoders' with `lora.train_text_encoder`, as diffusers'
SDXL DreamBooth LoRA example), learned from the real images with the inversion's data and class-naming prompts.

mode=dataset: one `<out>/pytorch_lora_weights.safetensors`; mode=class: `<out>/adapters/<class index>/...`, trained one
after the other exactly as N separate runs. Each file is what diffusers' `load_lora_weights(folder)` reads; lora_B is
stored times alpha / rank, so the file means W + B A without scale metadata in every diffusers version. SDXL never
reads the first encoder's last layer, so that layer's LoRA stays zero, as in diffusers' example."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from safetensors.torch import save

from synthtl.config import StyleConfig
from synthtl.errors import ConfigError
from synthtl.files import read_json, write_bytes, write_json
from synthtl.generation.families import text_encoders
from synthtl.generation.styles import ADAPTERS, WEIGHTS, lora_hash
from synthtl.runtime import derive_seed, is_main
from synthtl.style.recipe import StyleRecipe, Unit, loss_curve

ADAPTER_JSON = "adapter.json"  # written after an adapter's weights: the adapter is finished
ADAPTER = "synthtl-style"  # peft adapter name while training
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' DreamBooth LoRA example


def lora_scale(cfg: StyleConfig) -> float:
    return (cfg.lora.alpha or cfg.lora.rank) / cfg.lora.rank


def add_lora(pipe, cfg: StyleConfig) -> dict[str, torch.nn.Parameter]:
    """Adds one peft LoRA (fp32, base frozen) to the UNet (and text encoders); returns its parameters by file key."""
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


class LoraRecipe(StyleRecipe):
    default_templates = ["a photo of a {}."]  # DataDream's prompt; no style token: the weights carry the style

    def __init__(self, cfg: StyleConfig, out: str | Path, identity: str = ""):
        # Fused q/k/v (CUDA) would bypass the injected to_q/to_k/to_v LoRAs (no gradient); compiling would hide them.
        gen = dataclasses.replace(cfg.generator, fuse_qkv=False, compile=False)
        super().__init__(dataclasses.replace(cfg, generator=gen), out, identity)

    def check_images(self) -> None:
        if any("{token}" in t for t in self.cfg.templates):  # the default templates have none
            raise ConfigError("method=lora learns weights, not a token: remove {token} from templates (e.g. "
                              "templates=['a photo of a {}.'])")

    def add_params(self) -> None:
        self.params = add_lora(self.pipe, self.cfg)

    def make_units(self) -> list[Unit]:
        cfg, groups, n = self.cfg, self.groups, len(self.images.names)
        if cfg.mode == "dataset":
            return [Unit(-1, self.total_steps, lambda step: groups, self.out / "checkpoint.pt")]
        per_class = cfg.steps_per_class or cfg.steps // n
        if per_class < 1:
            raise ConfigError(f"mode=class with steps={cfg.steps} gives the {n} class LoRAs no step each; set "
                              "steps_per_class or steps >= the number of classes")
        self.require_every_class("LoRA")
        return [Unit(c, per_class, lambda step, c=c: {c: groups[c]}, self.out / ADAPTERS / "checkpoint.pt")
                for c in range(n)]

    def folder(self, u: Unit) -> Path:
        return self.out if u.index < 0 else self.out / ADAPTERS / str(u.index)

    def start_unit(self, u: Unit) -> dict | None:
        """A finished adapter (adapter.json names this config) is read, not retrained; else peft's default init
        (A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0) from a seeded generator: reproducible."""
        marker = self.folder(u) / ADAPTER_JSON
        if u.index >= 0 and marker.is_file() and read_json(marker).get("config_hash") == self.identity:
            return read_json(marker)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "lora-init", u.index))
        with torch.no_grad():
            for key, p in sorted(self.params.items()):
                if ".lora_A." in key:
                    bound = 1 / math.sqrt(p.shape[1])
                    p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
                else:
                    p.zero_()
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=self.base_lr, weight_decay=self.cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.rt.dtype == torch.float16 else None
        return None

    def step_seed(self, u: Unit, step: int) -> int:
        return derive_seed(self.cfg.seed, "lora-step", u.index, step)

    def params_state(self) -> dict:
        return {"lora": {k: p.detach().cpu() for k, p in self.params.items()}}

    def load_params_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["lora"][k])

    def end_unit(self, u: Unit, record: dict) -> dict:
        losses = record.pop("losses")
        record = {**record, "class_name": self.images.names[u.index] if u.index >= 0 else "",
                  "loss_curve": loss_curve(losses), "config_hash": self.identity}
        if is_main():
            folder, scale = self.folder(u), lora_scale(self.cfg)  # the file's B is times alpha / rank (module doc)
            state = {k: (p.detach().float().cpu() * (scale if ".lora_B." in k else 1)).contiguous()
                     for k, p in self.params.items()}
            write_bytes(folder / WEIGHTS, save(state, metadata={"format": "pt"}))
            if u.index < 0:
                self.validate(self.grid_classes, folder / "validation" / f"step-{record['steps']:06d}.png")
            elif u.index < self.cfg.validation_classes:  # the class's row, drawn with its own adapter
                self.validate([u.index], self.out / "validation" / f"class-{u.index}.png")
            if u.index >= 0:
                write_json(folder / ADAPTER_JSON, {**record, "losses": losses})  # last: the adapter is finished
        return record

    def validation_inputs(self, c: int) -> dict:
        prompt = self.prompt(self.templates[0], c)
        return {"prompt": [prompt] * self.cfg.validation_images}

    def files(self, records: list[dict]) -> dict:
        cfg, names, per_class = self.cfg, self.images.names, self.cfg.mode == "class"
        if is_main():
            print(f"[synthtl] learned {len(records)} LoRA adapter(s) of rank {cfg.lora.rank} in "
                  f"{sum(r['train_seconds'] for r in records):.0f} s -> {self.out}")
        return {"method": "lora", "mode": cfg.mode, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha or cfg.lora.rank,
                "scale": lora_scale(cfg), "targets": list(cfg.lora.targets), "train_text_encoder":
                cfg.lora.train_text_encoder, "trainable_params": sum(p.numel() for p in self.params.values()),
                "weights": WEIGHTS, "classes": list(names),  # trainable_params: of one adapter
                "adapters": {n: f"{ADAPTERS}/{c}" for c, n in enumerate(names)} if per_class else {},
                "adapter_steps": {(r["class_name"] or "dataset"): r["steps"] for r in records},
                "steps": sum(r["steps"] for r in records),
                "steps_per_class": records[0]["steps"] if per_class else None,
                "loss_curve": records[0]["loss_curve"] if not per_class else [],
                "adapter_loss_curves": {r["class_name"]: r["loss_curve"] for r in records} if per_class else {}}

    def style_hash(self) -> str:
        return lora_hash(self.out)
