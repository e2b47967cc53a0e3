"""The data-utilisation strategies (paper: Li et al. 2024), declared once: origin, stages in order, implied settings.
Planning, estimates and the report read it without torch or training code; `training/strategies.py` trains each."""

from __future__ import annotations

from dataclasses import dataclass

from synthtl.config import FinetuneConfig, with_overrides
from synthtl.registry import Registry

# What each stage trains on: "synthetic" (synth_stage settings), "real" and "mixed" (real + synthetic; real_stage).
STAGES = ("synthetic", "real", "mixed")


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    origin: str  # "paper", "reviewers" (a control reviewers asked for) or "ours" (a control of ours)
    stages: tuple[str, ...]  # in the order they run
    settings: tuple[str, ...] = ()  # config overrides it implies: written into the run's config.yaml
    matches: str = ""  # the strategy whose optimizer steps it trains for (so it costs as much)
    reinit_head: bool = False  # the classifier head is re-initialised before the last stage (seed: `head_seed`)
    pretrained: bool = True  # False: the model starts from random weights, whatever model.pretrained says

    def __post_init__(self):
        if not self.stages or set(self.stages) - set(STAGES):
            raise ValueError(f"strategy {self.name!r}: stages {self.stages} must be some of {STAGES}")

    @property
    def synthetic(self) -> str:
        """"required" (a stage trains on synthetic images), "optional" (reads a set only to count the steps of the
        run it matches when matched.steps and matched.pair_run are not given) or "none"."""
        if {"synthetic", "mixed"} & set(self.stages):
            return "required"
        return "optional" if self.matches and STRATEGIES.get(self.matches).synthetic == "required" else "none"

    @property
    def takes_synthetic(self) -> bool:
        """A study gives its runs a generated set, and the report compares them within that synthetic setting."""
        return self.synthetic != "none"

    @property
    def cost_stages(self) -> tuple[str, ...]:
        """The stages its GPU time is estimated from (a matched control trains as long as the run it matches)."""
        return STRATEGIES.get(self.matches).stages if self.matches else self.stages


# The order is the report's table order.
TABLE = (
    Strategy("vanilla", "fine-tune the pretrained model on the real images (the baseline)", "paper", ("real",)),
    Strategy("vanilla_matched", "vanilla with as many optimizer steps as the paired bridged run (compute control)",
             "reviewers", ("real",), matches="bridged"),
    Strategy("vanilla_mixup", "vanilla with Mixup (control: is bridged++'s gain just Mixup?)", "reviewers", ("real",),
             settings=("real_stage.mixup=true",)),
    Strategy("from_scratch", "random initialisation, real images only (control: what pretraining buys)", "reviewers",
             ("real",), pretrained=False),
    Strategy("mixed", "one stage on real + synthetic images together (paper: hurts)", "paper", ("mixed",)),
    Strategy("synthetic_only", "trained on synthetic images only, tested on real (control)", "reviewers",
             ("synthetic",)),
    Strategy("bridged", "stage 1 synthetic only, stage 2 real, head kept", "paper", ("synthetic", "real")),
    Strategy("bridged_reinit", "bridged with the head re-initialised before stage 2", "ours", ("synthetic", "real"),
             reinit_head=True),
    Strategy("bridged++", "bridged with Mixup in stage 1 and the head re-initialised before stage 2", "paper",
             ("synthetic", "real"), settings=("synth_stage.mixup=true",), reinit_head=True),
)

STRATEGIES: Registry[Strategy] = Registry("strategy")
for _s in TABLE:
    STRATEGIES.add(_s.name, _s)


def effective_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """The config as the strategy runs it (e.g. bridged++ shows synth_stage.mixup: true): what the run folder saves."""
    return with_overrides(cfg, list(STRATEGIES.get(cfg.strategy).settings))


def what_runs(cfg: FinetuneConfig) -> str:
    """The strategy's effective settings in words, with the seeds it derives (the header of a run's config.yaml)."""
    from synthtl.runtime import derive_seed  # torch-free

    s = STRATEGIES.get(cfg.strategy)
    lines = [f"strategy {s.name}: {s.summary}; stages: {' -> '.join(s.stages)}"]
    if s.settings:
        lines.append(f"its settings, applied below: {' '.join(s.settings)}")
    if s.reinit_head:
        lines.append(f"the classifier head is re-initialised before the {s.stages[-1]} stage with seed "
                     f"{derive_seed(cfg.seed, 'reinit')} (result.json: stages.{s.stages[-1]}.head)")
    return "".join(f"# {line}\n" for line in lines)


def rank(name: str) -> int:
    """Position in the table (the report's order); a name it does not know goes last."""
    return next((i for i, s in enumerate(TABLE) if s.name == name), len(TABLE))


def takes_synthetic(name: str) -> bool:
    """Whether runs of `name` have a synthetic setting (a name the table does not know: no)."""
    return name in STRATEGIES and STRATEGIES.get(name).takes_synthetic
