"""Optional experiment trackers (`tracker=mlflow|wandb`, off by default): a run's effective config, its per-epoch
metric rows and its test numbers, mirrored for the tools labs already use. Rank 0 only; the run folder stays the
record (a resumed run opens a new tracker run under the same name)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from importlib.metadata import version
from typing import Any

from packaging.version import Version

from synthtl.errors import ConfigError
from synthtl.identity import flat

WANDB_MIN = "0.20"  # the first release with string `reinit` modes (also the dev extra's pin)


def check(kind: str, tensorboard: bool = False) -> None:
    """Refuses a tracker (`tracker=`) or TensorBoard whose package is missing, before any data work."""
    needed = {kind: f"tracker={kind} needs the {kind} package: pip install {kind}, or set tracker=''"} if kind else {}
    if tensorboard:
        needed["torch.utils.tensorboard"] = ("tensorboard=true needs the tensorboard package: pip install "
                                             "'synthtl[tensorboard]', or set tensorboard=false")
    for package, refusal in needed.items():
        try:
            __import__(package)  # `tracker` (mlflow or wandb) is the package's name
        except ImportError:
            raise ConfigError(refusal) from None
    if kind == "wandb" and Version(found := version("wandb")) < Version(WANDB_MIN):  # `reinit="finish_previous"`
        raise ConfigError(f"tracker=wandb needs wandb >= {WANDB_MIN} (this one is {found}): pip install -U wandb, or "
                          "set tracker=''")


class Tracker:
    """One tracker run: `log(row)` per metric row (its numbers, as <stage>/<key> at the row's step), then `finish`."""

    def __init__(self, kind: str, name: str, cfg: Any):
        self.kind, self.lib = kind, importlib.import_module(kind)
        params = flat(dataclasses.asdict(cfg))
        if kind == "mlflow":
            self.lib.set_experiment("synthtl")
            self.lib.start_run(run_name=name)
            self.lib.log_params({k: str(v)[:500] for k, v in params.items()})
        else:
            project = os.environ.get("WANDB_PROJECT") or "synthtl"  # an explicit project would override the variable
            self.run = self.lib.init(project=project, name=name, config=params, reinit="finish_previous")

    def log(self, row: dict) -> None:
        values = {f"{row['stage']}/{k}": float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}
        if self.kind == "mlflow":
            self.lib.log_metrics(values, step=row["step"])
        else:
            self.run.log(values, step=row["step"])

    def finish(self, result: dict | None) -> None:
        test = {f"test/{k}": float(v) for k, v in ((result or {}).get("test") or {}).items() if isinstance(v, float)}
        if self.kind == "mlflow":
            self.lib.log_metrics(test)
            self.lib.end_run("FINISHED" if result else "KILLED")
        else:
            self.run.summary.update(test)
            self.run.finish(exit_code=0 if result else 1)
