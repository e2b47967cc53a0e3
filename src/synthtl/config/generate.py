"""The generation config (`synthtl generate`): the generator, prompts, img2img and the set's files."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthtl.config.fields import check, key
from synthtl.config.finetune import DataConfig

SCHEDULERS = ("dpmsolver++", "ddim", "euler_a", "euler", "pndm")


@dataclass(frozen=True)
class GeneratorConfig:
    model: str = key("stable-diffusion-v1-5/stable-diffusion-v1-5", 'hub id, folder, single file, or "tiny"',
                     content="generator")
    revision: str = key("", 'hub branch or commit to pin ("" = main); in the weights\' identity', ignored=True)
    single_file_config: str = key("", "a single-file checkpoint offline: a diffusers folder with its configs",
                                  ignored=True)
    scheduler: str = key("dpmsolver++", "the sampler", one_of=SCHEDULERS)
    steps: int = key(25, "denoising steps (ours: DPM-Solver++ 25 steps)", ge=1)
    guidance: float = key(2.0, "classifier-free guidance (ours: 2.0; the guidance study sweeps 1.5-7.5)", ge=0)
    height: int = key(512, "image height, a multiple of 8", ge=8)
    width: int = key(512, "image width, a multiple of 8", ge=8)
    device: str = key("auto", '"auto", "cpu", "cuda", "cuda:1"', ignored=True)
    dtype: str = key("auto", '"auto" (fp16 on GPU, fp32 on CPU), "fp16", "bf16", "fp32"',
                     one_of=("auto", "fp16", "bf16", "fp32"))
    batch_size: int = key(16, "images per denoising batch (prompts of different classes share a batch)", ignored=True,
                          ge=1)
    channels_last: bool = key(True, "UNet/VAE in channels_last on CUDA", ignored=True)
    fuse_qkv: bool = key(True, "fuse attention q/k/v projections on CUDA (one matmul instead of three)", ignored=True)
    compile: bool = key(False, "torch.compile the UNet (CUDA; pays off after the first batches)", ignored=True)
    tiny_seed: int = key(0, "weights seed of model=tiny (tests, offline demo): in the weights' identity", ignored=True,
                         ge=0)

    def __post_init__(self) -> None:
        check(self.height % 8 == 0 and self.width % 8 == 0,
              f"generator.height/width={self.height}x{self.width}: must be multiples of 8")


@dataclass(frozen=True)
class PromptConfig:
    templates: str = key("single", '"single", "imagenet80", "style" (needs style_embedding) or "custom"')
    custom: list[str] = key(factory=list, help="templates for templates=custom; {} = class, {token} = style")
    suffix: str = key("", 'appended to every prompt, e.g. ", a type of aircraft."')
    negative: str = key("", 'negative prompt ("" = none)')
    style_embedding: str = key("", "learned_embeds.safetensors from `synthtl learn-style`", producer="style")
    style_lora: str = key("", "a LoRA folder (learn-style method=lora; ours), fused in", producer="style")


@dataclass(frozen=True)
class Img2ImgConfig:
    """mode=img2img (ours, beyond the paper): start from a noised real training image (`generation.img2img`)."""

    strength: float = key(0.5, "how far the source is noised: near 0 keeps it, 1 starts from (almost) pure noise",
                          gt=0, le=1)


@dataclass(frozen=True)
class GenerateConfig:
    out_dir: str = key("gen", "the generated set's folder (manifest.jsonl, images/, train/, progress/)", ignored=True)
    per_class: int = key(1000, "images per class (paper: 1k main, 0.5k-3k volume); one set serves all", ignored=True,
                         ge=1)
    seed: int = key(0, "base seed: image seed = f(seed, class index, image index)", ge=0)
    classes: list[str] = key(factory=list, help="generate only these class names (default: all)")
    # its class names enter the identity, not its images (img2img sources are checked by content in plan.json)
    data: DataConfig = key(factory=DataConfig, swap={"dataset": "classes"})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    image_format: str = key("jpeg", '"jpeg" (q=quality), "png", "webp"', one_of=("jpeg", "png", "webp"))
    quality: int = key(95, "JPEG/WebP quality (docs/method.md: JPEG q95)", ge=1, le=100)
    train_copy: int = key(256, "also write a copy with this short side for training (0 = none)", ge=0)
    max_redraws: int = key(5, "black or NaN outputs are redrawn with a new seed at most this often", ge=0)
    black_threshold: int = key(2, "an image whose every pixel value is <= this counts as black (safety-checker style)",
                               ge=0, le=255)
    shard: str = key("", '"i/N": this worker\'s shard ("" = from torchrun\'s RANK/WORLD_SIZE, else 0/1)', ignored=True)
    writers: int = key(4, "threads encoding and writing images while the GPU denoises the next batch", ignored=True,
                       ge=1)
    progress: bool = key(True, "progress bars", ignored=True)
    mode: str = key("txt2img", '"txt2img" (paper) or "img2img" (ours: start from noised real train images)',
                    one_of=("txt2img", "img2img"))
    img2img: Img2ImgConfig = field(default_factory=Img2ImgConfig)

    def __post_init__(self) -> None:
        check(self.mode == "img2img" or self.img2img == Img2ImgConfig(), "img2img.* is set but mode=txt2img: add "
              "mode=img2img to start from real training images, or drop the img2img.* keys")
        # diffusers runs int(steps * strength) of the steps, starting from the source noised to that point
        check(self.mode != "img2img" or int(self.generator.steps * self.img2img.strength) >= 1,
              f"img2img.strength={self.img2img.strength} with generator.steps={self.generator.steps} runs no "
              "denoising step (int(steps * strength) = 0): raise one of them")
        if self.shard:
            parts = self.shard.split("/")
            ok = len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) < int(parts[1])
            check(ok, f"shard={self.shard!r}: use i/N with 0 <= i < N, e.g. shard=0/4")
