"""Shared fixtures: tiny image folders in tmp_path and shrunk configs. Never touches the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Each test process gets its share of the cores (`make test` runs 2 processes): more threads than cores makes torch's
# OpenMP threads spin against each other, ten times slower. Set before torch is imported; subprocesses inherit it.
THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(THREADS)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(THREADS)

CLASSES = ("red_fox", "blue_jay", "green_frog")
COLORS = {"red_fox": (200, 40, 40), "blue_jay": (40, 40, 200), "green_frog": (40, 190, 40)}


def write_image(path: Path, color: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 40),
                fmt: str = "JPEG") -> Path:
    """A noisy image of one dominant colour (so a tiny model can learn the class)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_folder(root: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    for ci, c in enumerate(classes):
        for i in range(per_class):
            write_image(root / c / f"img_{i:03d}.jpg", COLORS.get(c, (128, 128, 128)), seed * 1000 + ci * 100 + i)
    return root


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """The suite's synthtl cache ($SYNTHTL_CACHE, inherited by subprocesses): never the user's ~/.cache/synthtl."""
    folder = tmp_path_factory.mktemp("synthtl-cache")
    os.environ["SYNTHTL_CACHE"] = str(folder)
    return folder


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    """A `data.name=folder` dataset: 3 classes, 8 train and 4 test images each."""
    root = tmp_path / "real"
    make_folder(root / "train", 8, seed=1)
    make_folder(root / "test", 4, seed=2)
    return root


@pytest.fixture
def synthetic_folder(tmp_path: Path) -> Path:
    """Class-per-folder 'synthetic' images whose class folders match `folder_data`."""
    return make_folder(tmp_path / "synthetic", 6, seed=3)


@pytest.fixture
def tiny_overrides(tmp_path: Path, folder_data: Path) -> list[str]:
    """A shrunk fine-tuning config: tiny random ResNet at 32 px, 1 epoch per stage, no workers."""
    return [
        "data.name=folder", f"data.root={folder_data}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
        "model.name=test_resnet", "model.pretrained=false", "model.img_size=32",
        "real_stage.epochs=1", "real_stage.batch_size=8", "synth_stage.epochs=1", "synth_stage.batch_size=8",
        f"out_dir={tmp_path / 'runs'}", "progress=false", "leep.enabled=true",
    ]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A 'pretrained' tiny ResNet with a 1000-class head in a local file (what model.weights= loads)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet_in1k.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), str(path))
    return path


def run_cli(*argv: str) -> int:
    from synthtl import cli

    return cli.main(list(argv))


def study_overrides(root: Path, real: Path, name: str) -> list[str]:
    """A tiny study: a random ResNet at 32 px, 1 epoch per stage, a 2-step tiny Stable Diffusion, 4 images per class."""
    return [
        f"name={name}", f"out_dir={root / name}", f"data_root={real}", f"cache_dir={root / 'cache'}",
        "finetune_preset=finetune/tiny_cpu",
        "finetune=[real_stage.epochs=1,synth_stage.epochs=1,real_stage.batch_size=8,synth_stage.batch_size=8]",
        "generate_preset=generate/tiny", "generate=[generator.steps=2]", "style_presets.dsi=style/tiny",
        "style_presets.per_class=style/tiny_per_class", "style=[steps=2,images_per_class=2]",
        "grid.datasets=[folder]", "grid.models=[test_resnet]", "grid.strategies=[vanilla,bridged++]",
        "grid.seeds=[0,1]", "grid.volumes=[4]", "grid.prompts=[single]",
        "report.features=test_resnet", "report.features_fallback=test_resnet", "report.features_pretrained=false",
        "report.max_images=40", "report.kid_subsets=3", "report.kid_subset_size=10", "report.bootstrap=200"]


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> dict:
    """One finished tiny study with its report, for read-only checks (status, resume, moves, report): a DSI style,
    a single-template and a DSI set, each unfiltered and CLIP-filtered (top 2 of 4), vanilla and bridged++ x 2 seeds.

    Returns {"cfg", "folder", "real", "overrides", "calls" (the kinds of job run, in order), "summary"}.
    """
    from synthtl import faults
    from synthtl.config import StudyConfig, load_config
    from synthtl.experiments.runner import run_study
    from synthtl.reporting.report import build_report
    from tests.filtering.tiny import tiny_clip

    root = tmp_path_factory.mktemp("finished_study")
    real = root / "real"
    make_folder(real / "train", 8, seed=1)
    make_folder(real / "test", 4, seed=2)
    clip = tiny_clip(root / "clip")
    overrides = [*study_overrides(root, real, "s"), "grid.prompts=[single,dsi]", "grid.filters=['',top2]",
                 "filter_presets.top2=filter/clip", f"filter=[clip.model={clip},keep.top_k=2,batch_size=4]"]
    cfg = load_config(StudyConfig, None, overrides)
    calls: list[str] = []
    with faults.inject("job", lambda task: calls.append(task.kind)):
        summary = run_study(cfg)
    build_report(cfg.folder, cfg.report)
    return {"cfg": cfg, "folder": Path(cfg.folder), "real": real, "overrides": overrides, "calls": calls,
            "summary": summary}


# The longest test files start first, so that `make test`'s two processes finish together (longest job first).
LONGEST_FIRST = ("tests/test_demo.py", "tests/fullsize/test_sd15.py", "tests/experiments/test_runner.py",
                 "tests/training/test_parallel.py", "tests/training/test_strategies.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
