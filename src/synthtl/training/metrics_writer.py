"""One row per epoch and stage into `metrics.jsonl` (and TensorBoard when asked), from rank 0 only."""

from __future__ import annotations

from pathlib import Path

from synthtl.files import write_jsonl
from synthtl.runtime import is_main


class MetricsWriter:
    """Keeps the run's metric rows and mirrors them to disk.

    The file is rewritten whole (atomically) from the rows, which come from the resume record on a resumed run: rows
    of epochs after the last checkpoint, which the resumed run will redo, never appear twice.

    Args:
        run_dir: The run folder.
        rows: The rows so far (a resumed run's, from its checkpoint).
        tensorboard: Also log every number to `tb/` (needs the tensorboard package).
    """

    def __init__(self, run_dir: Path, rows: list[dict], tensorboard: bool = False):
        self.path = run_dir / "metrics.jsonl"
        self.rows = rows
        self.tensorboard = tensorboard
        self._tb = None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if not is_main():
            return
        write_jsonl(self.path, self.rows)
        if self.tensorboard:
            tb = self._board()
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tb.add_scalar(f"{row['stage']}/{k}", v, row["step"])
            tb.flush()

    def _board(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard=true needs the tensorboard package: pip install "
                                   "'synthtl[tensorboard]'") from e
            self._tb = SummaryWriter(str(self.path.parent / "tb"))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
