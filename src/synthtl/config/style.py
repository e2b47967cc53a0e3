"""The style config (`synthtl learn-style`): textual inversion (DSI, per class) or a LoRA (ours)."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthtl.config.fields import check, key
from synthtl.config.finetune import DataConfig
from synthtl.config.generate import GeneratorConfig


@dataclass(frozen=True)
class LoraStyleConfig:
    """A LoRA on the generator (ours, beyond the paper: DataDream ECCV'24, Diff-Mix, Real-Fake)."""

    rank: int = key(16, "rank of each low-rank update (DataDream: 16)", ge=1)
    alpha: float = key(0.0, "update scale = alpha / rank; 0 = rank (scale 1, diffusers' convention)", ge=0)
    targets: list[str] = key(factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], help="the UNet modules that get "
                             "a LoRA (attention projections)")
    train_text_encoder: bool = key(False, "also a LoRA on each text encoder's attention (q/k/v/out_proj; SDXL: both)")

    def __post_init__(self) -> None:
        check(len(self.targets) > 0, "lora.targets is empty: name UNet modules, e.g. [to_q, to_k, to_v, to_out.0]")


@dataclass(frozen=True)
class StyleConfig:
    out_dir: str = key("styles/default", "learned_embeds.safetensors, style.json, checkpoint, validation grids",
                       ignored=True)
    mode: str = key("dataset", '"dataset": one token S* for the whole dataset (DSI); "class": one token per class',
                    one_of=("dataset", "class"))
    token: str = key("<synthtl-style>", "S*; per-class tokens append the class index: <synthtl-style-0>, ...")
    vectors: int = key(1, "embedding vectors per token", ge=1)
    initializer: str = key("photo", "the word whose embedding every new vector starts from (must be one token)")
    templates: list[str] = key(factory=list, help="training prompts with {} = class, {token}; [] = ours")
    steps: int = key(20000, "optimizer steps (paper: ~20k for DSI)", ge=1)
    steps_per_class: int = key(0, "if > 0: steps = this x number of classes (paper: 5k per class for per-class "
                               "inversion)", ge=0)
    batch_size: int = key(4, "images per step", ge=1)
    grad_accum: int = key(1, "micro-batches whose gradients add up to one step", ge=1)
    lr: float = key(5e-3, "learning rate (ours: 5e-3, diffusers' textual-inversion example)", gt=0)
    scale_lr: bool = key(False, "multiply lr by batch_size x grad_accum (the example's --scale_lr)")
    weight_decay: float = key(1e-2, "AdamW weight decay on the learned vectors (the example's default)", ge=0)
    warmup_steps: int = key(0, "linear warmup, then constant lr", ge=0)
    resolution: int = key(512, "training resolution, a multiple of 8 (the VAE latents are cached at this size once)",
                          ge=8)
    crop: str = key("random", '"random": random square crop of the cached latent each step; "center": fixed crop',
                    one_of=("random", "center"))
    random_flip: bool = key(True, "latents of the flipped images are cached too and drawn half the time")
    images_per_class: int = key(0, "cap on real images per class (0 = all): bounds the latent cache's memory", ge=0)
    gradient_checkpointing: bool = key(False, "trade UNet compute for memory")
    seed: int = key(0, "seed of the initial vectors, the draws and the noise", ge=0)
    checkpoint_every: int = key(500, "resumable checkpoint (atomic) every n steps", ignored=True, ge=1)
    validate_every: int = key(1000, "validation grid every n steps (0 = only at the end)", ignored=True, ge=0)
    validation_classes: int = key(4, "classes in the grid (the first n)", ge=1)
    validation_images: int = key(4, "images per class (fixed seeds)", ge=1)
    validation_steps: int = key(25, "denoising steps of the grid", ge=1)
    progress: bool = key(True, "progress bars", ignored=True)
    data: DataConfig = field(default_factory=DataConfig)  # training images: the train split (or few-shot split)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the Stable Diffusion to invert
    method: str = key("inversion", '"inversion": textual inversion (tokens); "lora": a LoRA on the UNet (ours)',
                      one_of=("inversion", "lora"))
    lora: LoraStyleConfig = field(default_factory=LoraStyleConfig)  # method=lora: one LoRA, or one per class

    def __post_init__(self) -> None:
        check(self.resolution % 8 == 0, f"resolution={self.resolution}: must be a multiple of 8")
        check(bool(self.token.strip()) and " " not in self.token, f"token={self.token!r}: one word without spaces")
