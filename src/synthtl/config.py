"""Typed configs: defaults < YAML preset < `a.b=value` overrides.

Every stage receives a frozen dataclass; OmegaConf stays inside this module. Unknown keys and values of the
wrong type fail at load time with the full key named; value checks live in `__post_init__`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from synthtl.errors import ConfigError

T = TypeVar("T")


# How a field enters the identity of what its stage produces (`synthtl.identity` reads this; docs/method.md):
# a value by default; `ignored(...)`: where files live, how fast, how shown; `content(...)`: an input the user gives,
# by what it holds; `producer(...)`: another stage's output, by that output's own identity.
def ignored(default: Any = None, factory: Any = None) -> Any:
    return _declared("ignored", "", default, factory)


def content(default: Any, of: str) -> Any:
    return _declared("content", of, default, None)


def producer(default: Any, of: str) -> Any:
    return _declared("producer", of, default, None)


def _declared(how: str, of: str, default: Any, factory: Any) -> Any:
    meta = {"identity": how, "of": of}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def _choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_filter_name(name: str, key: str) -> None:
    """A filter's name is one folder under <set>/filters/: the filter's `name` and `synthetic.filter` share this rule,
    so a name one accepts is never refused by the other (and '..' or 'a/b' never leave filters/)."""
    _check(all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) and bool(name.strip(".")),
           f"{key}={name!r}: use letters, digits, '-', '_' or '.' (it names the folder filters/<name>)")


# --------------------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # registered dataset (`synthtl datasets`), or "folder" / "csv"
    root: str = content("", of="dataset")  # where datasets live; "" = $SYNTHTL_DATA or ./data (identity: its content)
    download: bool = ignored(False)  # let torchvision download into root (needs internet; not every dataset can)
    train_dir: str = ignored("train")  # "folder" datasets: class-per-folder train images, relative to root
    test_dir: str = ignored("test")  # "folder" datasets: class-per-folder test images, relative to root
    train_csv: str = ignored("")  # "csv" datasets: file with a `path,label` header; paths relative to root
    test_csv: str = ignored("")
    verify_checksums: bool = ignored(True)  # check official files' MD5 (CIFAR); false: your own re-packed files
    shots: int = 0  # k training images per class (few-shot); 0 = the full train split
    split_seed: int = -1  # seed of the few-shot and validation draws; -1 = the run seed
    split_file: str = content("", of="file")  # a train split file (`synthtl split`) to use instead of drawing one
    val_fraction: float = 0.0  # stratified validation split carved from train, for model selection
    hflip: bool = True  # random horizontal flip when training
    crop_scale_min: float = 0.08  # RandomResizedCrop lower scale bound (torchvision's default)
    on_bad_image: str = "error"  # "error": stop and name the file; "skip": drop it and count it in result.json
    allow_overlap: bool = False  # train/test images with identical bytes are an error unless this is true
    cache: bool = True  # train from a pre-resized JPEG copy of every image (built once, reused by every run)
    cache_dir: str = ignored("")  # "" = $SYNTHTL_CACHE or ~/.cache/synthtl
    cache_short_side: int = 256  # short side of the cached copies (docs/method.md: training reads short side 256)
    decode: str = "cpu"  # "cpu": PIL in loader workers; "device": batched JPEG decode + crop/flip on the device
    num_workers: int = ignored(4)  # DataLoader worker processes (0 = in the main process)

    def __post_init__(self) -> None:
        _choice(self.on_bad_image, "data.on_bad_image", ("error", "skip"))
        _choice(self.decode, "data.decode", ("cpu", "device"))
        _check(self.shots >= 0, f"data.shots={self.shots}: must be >= 0 (0 = full train split)")
        _check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction={self.val_fraction}: must be in [0, 1)")
        _check(0.0 < self.crop_scale_min <= 1.0, f"data.crop_scale_min={self.crop_scale_min}: must be in (0, 1]")
        _check(self.num_workers >= 0, f"data.num_workers={self.num_workers}: must be >= 0")
        _check(self.cache_short_side >= 8, f"data.cache_short_side={self.cache_short_side}: must be >= 8")
        _check(self.decode != "device" or self.cache, "data.decode=device reads the JPEG cache: set data.cache=true")


@dataclass(frozen=True)
class SyntheticConfig:
    path: str = producer("", of="set")  # a generated set (`synthtl generate`) or class-per-folder images
    per_class: int = 0  # use the first k images of each class (0 = all); one big set serves a volume study
    allow_partial: bool = False  # train on an unfinished generated set (recorded in result.json); else refused
    filter: str = producer("", of="filter")  # train on a filter's kept list (<path>/filters/<name>); "" = all

    def __post_init__(self) -> None:
        _check(self.per_class >= 0, f"synthetic.per_class={self.per_class}: must be >= 0")
        if self.filter:
            _check_filter_name(self.filter, "synthetic.filter")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"  # a short name (`synthtl models`) or "timm:<name>" / "tv:<name>"
    pretrained: bool = True  # ImageNet (or the name's) weights from the hub cache; false = random init
    weights: str = content("", of="file")  # local .safetensors/.pth/.bin instead of the hub
    img_size: int = 0  # training/eval resolution; 0 = the weights' native size
    channels_last: bool = ignored(True)  # channels_last memory format on CUDA (ignored on CPU)
    compile: bool = ignored(False)  # torch.compile the classifier (nn.Module.compile: checkpoints keep their keys)

    def __post_init__(self) -> None:
        _check(self.img_size >= 0, f"model.img_size={self.img_size}: must be >= 0")
        _check(self.pretrained or not self.weights, f"model.weights={self.weights!r} is set but model.pretrained=false"
               " would ignore it: drop model.weights for random initialisation, or set model.pretrained=true")


@dataclass(frozen=True)
class StageConfig:
    epochs: int = 10  # passes over the stage's training set
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw"
    lr: float = 0.01  # peak learning rate
    weight_decay: float = 1e-4  # docs/method.md: 1e-4 for SGD, 5e-2 for AdamW (ViTs)
    momentum: float = 0.9
    warmup_epochs: float = 0.0  # linear warmup, then cosine to min_lr
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    mixup: bool = False  # Mixup/CutMix with the `mixup` section's settings; strategies switch it on where needed
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    accum_steps: int = 1  # split each batch into n micro-batches whose gradients add up (less memory, same steps)
    eval_every: int = 1  # evaluate the test split every n epochs (reporting only; never used for selection)

    def check(self, name: str) -> None:
        """The value checks, naming the stage's key (FinetuneConfig runs them for real_stage and synth_stage)."""
        _choice(self.optimizer, f"{name}.optimizer", ("sgd", "adamw"))
        _check(self.epochs >= 1, f"{name}.epochs={self.epochs}: must be >= 1 (a strategy that needs no such stage "
               "ignores it)")
        _check(self.batch_size >= 1, f"{name}.batch_size={self.batch_size}: must be >= 1")
        _check(1 <= self.accum_steps <= self.batch_size,
               f"{name}.accum_steps={self.accum_steps}: must be in 1..{name}.batch_size ({self.batch_size})")
        _check(self.lr > 0, f"{name}.lr={self.lr}: must be > 0")
        _check(self.eval_every >= 1, f"{name}.eval_every={self.eval_every}: must be >= 1")


@dataclass(frozen=True)
class MixupConfig:
    alpha: float = 0.2  # docs/method.md: Mixup alpha 0.2 in stage 1 of bridged++
    cutmix_alpha: float = 0.0  # > 0 also enables CutMix (switching with switch_prob)
    prob: float = 1.0  # probability of mixing a batch
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on

    def __post_init__(self) -> None:
        _check(self.alpha > 0 or self.cutmix_alpha > 0, "mixup.alpha or mixup.cutmix_alpha must be > 0")


@dataclass(frozen=True)
class MixedConfig:
    synthetic_fraction: float = -1.0  # -1: all real + all synthetic images; in (0,1): that share of every epoch

    def __post_init__(self) -> None:
        f = self.synthetic_fraction
        _check(f == -1.0 or 0.0 < f < 1.0, f"mixed.synthetic_fraction={f}: -1 or a value in (0, 1)")


@dataclass(frozen=True)
class MatchedConfig:
    pair_run: str = producer("", of="run")  # run folder of the bridged run to match (reads its step count)
    steps: int = 0  # explicit optimizer step count; 0 = from pair_run, else computed from this config


@dataclass(frozen=True)
class EmaConfig:
    enabled: bool = False  # also keep an exponential moving average of the weights (timm ModelEmaV3) per stage
    decay: float = 0.9998  # its decay per optimizer step; the EMA model's test numbers go beside the raw ones

    def __post_init__(self) -> None:
        _check(0.0 <= self.decay < 1.0, f"ema.decay={self.decay}: must be in [0, 1)")


@dataclass(frozen=True)
class LeepConfig:
    enabled: bool = True  # LEEP of the starting model (and of the stage-1 model) on the real train split
    max_images: int = 0  # subsample the train split for LEEP (0 = all)


@dataclass(frozen=True)
class FinetuneConfig:
    strategy: str = "vanilla"  # `synthtl strategies` lists them
    seed: int = 0
    out_dir: str = ignored("runs")  # run folders go under here
    run_name: str = ignored("")  # "" = <dataset>/<model>/<strategy>/<shots>/seed<seed>
    device: str = ignored("auto")  # "auto", "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # "auto" (bf16/fp16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    select: str = "last"  # "last" epoch, or "val": best validation top-1 (needs data.val_fraction > 0)
    checkpoint_every: int = ignored(1)  # write the resumable checkpoint every n epochs (and always at stage end)
    tensorboard: bool = ignored(False)  # also log to TensorBoard under the run folder (rank 0)
    progress: bool = ignored(True)  # progress bars
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synth_stage: StageConfig = field(default_factory=StageConfig)  # stage 1 on synthetic images (bridged*)
    real_stage: StageConfig = field(default_factory=StageConfig)  # the stage on real images (every strategy)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)
    matched: MatchedConfig = field(default_factory=MatchedConfig)
    leep: LeepConfig = field(default_factory=LeepConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)

    def __post_init__(self) -> None:
        _choice(self.select, "select", ("last", "val"))
        _check(self.select != "val" or self.data.val_fraction > 0,
               "select=val needs a validation split: set data.val_fraction (e.g. 0.1)")
        _check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        for name in ("real_stage", "synth_stage"):
            getattr(self, name).check(name)


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    model: str = content("stable-diffusion-v1-5/stable-diffusion-v1-5", of="generator")  # hub id, folder, file, tiny
    revision: str = ignored("")  # hub branch or commit to pin ("" = main); in the weights' identity
    single_file_config: str = ignored("")  # a single-file checkpoint offline: a diffusers folder with its configs
    scheduler: str = "dpmsolver++"  # dpmsolver++ | ddim | euler_a | euler | pndm
    steps: int = 25  # ours: DPM-Solver++ 25 steps
    guidance: float = 2.0  # ours: classifier-free guidance 2.0 (the guidance study sweeps 1.5-7.5)
    height: int = 512
    width: int = 512
    device: str = ignored("auto")
    dtype: str = "auto"  # "auto" (fp16 on GPU, fp32 on CPU), "fp16", "bf16", "fp32"
    batch_size: int = ignored(16)  # images per denoising batch (prompts of different classes share a batch)
    channels_last: bool = ignored(True)  # UNet/VAE in channels_last on CUDA
    fuse_qkv: bool = ignored(True)  # fuse attention q/k/v projections on CUDA (one matmul instead of three)
    compile: bool = ignored(False)  # torch.compile the UNet (CUDA; pays off after the first batches)
    tiny_seed: int = ignored(0)  # weights seed of model=tiny (tests, offline demo): in the weights' identity

    def __post_init__(self) -> None:
        _choice(self.scheduler, "generator.scheduler", ("dpmsolver++", "ddim", "euler_a", "euler", "pndm"))
        _choice(self.dtype, "generator.dtype", ("auto", "fp16", "bf16", "fp32"))
        _check(self.steps >= 1, f"generator.steps={self.steps}: must be >= 1")
        _check(self.guidance >= 0, f"generator.guidance={self.guidance}: must be >= 0")
        _check(self.height % 8 == 0 and self.width % 8 == 0,
               f"generator.height/width={self.height}x{self.width}: must be multiples of 8")
        _check(self.batch_size >= 1, "generator.batch_size must be >= 1")


@dataclass(frozen=True)
class PromptConfig:
    templates: str = "single"  # "single", "imagenet80", "style" (needs style_embedding) or "custom"
    custom: list[str] = field(default_factory=list)  # templates for templates=custom; {} = class, {token} = style
    suffix: str = ""  # appended to every prompt, e.g. ", a type of aircraft."
    negative: str = ""  # negative prompt ("" = none)
    style_embedding: str = producer("", of="style")  # learned_embeds.safetensors from `synthtl learn-style`
    style_lora: str = producer("", of="style")  # a LoRA folder (learn-style method=lora; ours), fused in


@dataclass(frozen=True)
class Img2ImgConfig:
    """mode=img2img (ours, beyond the paper; "real guidance": He et al. ICLR'23, DA-Fusion ICLR'24, DISEF, Diff-Mix):
    each image starts from a real training image of its class, noised to `strength`. The sources are the train split,
    or its few-shot subset (data.shots / data.split_seed / data.split_file, the one selection fine-tuning uses); a
    source byte-identical to a test image is always refused."""

    strength: float = 0.5  # how far the source is noised: near 0 keeps it, 1 starts from (almost) pure noise

    def __post_init__(self) -> None:
        _check(0.0 < self.strength <= 1.0, f"img2img.strength={self.strength}: must be in (0, 1] (a small value "
               "keeps the source, 1 starts from noise)")


@dataclass(frozen=True)
class GenerateConfig:
    out_dir: str = ignored("gen")  # the generated set's folder (manifest.jsonl, images/, train/, progress/)
    per_class: int = ignored(1000)  # per class (paper: 1k main, 0.5k-3k volume); one set serves all
    seed: int = 0  # base seed: image seed = f(seed, class index, image index)
    classes: list[str] = field(default_factory=list)  # generate only these class names (default: all)
    # the dataset whose class names are drawn: its class names enter the identity, not its images (an img2img set's
    # sources are checked by content in plan.json)
    data: DataConfig = field(default_factory=DataConfig, metadata={"swap": {"dataset": "classes"}})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    image_format: str = "jpeg"  # "jpeg" (q=quality), "png", "webp"
    quality: int = 95  # docs/method.md: JPEG q95
    train_copy: int = 256  # also write a copy with this short side for training (0 = none)
    max_redraws: int = 5  # black or NaN outputs are redrawn with a new seed at most this often
    black_threshold: int = 2  # an image whose every pixel value is <= this counts as black (safety-checker style)
    shard: str = ignored("")  # "i/N": this worker's shard ("" = from torchrun's RANK/WORLD_SIZE, else 0/1)
    writers: int = ignored(4)  # threads encoding and writing images while the GPU denoises the next batch
    progress: bool = ignored(True)
    mode: str = "txt2img"  # "txt2img" (paper) or "img2img" (ours: start from noised real train images, see img2img)
    img2img: Img2ImgConfig = field(default_factory=Img2ImgConfig)

    def __post_init__(self) -> None:
        _choice(self.image_format, "image_format", ("jpeg", "png", "webp"))
        _choice(self.mode, "mode", ("txt2img", "img2img"))
        _check(self.mode == "img2img" or self.img2img == Img2ImgConfig(), "img2img.* is set but mode=txt2img: add "
               "mode=img2img to start from real training images, or drop the img2img.* keys")
        # diffusers runs int(steps * strength) of the steps, starting from the source noised to that point
        _check(self.mode != "img2img" or int(self.generator.steps * self.img2img.strength) >= 1,
               f"img2img.strength={self.img2img.strength} with generator.steps={self.generator.steps} runs no "
               "denoising step (int(steps * strength) = 0): raise one of them")
        _check(self.per_class >= 1, f"per_class={self.per_class}: must be >= 1")
        _check(1 <= self.quality <= 100, "quality must be in 1..100")
        _check(self.train_copy >= 0, "train_copy must be >= 0")
        if self.shard:
            parts = self.shard.split("/")
            ok = len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) < int(parts[1])
            _check(ok, f"shard={self.shard!r}: use i/N with 0 <= i < N, e.g. shard=0/4")


# --------------------------------------------------------------------------------------------------------------
# Filtering synthetic images (ours, beyond the paper: He et al. ICLR'23, DISEF, ALIA, SaSPA)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipFilterConfig:
    # transformers CLIP: hub id or local folder; or "open_clip:<arch>/<weights file or tag>"
    model: str = content("openai/clip-vit-base-patch32", of="scorer")
    template: str = "a photo of a {}."  # zero-shot prompt of each class; {} = the class name

    def __post_init__(self) -> None:
        _check(self.template.count("{}") == 1, f"clip.template={self.template!r}: needs exactly one {{}} for the "
               "class name, e.g. 'a photo of a {}.'")


@dataclass(frozen=True)
class ClassifierFilterConfig:
    run: str = producer("", of="run")  # a finished `synthtl finetune` run on real images only (e.g. vanilla)
    data_root: str = ignored("")  # where the run's dataset lives now, if not at its data.root (its class order)


@dataclass(frozen=True)
class KeepConfig:
    top_k: int = 0  # keep the k best-scored images of each class (ties: the lower image index wins)
    threshold: float | None = None  # keep every image whose score is strictly above this value
    fraction: float = 0.0  # keep the best ceil(fraction * n) images of each class

    def __post_init__(self) -> None:
        _check(self.top_k >= 0, f"keep.top_k={self.top_k}: must be >= 0")
        # NaN compares false with every score (it would keep nothing) and is not JSON; inf keeps all or nothing
        _check(self.threshold is None or math.isfinite(self.threshold),
               f"keep.threshold={self.threshold}: must be a finite number (or null for another rule)")
        _check(0.0 <= self.fraction <= 1.0, f"keep.fraction={self.fraction}: must be in [0, 1] (0 = not this rule)")
        chosen = [f"keep.{k}={v}" for k, v, used in (("top_k", self.top_k, self.top_k > 0),
                                                     ("threshold", self.threshold, self.threshold is not None),
                                                     ("fraction", self.fraction, self.fraction > 0)) if used]
        _check(len(chosen) <= 1, f"{' and '.join(chosen)} are both set: keep one rule (reset the other, e.g. "
               "keep.fraction=0 or keep.threshold=null)")

    @property
    def rule(self) -> str:
        """The rule in use: "top_k", "threshold", "fraction", or "" when none is set."""
        if self.top_k:
            return "top_k"
        if self.threshold is not None:
            return "threshold"
        return "fraction" if self.fraction else ""


@dataclass(frozen=True)
class FilterConfig:
    set_dir: str = producer("", of="set")  # the generated set to filter (`synthtl filter <set>`)
    name: str = ignored("")  # the filter's folder <set>/filters/<name>; "" = the method's name
    method: str = "clip"  # "clip": zero-shot CLIP on the class names; "classifier": a run fine-tuned on real images
    score: str = "prob"  # "prob": softmax probability of the image's own class; "logit": its logit
    batch_size: int = ignored(64)  # images per forward pass
    workers: int = ignored(4)  # threads decoding images while the model scores the previous batch
    device: str = ignored("auto")  # "auto", "cpu", "cuda", "cuda:1" (scores are computed in fp32)
    progress: bool = ignored(True)
    per_class: list[int] = ignored(factory=list)  # volumes to write kept lists for (kept/<V>.json: the rule on the
    # first V images of each class); [] = the whole set (its per_class)
    clip: ClipFilterConfig = field(default_factory=ClipFilterConfig)
    classifier: ClassifierFilterConfig = field(default_factory=ClassifierFilterConfig)
    keep: KeepConfig = field(default_factory=KeepConfig)

    def __post_init__(self) -> None:
        _choice(self.method, "method", ("clip", "classifier"))
        _choice(self.score, "score", ("prob", "logit"))
        _check(self.batch_size >= 1, f"batch_size={self.batch_size}: must be >= 1")
        _check(self.workers >= 1, f"workers={self.workers}: must be >= 1")
        _check_filter_name(self.name or self.method, "name")
        t = self.keep.threshold
        # a probability is in [0, 1] and keep.threshold keeps scores strictly above it: 1 or more keeps nothing
        _check(self.score != "prob" or t is None or 0.0 <= t < 1.0,
               f"keep.threshold={t} with score=prob (a probability) keeps nothing or everything: use a value in "
               "[0, 1), or score=logit for a threshold on logits")


# --------------------------------------------------------------------------------------------------------------
# Style inversion
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraStyleConfig:
    """A LoRA on the generator (ours, beyond the paper: DataDream ECCV'24, Diff-Mix, Real-Fake)."""

    rank: int = 16  # rank of each low-rank update (DataDream: 16)
    alpha: float = 0.0  # update scale = alpha / rank; 0 = rank (scale 1, diffusers' convention)
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # UNet attention
    train_text_encoder: bool = False  # also a LoRA on each text encoder's attention (q/k/v/out_proj; SDXL: both)

    def __post_init__(self) -> None:
        _check(self.rank >= 1, f"lora.rank={self.rank}: must be >= 1 (e.g. 4, 8, 16)")
        _check(self.alpha >= 0, f"lora.alpha={self.alpha}: must be >= 0 (0 = rank)")
        _check(len(self.targets) > 0, "lora.targets is empty: name UNet modules, e.g. [to_q, to_k, to_v, to_out.0]")


@dataclass(frozen=True)
class StyleConfig:
    out_dir: str = ignored("styles/default")  # learned_embeds.safetensors, style.json, checkpoint, validation grids
    mode: str = "dataset"  # "dataset": one token S* for the whole dataset (DSI); "class": one token per class
    token: str = "<synthtl-style>"  # S*; per-class tokens append the class index: <synthtl-style-0>, ...
    vectors: int = 1  # embedding vectors per token
    initializer: str = "photo"  # the word whose embedding every new vector starts from (must be one token)
    templates: list[str] = field(default_factory=list)  # training prompts with {} = class, {token}; [] = ours
    steps: int = 20000  # paper: ~20k steps for DSI
    steps_per_class: int = 0  # if > 0: steps = this x number of classes (paper: 5k per class for per-class inversion)
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-3  # ours: 5e-3 (diffusers' textual-inversion example)
    scale_lr: bool = False  # multiply lr by batch_size x grad_accum (the example's --scale_lr)
    weight_decay: float = 1e-2  # AdamW weight decay on the learned vectors (the example's default)
    warmup_steps: int = 0  # linear warmup, then constant lr
    resolution: int = 512  # training resolution (the VAE latents are cached at this size once)
    crop: str = "random"  # "random": random square crop of the cached latent each step; "center": fixed crop
    random_flip: bool = True  # latents of the flipped images are cached too and drawn half the time
    images_per_class: int = 0  # cap on real images per class (0 = all): bounds the latent cache's memory
    gradient_checkpointing: bool = False  # trade UNet compute for memory
    seed: int = 0
    checkpoint_every: int = ignored(500)  # resumable checkpoint (atomic) every n steps
    validate_every: int = ignored(1000)  # validation grid every n steps (0 = only at the end)
    validation_classes: int = 4  # classes in the grid (the first n)
    validation_images: int = 4  # images per class (fixed seeds)
    validation_steps: int = 25  # denoising steps of the grid
    progress: bool = ignored(True)
    data: DataConfig = field(default_factory=DataConfig)  # training images: the train split (or few-shot split)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the Stable Diffusion to invert
    method: str = "inversion"  # "inversion": textual inversion (tokens); "lora": a LoRA on the UNet (ours)
    lora: LoraStyleConfig = field(default_factory=LoraStyleConfig)  # method=lora: one LoRA, or one per class

    def __post_init__(self) -> None:
        _choice(self.method, "method", ("inversion", "lora"))
        _choice(self.mode, "mode", ("dataset", "class"))
        _choice(self.crop, "crop", ("random", "center"))
        _check(self.vectors >= 1, "vectors must be >= 1")
        _check(self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
               "steps, batch_size and grad_accum must be >= 1")
        _check(self.lr > 0, "lr must be > 0")
        _check(self.resolution % 8 == 0, f"resolution={self.resolution}: must be a multiple of 8")
        _check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _check(bool(self.token.strip()) and " " not in self.token, f"token={self.token!r}: one word without spaces")


# --------------------------------------------------------------------------------------------------------------
# Studies and reports
# --------------------------------------------------------------------------------------------------------------
# How a study's synthetic images are prompted and styled: the paper's (single template, DSI), the reviewers'
# per-class inversion, and ours (CLIP's 80 templates; a style LoRA per dataset or per class; img2img from noised real
# train images, beyond the paper).
PROMPT_STYLES = ("single", "imagenet80", "dsi", "per_class", "lora", "lora_per_class", "img2img")
STYLE_PROMPTS = {"dsi": ("inversion", "dataset"), "per_class": ("inversion", "class"), "lora": ("lora", "dataset"),
                 "lora_per_class": ("lora", "class")}  # prompt style -> (style method, mode) of its style job


@dataclass(frozen=True)
class GridConfig:
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    models: list[str] = field(default_factory=lambda: ["resnet18"])
    strategies: list[str] = field(default_factory=lambda: ["vanilla"])
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: list[int] = field(default_factory=lambda: [0])  # 0 = full train split
    volumes: list[int] = field(default_factory=lambda: [1000])  # synthetic images per class (one set serves all)
    guidance: list[float] = field(default_factory=lambda: [2.0])
    prompts: list[str] = field(default_factory=lambda: ["single"])  # PROMPT_STYLES: single | dsi | per_class | ...
    filters: list[str] = field(default_factory=lambda: [""])  # "" = every image; else a key of filter_presets
    shared_style: bool = False  # few-shot runs: learn the style from the full train split instead of the k shots

    def __post_init__(self) -> None:
        for p in self.prompts:
            _choice(p, "grid.prompts", PROMPT_STYLES)
        _check(len(self.filters) > 0, "grid.filters is empty: use [\"\"] for unfiltered sets")
        for name in ("datasets", "models", "strategies", "seeds", "shots", "volumes", "guidance", "prompts"):
            _check(len(getattr(self, name)) > 0, f"grid.{name} is empty")
        _check(all(v >= 1 for v in self.volumes), "grid.volumes must be >= 1")


@dataclass(frozen=True)
class LauncherConfig:
    kind: str = "local"  # "local" or "slurm" (submitit)
    parallel: int = 1  # local: jobs at once, each on its own GPU(s); 0 = as many as the visible GPUs allow
    gpus_per_job: int = 1  # local: GPUs of one fine-tuning/generation job (torchrun, data-parallel); style uses one
    gen_shards: int = 1  # split each generation job into this many shards (array tasks / parallel jobs)
    wait: bool = True  # slurm: block until each stage's jobs finish before submitting the next
    folder: str = ""  # submitit logs ("" = <study>/slurm)
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 720
    gpus_per_task: int = 1  # slurm: GPUs (and torchrun-style processes) of one fine-tuning/generation task
    cpus_per_task: int = 8
    mem_gb: int = 64
    array_parallelism: int = 64
    cluster: str = ""  # submitit cluster override ("local" runs on this machine: used by the tests)

    def __post_init__(self) -> None:
        _choice(self.kind, "launcher.kind", ("local", "slurm"))
        _check(self.parallel >= 0 and self.gen_shards >= 1, "launcher.parallel >= 0 and launcher.gen_shards >= 1")
        _check(self.gpus_per_job >= 1 and self.gpus_per_task >= 1,
               "launcher.gpus_per_job and launcher.gpus_per_task must be >= 1")


@dataclass(frozen=True)
class ReportConfig:
    features: str = "timm:inception_v3.tv_in1k"  # feature space for FID/KID/precision/recall and leakage
    features_fallback: str = "resnet50"  # used when the Inception weights are not available
    features_pretrained: bool = True  # false: random-weight features (plumbing checks only)
    features_img_size: int = 0  # 0 = the feature model's native size
    max_images: int = 50000  # cap on images per set for FID/KID/PR (all images below it; the table reports n)
    features_seed: int = 0  # seed of random-weight feature extractors (features_pretrained=false), so reports repeat
    leak_chunk: int = 4096  # rows per block of the all-pairs leakage comparison (bounds memory)
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    pr_k: int = 3  # k of the k-NN manifold estimate (improved precision/recall)
    clip_model: str = ""  # a CLIP model id or folder for CLIP score ("" = skip)
    leak_hash_bits: int = 6  # perceptual-hash Hamming distance (of 64 bits) counted as a near-duplicate
    leak_cosine: float = 0.95  # feature cosine similarity counted as a near-duplicate
    leak_max_listed: int = 20
    grid_classes: int = 6  # classes in the real vs synthetic image grids
    bootstrap: int = 10000  # resamples of the bootstrap interval of paired differences
    quality: bool = True  # compute FID/KID/precision/recall and the leakage check
    published: bool = True  # show peers' published numbers (shipped with synthtl, with sources) for the datasets
    published_file: str = ""  # a YAML file of more published numbers (same schema as reporting/published.yaml)


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    description: str = ""  # what the study reproduces (shown in the report)
    out_dir: str = ""  # "" = studies/<name>
    data_root: str = ""  # data.root of every job
    cache_dir: str = ""  # data.cache_dir of every job
    finetune_preset: str = "finetune/resnet18"
    model_presets: dict[str, str] = field(default_factory=dict)  # model -> its own fine-tuning preset (ViTs: AdamW)
    finetune: list[str] = field(default_factory=list)  # overrides for every fine-tuning run
    generate_preset: str = "generate/sd15"
    generate: list[str] = field(default_factory=list)  # overrides for every generation job
    style_presets: dict[str, str] = field(default_factory=lambda: {
        "dsi": "style/dsi", "per_class": "style/per_class", "lora": "style/lora",
        "lora_per_class": "style/lora_per_class"})
    # ^ each style method's own preset (prompt style -> preset): per-class inversion keeps its 5k steps per class
    style: list[str] = field(default_factory=list)  # overrides for every style job
    filter_presets: dict[str, str] = field(default_factory=dict)  # grid.filters name -> its `synthtl filter` preset
    filter: list[str] = field(default_factory=list)  # overrides for every filter job (e.g. clip.model=/local/clip)
    fewshot_recipe: str = "finetune/fewshot_recipe"  # laid over the model's preset for every k-shot run (one recipe)
    grid: GridConfig = field(default_factory=GridConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def folder(self) -> str:
        return self.out_dir or f"studies/{self.name}"


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def configs_dir() -> Path:
    """The repository's `configs/` folder (editable install) or ./configs."""
    here = Path(__file__).resolve().parents[2] / "configs"
    return here if here.is_dir() else Path.cwd() / "configs"


def find_preset(name: str) -> Path:
    """A preset path: an existing file, or a name under configs/ (with or without .yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    for base in (Path.cwd() / "configs", configs_dir()):
        for cand in (base / name, base / f"{name}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"config preset {name!r} not found (looked for the file and under {configs_dir()}); "
                      "`synthtl presets` lists the shipped ones")


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """Loads a YAML preset; `_base_: other.yaml` (or a list, merged in order; relative to the file) goes underneath."""
    if path in seen:
        raise ConfigError(f"preset {path} includes itself through _base_")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path} must be a mapping of config keys")
    base = raw.pop("_base_", None)
    node = OmegaConf.create(raw)
    bases = [base] if isinstance(base, str) else list(base or [])
    parents = [_load_yaml_chain((path.parent / b).resolve(), (*seen, path)) for b in bases]
    return OmegaConf.merge(*parents, node) if parents else node


def load_config(schema: type[T], preset: str | os.PathLike | list | None = None,
                overrides: list[str] | None = None) -> T:
    """Builds a `schema` instance from its defaults, optional YAML preset(s) (merged in order) and overrides.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or a value that fails its check; the message
            names the full key.
    """
    overrides = list(overrides or [])
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value (e.g. real_stage.epochs=5)")
    try:
        node = OmegaConf.structured(schema)
        for p in [preset] if isinstance(preset, (str, os.PathLike)) else list(preset or []):
            node = OmegaConf.merge(node, _load_yaml_chain(find_preset(str(p)).resolve()))
        node = _apply_overrides(node, overrides)
        return OmegaConf.to_object(node)  # runs every __post_init__ check
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).split("\n")[0]
        if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
            raise ConfigError(f"unknown config key {key!r}: {msg}. `synthtl <command> --show-config` prints "
                              "every valid key") from None
        raise ConfigError(f"bad value for {key!r}: {msg}") from None


def _apply_overrides(node: Any, overrides: list[str]) -> Any:
    """Merges `a.b=value` overrides into `node`.

    A text key takes its value literally (", a type of aircraft." needs no quoting; one pair of surrounding quotes is
    dropped). Other keys parse the value as YAML (numbers, true/false, [lists]); a value that does not parse is one
    error line that shows the quoting.
    """
    for o in overrides:
        key, value = o.split("=", 1)
        key = key.strip()
        current = OmegaConf.select(node, key, default=None, throw_on_missing=False) if key else None
        if isinstance(current, str):
            text = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
            item = OmegaConf.create({})
            OmegaConf.update(item, key, text, merge=True)
        else:
            try:
                item = OmegaConf.from_dotlist([o])
            except OmegaConfBaseException:
                raise
            except Exception as e:  # YAML syntax errors of the value
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"override {o!r}: the value does not parse ({first}); quote it for the shell, e.g. "
                                  f"'{key}=[\"a\", \"b\"]' for a list or '{key}=\"text, with commas\"' for text"
                                  ) from None
        node = OmegaConf.merge(node, item)
    return node


def with_overrides(cfg: T, overrides: list[str]) -> T:
    """A copy of a config instance with `a.b=value` overrides applied (same checks as load_config)."""
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value")
    try:
        node = _apply_overrides(OmegaConf.structured(cfg), list(overrides))
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override for {getattr(e, 'full_key', None)!r}: {str(e).splitlines()[0]}") from None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what every run folder saves as config.yaml), in field order.

    Written from the dataclass directly: OmegaConf's structured round trip costs ~40 ms per config, which a study of
    thousands of jobs pays for every job file.
    """
    import dataclasses

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True, width=120)


def from_dict(schema: type[T], data: dict) -> T:
    """Rebuilds a config from a saved dict (e.g. a run's config.yaml), with the same checks as load_config."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"saved config does not match {schema.__name__}: {str(e).splitlines()[0]}") from None
