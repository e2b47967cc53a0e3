"""Checkpoints written atomically: a killed run leaves the previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from synthtl.files import save_torch


def save(path: str | os.PathLike, state: dict) -> None:
    save_torch(path, state)


def load(path: str | os.PathLike) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_state() -> dict:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
