"""Expanding a study grid into jobs: shared style and generation jobs, then fine-tuning runs with stable ids.

Datasets x models x strategies x seeds x shots x volumes x guidance x prompts become fine-tuning runs whose id is
a hash of their resolved config; identical runs collapse (a vanilla run does not depend on the synthetic volume).
One generated set per (dataset, generator settings, prompts, style) is made once with the largest volume any run
needs and serves every volume by prefix; one style embedding per dataset (per few-shot split when learned from
the k shots) serves every generated set that uses it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthtl.config import (
    FinetuneConfig,
    GenerateConfig,
    StudyConfig,
    StyleConfig,
    config_hash,
    load_config,
    with_overrides,
)
from synthtl.data.datasets import DATASETS, classnames
from synthtl.errors import ConfigError
from synthtl.training.strategies import STRATEGIES

TEMPLATES = {"single": "single", "imagenet80": "imagenet80", "dsi": "style", "per_class": "style"}
GEN_VOLATILE = ("out_dir", "per_class", "shard", "progress", "writers", "generator.batch_size", "generator.compile")
STYLE_VOLATILE = ("out_dir", "progress", "checkpoint_every", "validate_every")


@dataclass
class Job:
    """One unit of work: a style embedding, a generated set, or a fine-tuning run."""

    kind: str  # "style" | "generate" | "finetune"
    id: str
    config: Any
    needs: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        c = self.config
        if self.kind == "finetune":
            return Path(c.out_dir) / c.run_name
        return Path(c.out_dir)


@dataclass
class Plan:
    study: StudyConfig
    jobs: list[Job]

    def of(self, kind: str) -> list[Job]:
        return [j for j in self.jobs if j.kind == kind]

    def by_id(self) -> dict[str, Job]:
        return {j.id: j for j in self.jobs}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def _common(study: StudyConfig) -> list[str]:
    out = []
    if study.data_root:
        out.append(f"data.root={study.data_root}")
    if study.cache_dir:
        out.append(f"data.cache_dir={study.cache_dir}")
    return out


def _style_job(study: StudyConfig, dataset: str, prompt: str, shots: int, seed: int) -> Job:
    shots = 0 if study.grid.shared_style else shots
    mode = "class" if prompt == "per_class" else "dataset"
    if prompt not in study.style_presets:
        raise ConfigError(f"style_presets has no preset for prompts={prompt!r}; add style_presets.{prompt}=<preset>")
    preset = study.style_presets[prompt]
    overrides = [*study.style, *_common(study), f"data.name={dataset}", f"data.shots={shots}",
                 f"data.split_seed={seed if shots else -1}"]
    cfg = load_config(StyleConfig, preset, overrides)
    if cfg.mode != mode:  # each method comes from its own preset, never from a mode flip of another one
        raise ConfigError(f"style_presets.{prompt}={preset!r} resolves to mode={cfg.mode!r}; {prompt} needs a "
                          f"preset with mode: {mode}")
    sid = f"style-{_slug(dataset)}-{prompt}-{shots}shot-{config_hash(cfg, STYLE_VOLATILE)}"
    cfg = with_overrides(cfg, [f"out_dir={Path(study.folder) / 'styles' / sid}", "progress=false"])
    return Job("style", sid, cfg, labels={"dataset": dataset, "prompt": prompt, "shots": shots})


def _gen_job(study: StudyConfig, dataset: str, guidance: float, prompt: str, style: Job | None) -> Job:
    overrides = [*study.generate, *_common(study), f"data.name={dataset}", f"generator.guidance={guidance}",
                 f"prompts.templates={TEMPLATES[prompt]}"]
    if style is not None:
        overrides.append(f"prompts.style_embedding={style.out}")
    cfg = load_config(GenerateConfig, study.generate_preset, overrides)
    gid = f"gen-{_slug(dataset)}-{prompt}-g{guidance:g}-{config_hash(cfg, GEN_VOLATILE)}"
    cfg = with_overrides(cfg, [f"out_dir={Path(study.folder) / 'gen' / gid}", "progress=false"])
    return Job("generate", gid, cfg, needs=[style.id] if style else [],
               labels={"dataset": dataset, "guidance": guidance, "prompt": prompt})


def expand(study: StudyConfig) -> Plan:
    """All jobs of a study, shared inputs first, deduplicated by resolved config."""
    g = study.grid
    for s in g.strategies:
        STRATEGIES.get(s)
    styles: dict[str, Job] = {}
    gens: dict[str, Job] = {}
    gen_volume: dict[str, int] = {}
    runs: dict[str, Job] = {}
    runs_dir = Path(study.folder) / "runs"
    combos = itertools.product(g.datasets, g.models, g.strategies, g.seeds, g.shots, g.volumes, g.guidance, g.prompts)
    for dataset, model, strategy, seed, shots, volume, guidance, prompt in combos:
        needs_syn = STRATEGIES.get(strategy).needs_synthetic or strategy == "vanilla_matched"
        overrides = [*study.finetune, *_common(study), f"strategy={strategy}", f"seed={seed}", f"model.name={model}",
                     f"data.name={dataset}", f"data.shots={shots}", "progress=false"]
        labels = {"dataset": dataset, "model": model, "strategy": strategy, "seed": seed, "shots": shots,
                  "volume": None, "guidance": None, "prompt": None}
        needs = []
        if needs_syn:
            style = None
            if prompt in ("dsi", "per_class"):
                style = _style_job(study, dataset, prompt, shots, seed)
                styles.setdefault(style.id, style)
            gen = _gen_job(study, dataset, guidance, prompt, style)
            gens.setdefault(gen.id, gen)
            gen_volume[gen.id] = max(gen_volume.get(gen.id, 0), volume)
            gen_dir = Path(study.folder) / "gen" / gen.id
            overrides += [f"synthetic.path={gen_dir}", f"synthetic.per_class={volume}"]
            labels.update(volume=volume, guidance=guidance, prompt=prompt)
            needs = [gen.id]
        preset = study.model_presets.get(model, study.finetune_preset)
        cfg = load_config(FinetuneConfig, preset, overrides)
        h = config_hash(cfg, ("out_dir", "run_name", "progress", "tensorboard", "checkpoint_every"))
        rid = _slug(f"{dataset}_{model}_{strategy}_{shots}shot_s{seed}") + f"_{h}"
        if rid not in runs:
            cfg = with_overrides(cfg, [f"out_dir={runs_dir}", f"run_name={rid}"])
            runs[rid] = Job("finetune", rid, cfg, needs=needs, labels=labels)
    for gid, job in gens.items():  # each set is generated once, with the largest volume any run needs
        job.config = with_overrides(job.config, [f"per_class={gen_volume[gid]}"])
        job.labels["per_class"] = gen_volume[gid]
    return Plan(study, [*styles.values(), *gens.values(), *runs.values()])


# Standard train-split sizes (for GPU-hour estimates when a dataset is not on this machine).
TRAIN_SIZES = {"aircraft": 6667, "cars": 8144, "food101": 75750, "dtd": 3760, "pets": 3680, "sun397": 19850,
               "caltech101": 3030, "flowers102": 2040, "dogs": 12000, "cub200": 5994, "cifar10": 50000,
               "cifar100": 50000, "eurosat": 21600, "digits": 898}


def num_classes(dataset: str) -> int:
    return len(classnames(dataset)) if dataset in DATASETS else 0
