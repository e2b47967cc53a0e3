"""Data-utilisation strategies: each is a short function that calls the stages in order.

Paper (Li et al. 2024): vanilla, mixed, bridged, bridged++ (Mixup in stage 1 + head re-init before stage 2).
Reviewers' controls (ours to build): vanilla_matched (same optimizer steps as bridged), vanilla_mixup,
bridged_reinit (isolates the head re-init), synthetic_only, from_scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from synthtl.config import FinetuneConfig, with_overrides
from synthtl.errors import ConfigError
from synthtl.files import read_json
from synthtl.models import reset_head
from synthtl.registry import Registry
from synthtl.runtime import derive_seed
from synthtl.training.context import Context


@dataclass(frozen=True)
class Strategy:
    fn: Callable[[Context], nn.Module]
    needs_synthetic: bool
    summary: str
    settings: tuple[str, ...] = ()  # config overrides the strategy implies: written into the run's config.yaml


def effective_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """The config as the strategy runs it (e.g. bridged++ shows synth_stage.mixup: true): what the run folder saves."""
    return with_overrides(cfg, list(STRATEGIES.get(cfg.strategy).settings))


STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy(name: str, needs_synthetic: bool, summary: str, settings: tuple[str, ...] = ()):
    def deco(fn: Callable[[Context], nn.Module]) -> Callable[[Context], nn.Module]:
        STRATEGIES.add(name, Strategy(fn, needs_synthetic, summary, settings))
        return fn

    return deco


@strategy("vanilla", False, "fine-tune the pretrained model on the real images (the baseline)")
def vanilla(ctx: Context) -> nn.Module:
    model = ctx.new_model()
    ctx.run_stage("real", model, ctx.real_train(), ctx.cfg.real_stage, final=True)
    return model


@strategy("vanilla_mixup", False, "vanilla with Mixup (control: is bridged++'s gain just Mixup?)",
          settings=("real_stage.mixup=true",))
def vanilla_mixup(ctx: Context) -> nn.Module:
    model = ctx.new_model()
    ctx.run_stage("real", model, ctx.real_train(), ctx.cfg.real_stage, final=True)  # mixup: see settings
    return model


@strategy("from_scratch", False, "random initialisation, real images only (control: what pretraining buys)")
def from_scratch(ctx: Context) -> nn.Module:
    model = ctx.new_model(pretrained=False)
    ctx.run_stage("real", model, ctx.real_train(), ctx.cfg.real_stage, final=True)
    return model


@strategy("mixed", True, "one stage on real + synthetic images together (paper: hurts)")
def mixed(ctx: Context) -> nn.Module:
    model = ctx.new_model()
    f = ctx.cfg.mixed.synthetic_fraction
    ctx.run_stage("mixed", model, ctx.real_train() + ctx.synthetic_train(), ctx.cfg.real_stage,
                  fraction=None if f < 0 else f, final=True)
    return model


@strategy("synthetic_only", True, "trained on synthetic images only, tested on real (control)")
def synthetic_only(ctx: Context) -> nn.Module:
    model = ctx.new_model()
    ctx.run_stage("synthetic", model, ctx.synthetic_train(), ctx.cfg.synth_stage, final=True)
    return model


def _bridged(ctx: Context, reinit: bool) -> nn.Module:
    model = ctx.new_model()
    ctx.run_stage("synthetic", model, ctx.synthetic_train(), ctx.cfg.synth_stage)
    ctx.record_leep("stage1", model)
    if reinit:
        reset_head(model, derive_seed(ctx.cfg.seed, "reinit"))
    ctx.run_stage("real", model, ctx.real_train(), ctx.cfg.real_stage, final=True)
    return model


@strategy("bridged", True, "stage 1 synthetic only, stage 2 real, head kept")
def bridged(ctx: Context) -> nn.Module:
    return _bridged(ctx, reinit=False)


@strategy("bridged_reinit", True, "bridged with the head re-initialised before stage 2")
def bridged_reinit(ctx: Context) -> nn.Module:
    return _bridged(ctx, reinit=True)


@strategy("bridged++", True, "bridged with Mixup in stage 1 and the head re-initialised before stage 2",
          settings=("synth_stage.mixup=true",))
def bridged_pp(ctx: Context) -> nn.Module:
    return _bridged(ctx, reinit=True)  # Mixup in stage 1: see settings


def matched_steps(ctx: Context) -> int:
    """Optimizer steps of the bridged run this control is paired with."""
    m = ctx.cfg.matched
    if m.steps:
        return m.steps
    if m.pair_run:
        result = Path(m.pair_run) / "result.json"
        if not result.is_file():
            raise ConfigError(f"matched.pair_run={m.pair_run!r} has no result.json; finish that run first")
        return int(read_json(result)["total_steps"])
    if ctx.data.synthetic is None:
        raise ConfigError("vanilla_matched needs matched.steps, matched.pair_run, or synthetic.path to compute the "
                          "bridged run's step count")
    return (ctx.stage_steps(ctx.synthetic_train(), ctx.cfg.synth_stage)
            + ctx.stage_steps(ctx.real_train(), ctx.cfg.real_stage))


@strategy("vanilla_matched", False, "vanilla with as many optimizer steps as the paired bridged run (compute control)")
def vanilla_matched(ctx: Context) -> nn.Module:
    steps = matched_steps(ctx)
    model = ctx.new_model()
    ctx.run_stage("real", model, ctx.real_train(), ctx.cfg.real_stage, total_steps=steps, final=True)
    return model


def list_strategies() -> list[tuple[str, str]]:
    return [(name, s.summary) for name, s in STRATEGIES.items()]
