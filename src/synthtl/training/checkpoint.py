"""The resume record: a run's checkpoints and `metrics.jsonl`, every file written atomically.

`checkpoints/` holds `stage-<name>.pt` per finished stage (final weights *and* the stage's record, so a kill before
`last.pt` is updated still counts the stage) and `last.pt` for the stage in progress (weights, optimizer, metric rows,
the run's records). `metrics.jsonl` is rewritten whole from the rows restored from `last.pt`, so redone epochs never
appear twice."""

from __future__ import annotations

import os
from pathlib import Path

from synthtl.files import load_torch, save_torch, write_jsonl
from synthtl.runtime import is_main

LAST = "last.pt"


def load(path: str | os.PathLike) -> dict:
    """A checkpoint of this run folder; a damaged or foreign file is one line (`files.load_torch`)."""
    return load_torch(path, "synthtl checkpoint", "delete it (the run redoes that part) or the run folder to start "
                      "over")


class ResumeRecord:
    """What a killed run resumes from: the finished stages' files, the in-progress state (`last.pt`) and the metric
    rows so far, mirrored to `metrics.jsonl` (and to `tb/` with `tensorboard`, to a tracker). Only rank 0 writes."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, tracker=None):
        self.folder, self.run_dir, self.tensorboard, self._tb = run_dir / "checkpoints", run_dir, tensorboard, None
        self.tracker = tracker  # `tracker.Tracker` of `tracker=mlflow|wandb`, or None
        self.last: dict | None = load(self.folder / LAST) if (self.folder / LAST).is_file() else None
        self.resumed = self.last is not None  # this session continues a killed one
        self.metrics: list[dict] = list(self.last["metrics"]) if self.last else []
        self.info: dict = self.last["info"] if self.last else {"stages": {}, "leep": {}}  # -> result.json

    def log(self, row: dict) -> None:
        self.metrics.append(row)
        if not is_main():
            return
        write_jsonl(self.run_dir / "metrics.jsonl", self.metrics)
        if self.tracker is not None:
            self.tracker.log(row)
        if self.tensorboard:
            if self._tb is None:  # `run_finetune` checked that the package is there
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self._tb.add_scalar(f"{row['stage']}/{k}", v, row["step"])
            self._tb.flush()

    def finished_stage(self, name: str) -> dict | None:
        """A finished stage's {"model", "record"}; its record is restored into `info` if `last.pt` missed it."""
        if not (self.folder / f"stage-{name}.pt").is_file():
            return None
        state = load(self.folder / f"stage-{name}.pt")
        self.info["stages"].setdefault(name, state["record"])
        return state

    def in_progress(self, name: str) -> dict | None:
        """`last.pt` if it belongs to stage `name` (the stage to continue), else None."""
        return self.last if self.last is not None and self.last["stage"] == name else None

    def save_progress(self, state: dict) -> None:
        """Writes `last.pt`: the stage's training state plus the run's metrics and records."""
        if is_main():
            save_torch(self.folder / LAST, {**state, "metrics": self.metrics, "info": self.info})

    def finish_stage(self, name: str, record: dict, state: dict) -> None:
        """Writes `stage-<name>.pt` (final weights, record, EMA and final numbers), then `last.pt`."""
        self.info["stages"][name] = record
        if is_main():
            keep = ("model", "ema", "best_val", "final_test", "final_test_ema")
            save_torch(self.folder / f"stage-{name}.pt", {**{k: state.get(k) for k in keep}, "record": record})
        self.save_progress({**state, "finished": True})
        self.last = None  # a later stage starts fresh

    def finish(self) -> None:
        """The run is finished: the resumable state is no longer needed."""
        if is_main():
            (self.folder / LAST).unlink(missing_ok=True)

    def close(self, result: dict | None = None) -> None:
        """Closes the TensorBoard writer and the tracker run (finished with `result`, else failed)."""
        if self._tb is not None:
            self._tb.close()
        if self.tracker is not None:
            self.tracker.finish(result)
