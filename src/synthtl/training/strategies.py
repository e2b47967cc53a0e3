"""The training of each data-utilisation strategy declared in `synthtl.strategies`: a short function that calls the
stages in order. A declared name without a function, or a function without a declared name, fails at import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from synthtl.config import StageConfig
from synthtl.data.imagelist import ImageList
from synthtl.data.loader import eval_loader, steps_per_epoch
from synthtl.errors import ConfigError
from synthtl.files import read_json
from synthtl.metrics.leep import leep
from synthtl.models import create_classifier, replace_head, reset_head, source_label_space
from synthtl.registry import Registry
from synthtl.runtime import derive_seed
from synthtl.strategies import STRATEGIES as DECLARED
from synthtl.strategies import TABLE
from synthtl.training.loop import predict
from synthtl.training.stage import Run, augment, dataset, run_stage

Train = Callable[[Run], nn.Module]
FUNCTIONS: Registry[Train] = Registry("training function of strategy")  # name -> the function that trains it


# ---------------------------------------------------------------------------------------------------- parts
def new_model(run: Run, pretrained: bool = True) -> nn.Module:
    """The starting model with a fresh target head; scores its LEEP first when it has a classifier head."""
    m = run.cfg.model
    pretrained = pretrained and m.pretrained
    model, run.data_config = create_classifier(m.name, None, pretrained, m.weights if pretrained else "", m.img_size)
    leeps = run.record.info["leep"]
    if pretrained and run.cfg.leep.enabled and "pretrained" not in leeps:
        space = source_label_space(model)
        model.to(run.rt.device)
        leeps["pretrained"] = leep_score(run, model) if space else None
        leeps["pretrained_label_space"] = space
    replace_head(model, run.data.num_classes, seed=derive_seed(run.cfg.seed, "head"))
    model.to(run.rt.device)
    if m.channels_last and run.rt.is_cuda:
        model.to(memory_format=torch.channels_last)
    if m.compile:
        model.compile()  # in place: state_dict keys (checkpoints) stay those of the plain model
    return model


def leep_score(run: Run, model: nn.Module) -> float:
    """LEEP of `model`'s own label space for the real training images (eval transform)."""
    images = run.data.train
    n = run.cfg.leep.max_images
    if n and n < len(images):
        g = torch.Generator().manual_seed(derive_seed(run.cfg.seed, "leep"))
        images = images.subset(sorted(torch.randperm(len(images), generator=g)[:n].tolist()))
    loader = eval_loader(dataset(run, images, train=False), 2 * run.cfg.real_stage.batch_size,
                         run.cfg.data.num_workers)
    logits, labels, _ = predict(model, loader, run.rt, augment(run, False), run.cfg.model.channels_last)
    return leep(torch.softmax(logits, dim=1), labels, run.data.num_classes)


def stage_steps(parts: list[ImageList], stage: StageConfig) -> int:
    """Optimizer steps of a stage over `parts` (what the compute-matched control matches)."""
    return stage.epochs * steps_per_epoch(sum(len(p) for p in parts), stage.batch_size)


def matched_steps(run: Run) -> int:
    """Optimizer steps of the bridged run this control is paired with."""
    m = run.cfg.matched
    if m.steps:
        return m.steps
    if m.pair_run:
        result = Path(m.pair_run) / "result.json"
        if not result.is_file():
            raise ConfigError(f"matched.pair_run={m.pair_run!r} has no result.json; finish that run first")
        return int(read_json(result)["total_steps"])
    if run.data.synthetic is None:
        raise ConfigError("vanilla_matched needs matched.steps, matched.pair_run, or synthetic.path to compute the "
                          "bridged run's step count")
    return stage_steps([run.data.synthetic], run.cfg.synth_stage) + stage_steps([run.data.train], run.cfg.real_stage)


# ---------------------------------------------------------------------------------------------- strategies
@FUNCTIONS.register("vanilla")
@FUNCTIONS.register("vanilla_mixup")  # Mixup: its declared settings
@FUNCTIONS.register("vanilla_matched")  # as many optimizer steps as the paired bridged run
@FUNCTIONS.register("from_scratch")  # random initialisation
def vanilla(run: Run) -> nn.Module:
    spec = DECLARED.get(run.cfg.strategy)
    steps = matched_steps(run) if spec.matches else None  # refused before any model work
    model = new_model(run, pretrained=spec.pretrained)
    run_stage(run, "real", model, [run.data.train], run.cfg.real_stage, total_steps=steps, final=True)
    return model


@FUNCTIONS.register("mixed")
def mixed(run: Run) -> nn.Module:
    model = new_model(run)
    f = run.cfg.mixed.synthetic_fraction
    run_stage(run, "mixed", model, [run.data.train, run.data.synthetic], run.cfg.real_stage,
              fraction=None if f < 0 else f, final=True)
    return model


@FUNCTIONS.register("synthetic_only")
def synthetic_only(run: Run) -> nn.Module:
    model = new_model(run)
    run_stage(run, "synthetic", model, [run.data.synthetic], run.cfg.synth_stage, final=True)
    return model


@FUNCTIONS.register("bridged")
@FUNCTIONS.register("bridged_reinit")
@FUNCTIONS.register("bridged++")  # Mixup in stage 1 and the head re-initialisation: its declared settings
def bridged(run: Run) -> nn.Module:
    model = new_model(run)
    run_stage(run, "synthetic", model, [run.data.synthetic], run.cfg.synth_stage)
    if run.cfg.leep.enabled and "stage1" not in run.record.info["leep"]:
        run.record.info["leep"]["stage1"] = leep_score(run, model)
    if DECLARED.get(run.cfg.strategy).reinit_head:
        run.head = {"reinitialised": True, "seed": derive_seed(run.cfg.seed, "reinit")}
        reset_head(model, run.head["seed"])
    run_stage(run, "real", model, [run.data.train], run.cfg.real_stage, final=True)
    return model


@dataclass(frozen=True)
class Trainable:
    fn: Train
    needs_synthetic: bool  # a stage trains on synthetic images (`synthtl.strategies.Strategy.synthetic`)


def bind(functions: Registry[Train]) -> Registry[Trainable]:
    """Each declared strategy with its function; refuses a name without a function or a function without a name."""
    declared = {s.name for s in TABLE}
    missing, unknown = sorted(declared - set(functions.names())), sorted(set(functions.names()) - declared)
    if missing or unknown:
        raise RuntimeError(f"strategies declared in synthtl.strategies without a training function: {missing}; "
                           f"training functions without a declared strategy: {unknown}. Declare and train each once")
    out: Registry[Trainable] = Registry("strategy")
    for s in TABLE:
        out.add(s.name, Trainable(functions.get(s.name), s.synthetic == "required"))
    return out


STRATEGIES = bind(FUNCTIONS)
