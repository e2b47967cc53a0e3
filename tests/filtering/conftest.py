"""Fixtures shared by the filter tests: one tiny generated set per test session (generating it is the slow part)."""

import shutil
from pathlib import Path

import pytest

from tests.filtering.tiny import generate, real_data, tiny_clip

PER_CLASS = 5  # 3 classes: 15 rows


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> dict:
    """{"real": a folder dataset, "gen": a finished generated set of it, "clip": a tiny transformers CLIP folder}.
    Read only: a test that filters copies "gen" first (the `gen` fixture)."""
    root = tmp_path_factory.mktemp("filter_inputs")
    real = real_data(root / "real")
    return {"real": real, "gen": generate(real, root / "gen", PER_CLASS), "clip": tiny_clip(root / "clip")}


@pytest.fixture
def gen(tiny_set, tmp_path) -> Path:
    """A fresh copy of the session's generated set (so each test filters it from scratch)."""
    return Path(shutil.copytree(tiny_set["gen"], tmp_path / "gen"))
