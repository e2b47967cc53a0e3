"""The study config (`synthtl study`): the grid of jobs, the launcher and the report."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthtl.config.fields import check, key

# Prompt styles: the paper's (single template, DSI), the reviewers' per-class inversion, and ours beyond the paper
# (CLIP's 80 templates; a style LoRA per dataset or per class; img2img from noised real train images).
PROMPT_STYLES = ("single", "imagenet80", "dsi", "per_class", "lora", "lora_per_class", "img2img")
STYLE_PROMPTS = {"dsi": ("inversion", "dataset"), "per_class": ("inversion", "class"), "lora": ("lora", "dataset"),
                 "lora_per_class": ("lora", "class")}  # prompt style -> (style method, mode) of its style job


def axis(*default: object, help: str, **allowed: object) -> list:
    """A grid axis: a non-empty list whose every value is checked."""
    return key(factory=lambda: list(default), help=help, **allowed)


@dataclass(frozen=True)
class GridConfig:
    datasets: list[str] = axis("digits", help="registered datasets (`synthtl datasets`)")
    models: list[str] = axis("resnet18", help="classifiers (`synthtl models`)")
    strategies: list[str] = axis("vanilla", help="fine-tuning strategies (`synthtl strategies`)")
    seeds: list[int] = axis(0, help="fine-tuning seeds", ge=0)
    shots: list[int] = axis(0, help="k training images per class; 0 = full train split", ge=0)
    volumes: list[int] = axis(1000, help="synthetic images per class (one set serves all)", ge=1)
    guidance: list[float] = axis(2.0, help="classifier-free guidance of the generator", ge=0)
    prompts: list[str] = axis("single", help="how images are prompted and styled", one_of=PROMPT_STYLES)
    filters: list[str] = axis("", help='"" = every image; else a key of filter_presets')
    shared_style: bool = key(False, "few-shot runs: learn the style from the full train split instead of the k shots")

    def __post_init__(self) -> None:
        check(len(self.filters) > 0, "grid.filters is empty: use [\"\"] for unfiltered sets")
        for name in ("datasets", "models", "strategies", "seeds", "shots", "volumes", "guidance", "prompts"):
            check(len(getattr(self, name)) > 0, f"grid.{name} is empty")


@dataclass(frozen=True)
class LauncherConfig:
    kind: str = key("local", '"local" or "slurm" (submitit)', one_of=("local", "slurm"))
    parallel: int = key(1, "local: jobs at once, each on its own GPU(s); 0 = as many as the visible GPUs allow", ge=0)
    gpus_per_job: int = key(1, "local: GPUs of one fine-tuning/generation job (torchrun, data-parallel); style uses "
                            "one", ge=1)
    gen_shards: int = key(1, "split each generation job into this many shards (array tasks / parallel jobs)", ge=1)
    wait: bool = key(True, "slurm: block until each stage's jobs finish before submitting the next")
    folder: str = key("", 'submitit logs ("" = <study>/slurm)')
    partition: str = key("", "slurm partition")
    account: str = key("", "slurm account")
    qos: str = key("", "slurm quality of service")
    time_min: int = key(720, "slurm time limit of one task, in minutes", ge=1)
    gpus_per_task: int = key(1, "slurm: GPUs (and torchrun-style processes) of one fine-tuning/generation task", ge=1)
    cpus_per_task: int = key(8, "slurm CPUs of one task", ge=1)
    mem_gb: int = key(64, "slurm memory of one task, in GB", ge=1)
    array_parallelism: int = key(64, "slurm: array tasks running at once", ge=1)
    cluster: str = key("", 'submitit cluster override ("local" runs on this machine: used by the tests)')


@dataclass(frozen=True)
class ForecastConfig:
    at: list[int] = key(factory=lambda: [2000, 3000, 5000], help="synthetic images per class to predict", ge=1)
    strategies: list[str] = key(factory=list, help="strategies to forecast ([] = every strategy of the study that "
                                "trains on synthetic images)")
    plateau_tol: float = key(0.5, "pts: the smallest volume whose predicted gain over vanilla is this close to the "
                             "fitted plateau is reported", gt=0)
    bootstrap: int = key(2000, "bootstrap refits over seeds per setting (the 95% band)", ge=100)
    seed: int = key(0, "seed of the bootstrap draws: the same seed gives the same forecast", ge=0)


@dataclass(frozen=True)
class ReportConfig:
    features: str = key("timm:inception_v3.tv_in1k", "feature space for FID/KID/precision/recall and leakage")
    features_fallback: str = key("resnet50", "used when the Inception weights are not available")
    features_pretrained: bool = key(True, "false: random-weight features (plumbing checks only)")
    features_img_size: int = key(0, "0 = the feature model's native size", ge=0)
    max_images: int = key(50000, "cap on images per set for FID/KID/PR (all images below it; the table reports n)",
                          ge=1)
    features_seed: int = key(0, "seed of random-weight feature extractors (features_pretrained=false)", ge=0)
    leak_chunk: int = key(4096, "rows per block of the all-pairs leakage comparison (bounds memory)", ge=1)
    kid_subsets: int = key(50, "KID: random subsets averaged", ge=1)
    kid_subset_size: int = key(1000, "KID: images per subset (capped at the smaller set)", ge=2)
    pr_k: int = key(3, "k of the k-NN manifold estimate (improved precision/recall)", ge=1)
    clip_model: str = key("", 'a CLIP model id or folder for CLIP score ("" = skip)')
    leak_hash_bits: int = key(6, "perceptual-hash Hamming distance (of 64 bits) counted as a near-duplicate", ge=0,
                              le=64)
    leak_cosine: float = key(0.95, "feature cosine similarity counted as a near-duplicate", ge=-1, le=1)
    leak_max_listed: int = key(20, "near-duplicate pairs shown in the report", ge=0)
    grid_classes: int = key(6, "classes in the real vs synthetic image grids", ge=1)
    bootstrap: int = key(10000, "resamples of the bootstrap interval of paired differences", ge=1)
    quality: bool = key(True, "compute FID/KID/precision/recall and the leakage check")
    published: bool = key(True, "show peers' published numbers (shipped with synthtl, with sources) for the datasets")
    published_file: str = key("", "a YAML file of more published numbers (same schema as reporting/published.yaml)")


@dataclass(frozen=True)
class StudyConfig:
    name: str = key("study", "the study's name (its folder: studies/<name>)")
    description: str = key("", "what the study reproduces (shown in the report)")
    out_dir: str = key("", '"" = studies/<name>')
    data_root: str = key("", "data.root of every job")
    cache_dir: str = key("", "data.cache_dir of every job")
    finetune_preset: str = key("finetune/resnet18", "the fine-tuning preset of every run")
    model_presets: dict[str, str] = key(factory=dict, help="model -> its own fine-tuning preset (ViTs: AdamW)")
    finetune: list[str] = key(factory=list, help="overrides for every fine-tuning run")
    generate_preset: str = key("generate/sd15", "the generation preset of every set")
    generate: list[str] = key(factory=list, help="overrides for every generation job")
    style_presets: dict[str, str] = key(factory=lambda: {p: f"style/{p}" for p in STYLE_PROMPTS}, help="each style "
                                        "method's own preset (prompt style -> preset): per-class inversion keeps its "
                                        "5k steps per class")
    style: list[str] = key(factory=list, help="overrides for every style job")
    filter_presets: dict[str, str] = key(factory=dict, help="grid.filters name -> its `synthtl filter` preset")
    filter: list[str] = key(factory=list, help="overrides for every filter job (e.g. clip.model=/local/clip)")
    fewshot_recipe: str = key("finetune/fewshot_recipe", "laid over the model's preset for every k-shot run (one "
                              "recipe)")
    grid: GridConfig = field(default_factory=GridConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def folder(self) -> str:
        return self.out_dir or f"studies/{self.name}"
