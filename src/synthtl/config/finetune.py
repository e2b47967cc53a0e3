"""The fine-tuning config (`synthtl finetune`): data, synthetic images, model, stages and the strategies' extras."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthtl.config.fields import check, check_filter_name, key


@dataclass(frozen=True)
class DataConfig:
    name: str = key("digits", 'registered dataset (`synthtl datasets`), or "folder" / "csv"')
    root: str = key("", 'where datasets live; "" = $SYNTHTL_DATA or ./data', content="dataset")
    download: bool = key(False, "let torchvision download into root (needs internet; not every dataset can)",
                         ignored=True)
    train_dir: str = key("train", '"folder" datasets: class-per-folder train images, relative to root', ignored=True)
    test_dir: str = key("test", '"folder" datasets: class-per-folder test images, relative to root', ignored=True)
    train_csv: str = key("", '"csv" datasets: file with a `path,label` header; paths relative to root', ignored=True)
    test_csv: str = key("", '"csv" datasets: the test split\'s file, like train_csv', ignored=True)
    verify_checksums: bool = key(True, "check official files' MD5 (CIFAR); false: your own re-packed files",
                                 ignored=True)
    shots: int = key(0, "k training images per class (few-shot); 0 = the full train split", ge=0)
    split_seed: int = key(-1, "seed of the few-shot and validation draws; -1 = the run seed", ge=-1)
    split_file: str = key("", "a train split file (`synthtl split`) to use instead of drawing one", content="file")
    val_fraction: float = key(0.0, "stratified validation split carved from train, for model selection", ge=0, lt=1)
    hflip: bool = key(True, "random horizontal flip when training")
    crop_scale_min: float = key(0.08, "RandomResizedCrop lower scale bound (torchvision's default)", gt=0, le=1)
    on_bad_image: str = key("error", '"error": stop and name the file; "skip": drop it and count it in result.json',
                            one_of=("error", "skip"))
    allow_overlap: bool = key(False, "train/test images with identical bytes are an error unless this is true")
    cache: bool = key(True, "train from a pre-resized JPEG copy of every image (built once, reused by every run)")
    cache_dir: str = key("", '"" = $SYNTHTL_CACHE or ~/.cache/synthtl', ignored=True)
    cache_short_side: int = key(256, "short side of the cached copies (docs/method.md: training reads 256)", ge=8)
    decode: str = key("cpu", '"cpu": PIL in loader workers; "device": batched JPEG decode + crop/flip on the device',
                      one_of=("cpu", "device"))
    num_workers: int = key(4, "DataLoader worker processes (0 = in the main process)", ignored=True, ge=0)

    def __post_init__(self) -> None:
        check(self.decode != "device" or self.cache, "data.decode=device reads the JPEG cache: set data.cache=true")


@dataclass(frozen=True)
class SyntheticConfig:
    path: str = key("", "a generated set (`synthtl generate`) or class-per-folder images", producer="set")
    per_class: int = key(0, "use the first k images of each class (0 = all); one big set serves a volume study", ge=0)
    allow_partial: bool = key(False, "train on an unfinished generated set (recorded in result.json); else refused")
    filter: str = key("", 'train on a filter\'s kept list (<path>/filters/<name>); "" = all', producer="filter")

    def __post_init__(self) -> None:
        if self.filter:
            check_filter_name(self.filter, "synthetic.filter")


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("resnet18", 'a short name (`synthtl models`) or "timm:<name>" / "tv:<name>"')
    pretrained: bool = key(True, "ImageNet (or the name's) weights from the hub cache; false = random init")
    weights: str = key("", "local .safetensors/.pth/.bin instead of the hub", content="file")
    img_size: int = key(0, "training/eval resolution; 0 = the weights' native size", ge=0)
    channels_last: bool = key(True, "channels_last memory format on CUDA (ignored on CPU)", ignored=True)
    compile: bool = key(False, "torch.compile the classifier (nn.Module.compile: checkpoints keep their keys)",
                        ignored=True)

    def __post_init__(self) -> None:
        check(self.pretrained or not self.weights, f"model.weights={self.weights!r} is set but model.pretrained=false"
              " would ignore it: drop model.weights for random initialisation, or set model.pretrained=true")


@dataclass(frozen=True)
class StageConfig:
    epochs: int = key(10, "passes over the stage's training set (a strategy without this stage ignores it)", ge=1)
    batch_size: int = key(64, "images per optimizer step", ge=1)
    optimizer: str = key("sgd", '"sgd" (momentum) or "adamw"', one_of=("sgd", "adamw"))
    lr: float = key(0.01, "peak learning rate", gt=0)
    weight_decay: float = key(1e-4, "docs/method.md: 1e-4 for SGD, 5e-2 for AdamW (ViTs)", ge=0)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    warmup_epochs: float = key(0.0, "linear warmup, then cosine to min_lr", ge=0)
    min_lr: float = key(0.0, "the learning rate the cosine ends at", ge=0)
    label_smoothing: float = key(0.0, "label smoothing of the cross-entropy loss", ge=0, lt=1)
    mixup: bool = key(False, "Mixup/CutMix with the `mixup` section's settings; strategies switch it on where needed")
    clip_grad: float = key(0.0, "max gradient norm; 0 = off", ge=0)
    accum_steps: int = key(1, "split each batch into n micro-batches whose gradients add up (less memory, same steps)",
                           ge=1)
    eval_every: int = key(1, "evaluate the test split every n epochs (reporting only; never used for selection)", ge=1)

    def check(self, name: str) -> None:
        """The rules between keys, naming the stage (FinetuneConfig runs them for real_stage and synth_stage)."""
        check(self.accum_steps <= self.batch_size,
              f"{name}.accum_steps={self.accum_steps}: must be in 1..{name}.batch_size ({self.batch_size})")
        check(self.min_lr <= self.lr, f"{name}.min_lr={self.min_lr}: must be <= {name}.lr ({self.lr})")


@dataclass(frozen=True)
class MixupConfig:
    alpha: float = key(0.2, "Mixup alpha (docs/method.md: 0.2 in stage 1 of bridged++); 0 = off", ge=0)
    cutmix_alpha: float = key(0.0, "> 0 also enables CutMix (switching with switch_prob)", ge=0)
    prob: float = key(1.0, "probability of mixing a batch", ge=0, le=1)
    switch_prob: float = key(0.5, "probability of CutMix instead of Mixup when both are on", ge=0, le=1)

    def __post_init__(self) -> None:
        check(self.alpha > 0 or self.cutmix_alpha > 0, "mixup.alpha or mixup.cutmix_alpha must be > 0")


@dataclass(frozen=True)
class MixedConfig:
    synthetic_fraction: float = key(-1.0, "-1: all real + all synthetic images; in (0,1): that share of every epoch",
                                    ge=-1, lt=1)

    def __post_init__(self) -> None:
        f = self.synthetic_fraction
        check(f == -1.0 or 0.0 < f < 1.0, f"mixed.synthetic_fraction={f}: -1 or a value in (0, 1)")


@dataclass(frozen=True)
class MatchedConfig:
    pair_run: str = key("", "run folder of the bridged run to match (reads its step count)", producer="run")
    steps: int = key(0, "explicit optimizer step count; 0 = from pair_run, else computed from this config", ge=0)


@dataclass(frozen=True)
class EmaConfig:
    enabled: bool = key(False, "also keep an exponential moving average of the weights (timm ModelEmaV3) per stage")
    decay: float = key(0.9998, "its decay per optimizer step; the EMA model's test numbers go beside the raw ones",
                       ge=0, lt=1)


@dataclass(frozen=True)
class LeepConfig:
    enabled: bool = key(True, "LEEP of the starting model (and of the stage-1 model) on the real train split")
    max_images: int = key(0, "subsample the train split for LEEP (0 = all)", ge=0)


@dataclass(frozen=True)
class FinetuneConfig:
    strategy: str = key("vanilla", "`synthtl strategies` lists them")
    seed: int = key(0, "seed of initialisation, data order and augmentation", ge=0)
    out_dir: str = key("runs", "run folders go under here", ignored=True)
    run_name: str = key("", '"" = <dataset>/<model>/<strategy>/<shots>/seed<seed>', ignored=True)
    device: str = key("auto", '"auto", "cpu", "cuda", "cuda:1"', ignored=True)
    precision: str = key("auto", '"auto" (bf16/fp16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"',
                         one_of=("auto", "fp32", "bf16", "fp16"))
    select: str = key("last", '"last" epoch, or "val": best validation top-1 (needs data.val_fraction > 0)',
                      one_of=("last", "val"))
    checkpoint_every: int = key(1, "write the resumable checkpoint every n epochs (and always at stage end)",
                                ignored=True, ge=1)
    tensorboard: bool = key(False, "also log to TensorBoard under the run folder (rank 0)", ignored=True)
    tracker: str = key("", 'also log the config, per-epoch metrics and test numbers to an experiment tracker (rank 0): '
                       '"mlflow" (MLFLOW_TRACKING_URI, `pip install mlflow`) or "wandb" (WANDB_PROJECT, WANDB_MODE='
                       'offline without a network, `pip install wandb`); "" = none', ignored=True,
                       one_of=("", "mlflow", "wandb"))
    progress: bool = key(True, "progress bars", ignored=True)
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
        check(self.select != "val" or self.data.val_fraction > 0,
              "select=val needs a validation split: set data.val_fraction (e.g. 0.1)")
        for name in ("real_stage", "synth_stage"):
            getattr(self, name).check(name)
