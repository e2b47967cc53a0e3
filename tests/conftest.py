"""Shared fixtures: tiny image folders in tmp_path and shrunk configs. Never touches the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(2)

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
