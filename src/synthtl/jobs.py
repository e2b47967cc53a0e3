"""The kinds of job, one table shared by the CLI and the study launchers: config class, run function, command.
`run_job(kind, file)` runs a study's resolved job YAML in this process exactly as `synthtl <command> -c file` would."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthtl import config


@dataclass(frozen=True)
class JobKind:
    command: str  # the CLI subcommand
    schema: type  # its config class

    def run(self, cfg: Any) -> dict:
        """Runs (or resumes, or skips) one job; returns its summary. A stage is imported only when a job of it runs."""
        if self.command == "learn-style":
            from synthtl.style.train import run_learn_style as run
        elif self.command == "generate":
            from synthtl.generation.run import run_generate as run
        elif self.command == "filter":
            from synthtl.filtering.run import run_filter as run
        else:
            from synthtl.training.run import run_finetune as run
        return run(cfg)


KINDS: dict[str, JobKind] = {  # in the order a study runs them
    "style": JobKind("learn-style", config.StyleConfig),
    "generate": JobKind("generate", config.GenerateConfig),
    "filter": JobKind("filter", config.FilterConfig),
    "finetune": JobKind("finetune", config.FinetuneConfig),
}


def output_of(kind: str, cfg: Any) -> Path:
    if kind == "finetune":
        from synthtl.training.run import run_dir_of

        return run_dir_of(cfg)
    if kind == "filter":
        return Path(cfg.set_dir) / "filters" / (cfg.name or cfg.method)
    return Path(cfg.out_dir)


def is_finished(kind: str, cfg: Any) -> bool:
    """Whether a job's output is finished, from its stage's own marker file (no log or manifest is read)."""
    out = output_of(kind, cfg)
    if kind == "style":
        return (out / "style.json").is_file()
    if kind == "finetune":
        return (out / "result.json").is_file()
    if kind == "filter":
        from synthtl.filtering.store import is_finished as filter_finished

        return filter_finished(cfg)
    from synthtl.data.genset import is_complete

    return is_complete(out, cfg.per_class)


def run_job(kind: str, file: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Runs a job file of `kind` (with `a.b=value` overrides, e.g. a generation shard) in this process."""
    k = KINDS[kind]
    return k.run(config.load_config(k.schema, str(file), list(overrides)))
