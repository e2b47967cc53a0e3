"""Checkpoints written atomically, and the resume record that owns a run's checkpoint files.

A run folder's `checkpoints/` holds `stage-<name>.pt` for every finished stage (its final weights *and* the stage's
record) and `last.pt` for the stage in progress (weights, optimizer, metrics so far, the run's records). Every file is
written atomically, and a stage's record travels inside its `stage-<name>.pt`: a run killed between writing that
file and updating `last.pt` still resumes with the stage counted.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthtl.files import load_torch, save_torch
from synthtl.runtime import is_main

LAST = "last.pt"


def save(path: str | os.PathLike, state: dict) -> None:
    save_torch(path, state)


def load(path: str | os.PathLike) -> dict:
    """A checkpoint of this run folder; a damaged or foreign file is one line (`files.load_torch`)."""
    return load_torch(path, "synthtl checkpoint", "delete it (the run redoes that part) or the run folder to start "
                      "over")


class ResumeRecord:
    """What a killed run resumes from: the finished stages' files and the in-progress state (`last.pt`).

    Args:
        folder: The run's `checkpoints/` folder.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.last: dict | None = load(folder / LAST) if (folder / LAST).is_file() else None
        self.resumed = self.last is not None  # this session continues a killed one
        self.metrics: list[dict] = list(self.last["metrics"]) if self.last else []
        self.info: dict = self.last["info"] if self.last else {"stages": {}, "leep": {}}  # -> result.json

    def stage_file(self, name: str) -> Path:
        return self.folder / f"stage-{name}.pt"

    def finished_stage(self, name: str) -> dict | None:
        """A finished stage's {"model", "record"}; its record is restored into `info` if `last.pt` missed it."""
        if not self.stage_file(name).is_file():
            return None
        state = load(self.stage_file(name))
        if "record" in state:
            self.info["stages"].setdefault(name, state["record"])
        return state

    def in_progress(self, name: str) -> dict | None:
        """`last.pt` if it belongs to stage `name` (the stage to continue), else None."""
        return self.last if self.last is not None and self.last["stage"] == name else None

    def save_progress(self, state: dict) -> None:
        """Writes `last.pt` (rank 0): the stage's training state plus the run's metrics and records."""
        if is_main():
            save(self.folder / LAST, {**state, "metrics": self.metrics, "info": self.info})

    def finish_stage(self, name: str, record: dict, state: dict) -> None:
        """Records a finished stage: `stage-<name>.pt` first (final weights, record, EMA and final numbers), then
        `last.pt`."""
        self.info["stages"][name] = record
        if is_main():
            keep = ("model", "ema", "best_val", "final_test", "final_test_ema")
            save(self.stage_file(name), {**{k: state.get(k) for k in keep}, "record": record})
        self.save_progress({**state, "finished": True})
        self.last = None  # a later stage starts fresh

    def close(self) -> None:
        """The run is finished: the resumable state is no longer needed."""
        if is_main():
            (self.folder / LAST).unlink(missing_ok=True)

