"""Expanding a study grid into jobs: shared style, generation and filter jobs, then fine-tuning runs whose id hashes
their identity (identical runs collapse: vanilla ignores the volume). One set per (dataset, generator settings,
prompts, style) is made with the largest volume any run needs and serves every volume by prefix; one style per dataset
(per few-shot split if learned from the shots) serves all its sets."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from synthtl.config import (
    STYLE_PROMPTS,
    FilterConfig,
    FinetuneConfig,
    GenerateConfig,
    StudyConfig,
    StyleConfig,
    load_config,
    with_overrides,
)
from synthtl.data.datasets import DATASETS, classnames, default_root
from synthtl.errors import ConfigError
from synthtl.identity import Resolver, digest, identity
from synthtl.jobs import KINDS, output_of
from synthtl.strategies import STRATEGIES, effective_config

TEMPLATES = {"imagenet80": "imagenet80", "dsi": "style", "per_class": "style"}  # prompts.templates; else "single"


@dataclass
class Job:
    """One unit of work: a style embedding, a generated set, a filter or a fine-tuning run."""

    kind: str  # a key of `jobs.KINDS`
    id: str
    config: Any
    needs: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # what the id hashes (`synthtl.identity`)

    @property
    def hash(self) -> str:
        return digest(self.identity)

    @property
    def out(self) -> Path:
        return output_of(self.kind, self.config)


@dataclass
class Plan:
    study: StudyConfig
    jobs: list[Job]
    missing: dict[str, str] = field(default_factory=dict)  # dataset -> why it could not be fingerprinted

    def of(self, kind: str) -> list[Job]:
        return [j for j in self.jobs if j.kind == kind]

    def by_id(self) -> dict[str, Job]:
        return {j.id: j for j in self.jobs}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def _common(study: StudyConfig) -> list[str]:
    return [f"{k}={v}" for k, v in (("data.root", study.data_root), ("data.cache_dir", study.cache_dir)) if v]


def _style_job(study: StudyConfig, dataset: str, prompt: str, shots: int, seed: int, res: Resolver) -> Job:
    shots = 0 if study.grid.shared_style else shots
    method, mode = STYLE_PROMPTS[prompt]
    if prompt not in study.style_presets:
        raise ConfigError(f"style_presets has no preset for prompts={prompt!r}; add style_presets.{prompt}=<preset>")
    preset = study.style_presets[prompt]
    cfg = load_config(StyleConfig, preset, [*study.style, *_common(study), f"data.name={dataset}",
                                            f"data.shots={shots}", f"data.split_seed={seed if shots else -1}"])
    if (cfg.method, cfg.mode) != (method, mode):  # each method comes from its own preset, never from a flipped key
        raise ConfigError(f"style_presets.{prompt}={preset!r} resolves to method={cfg.method!r}, mode={cfg.mode!r}; "
                          f"{prompt} needs a preset with method: {method}, mode: {mode}")
    ident = identity(cfg, res)
    sid = f"style-{_slug(dataset)}-{prompt}-{shots}shot-{digest(ident)}"
    cfg = with_overrides(cfg, [f"out_dir={Path(study.folder) / 'styles' / sid}", "progress=false"])
    return Job("style", sid, cfg, labels={"dataset": dataset, "prompt": prompt, "shots": shots}, identity=ident)


def _gen_job(study: StudyConfig, dataset: str, guidance: float, prompt: str, style: Job | None,
             res: Resolver, shots: int = 0, seed: int = -1) -> Job:
    overrides = [*study.generate, *_common(study), f"data.name={dataset}", f"generator.guidance={guidance}",
                 f"prompts.templates={TEMPLATES.get(prompt, 'single')}"]
    if prompt == "img2img":  # from the run's own real training images: its k shots in few-shot runs
        overrides += ["mode=img2img", f"data.shots={shots}", f"data.split_seed={seed}"]
    key = "prompts.style_lora" if prompt.startswith("lora") else "prompts.style_embedding"
    if style is not None:
        overrides.append(f"{key}={style.out}")
    cfg = load_config(GenerateConfig, study.generate_preset, overrides)
    ident = identity(cfg, res, {key: style.hash} if style else {})
    tag = f"-{shots}shot" if prompt == "img2img" and shots else ""
    gid = f"gen-{_slug(dataset)}-{prompt}{tag}-g{guidance:g}-{digest(ident)}"
    cfg = with_overrides(cfg, [f"out_dir={Path(study.folder) / 'gen' / gid}", "progress=false"])
    return Job("generate", gid, cfg, needs=[style.id] if style else [],
               labels={"dataset": dataset, "guidance": guidance, "prompt": prompt}, identity=ident)


def _filter_job(study: StudyConfig, gen: Job, name: str, res: Resolver) -> Job:
    """Scoring and keeping images of a generated set (`synthtl filter`; ours, beyond the paper)."""
    if name not in study.filter_presets:
        raise ConfigError(f"grid.filters has {name!r} but filter_presets does not: add filter_presets.{name}=<preset> "
                          "(e.g. filter/clip) and its keep rule in the preset or in `filter`")
    cfg = load_config(FilterConfig, study.filter_presets[name], [*study.filter, f"set_dir={gen.out}", f"name={name}",
                                                                   "progress=false"])
    if not cfg.keep.rule:
        raise ConfigError(f"filter_presets.{name}={study.filter_presets[name]!r} sets no keep rule: add keep.top_k, "
                          "keep.fraction or keep.threshold to it or to the study's `filter` overrides")
    ident = identity(cfg, res, {"set_dir": gen.hash})
    fid = f"filter-{name}-{gen.id.removeprefix('gen-')}-{digest(ident)}"
    return Job("filter", fid, cfg, needs=[gen.id], labels={**gen.labels, "filter": name}, identity=ident)


def check_stage_overrides(study: StudyConfig) -> None:
    """Refuses a stage override the study would silently replace (a key it sets per job), naming the key to use; the
    one value the grid gives every job is let through (`data.shots=20` beside `grid.shots=[20]`)."""
    g = study.grid
    where, sets = ("the study's out_dir", None), ("grid.prompts and grid.guidance (the study's generated sets)", None)
    common = {k: (name, [v]) for k, name, v in (("data.root", "data_root", study.data_root),
                                                ("data.cache_dir", "cache_dir", study.cache_dir)) if v}
    data = {"data.name": ("grid.datasets", g.datasets), **common, "out_dir": where}
    split = {"data.shots": ("grid.shots", g.shots), "data.split_seed": ("grid.seeds (the few-shot draw)", None)}
    # stage -> key the study sets per job after the stage's own overrides -> (what sets it, its values or None)
    set_per_job = {
        "finetune": {**data, "data.shots": ("grid.shots", g.shots), "seed": ("grid.seeds", g.seeds),
                     "model.name": ("grid.models", g.models), "strategy": ("grid.strategies", g.strategies),
                     "synthetic.per_class": ("grid.volumes", g.volumes), "synthetic.filter": ("grid.filters", None),
                     "synthetic.path": sets, "run_name": where},
        "generate": {**data, "generator.guidance": ("grid.guidance", g.guidance),
                     "prompts.templates": ("grid.prompts", None), "mode": ("grid.prompts (img2img)", None),
                     "prompts.style_embedding": ("grid.prompts (the study's style jobs)", None),
                     "prompts.style_lora": ("grid.prompts (the study's style jobs)", None),
                     "per_class": ("grid.volumes (the largest)", None),
                     **(split if "img2img" in g.prompts else {})},
        "style": {**data, **split},
        "filter": {"set_dir": sets, "name": ("grid.filters (a key of filter_presets)", None)},
    }
    for stage, keys in set_per_job.items():
        for o in getattr(study, stage):
            key, _, value = o.partition("=")
            key = key.strip().lstrip("+~")
            if key not in keys:
                continue
            grid_key, values = keys[key]
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            if values is not None and len(values) == 1 and values[0] == parsed:
                continue
            shown = f"[{value}]" if grid_key.startswith("grid.") else value
            use = f"remove it from {stage}" if values is None else f"use {grid_key}={shown}"
            raise ConfigError(f"{stage}=[{o}]: the study sets {key} for each job from {grid_key}; {use}")


def expand(study: StudyConfig) -> Plan:
    """All jobs of a study, shared inputs first, deduplicated by identity."""
    check_stage_overrides(study)
    g = study.grid
    takes_synthetic = {s: STRATEGIES.get(s).takes_synthetic for s in g.strategies}  # unknown names fail first
    missing: dict[str, str] = {}
    res = Resolver(missing)  # a dry run may plan a study before its data is on this machine
    made: dict[tuple, Any] = {}  # job or base config per distinct arguments: many runs share one (configs are slow)
    jobs: dict[str, Job] = {}  # by id: identical jobs collapse
    volumes: dict[str, set[int]] = {}  # set or filter id -> the volumes its runs train on

    def once(key: tuple, make, *args) -> Any:  # a job is registered by id: identical ones collapse
        if key not in made:
            made[key] = make(*args)
        return jobs.setdefault(made[key].id, made[key]) if isinstance(made[key], Job) else made[key]

    combos = itertools.product(g.datasets, g.models, g.strategies, g.seeds, g.shots, g.volumes, g.guidance, g.prompts,
                               g.filters)
    for dataset, model, strategy, seed, shots, volume, guidance, prompt, filt in combos:
        labels = {"dataset": dataset, "model": model, "strategy": strategy, "seed": seed, "shots": shots,
                  "volume": None, "guidance": None, "prompt": None, "filter": None}
        needs, produced_by = [], {}
        if takes_synthetic[strategy]:
            style = None
            if prompt in STYLE_PROMPTS:
                style = once(("style", dataset, prompt, shots if not g.shared_style else 0, seed if shots else -1),
                             _style_job, study, dataset, prompt, shots, seed, res)
            own = (shots, seed if shots else -1) if prompt == "img2img" else (0, -1)  # img2img: one set per split
            gen = once(("generate", dataset, guidance, prompt, style.id if style else None, own),
                       _gen_job, study, dataset, guidance, prompt, style, res, *own)
            volumes.setdefault(gen.id, set()).add(volume)
            labels.update(volume=volume, guidance=guidance, prompt=prompt, filter=filt or None)
            needs, produced_by = [gen.id], {"synthetic.path": gen.hash}
            if filt:
                job = once(("filter", gen.id, filt), _filter_job, study, gen, filt, res)
                needs, produced_by = [job.id], {"synthetic.path": gen.hash, "synthetic.filter": job.hash}
                volumes.setdefault(job.id, set()).add(volume)
        presets = [study.model_presets.get(model, study.finetune_preset)]  # the grid's values are set directly below
        presets += [study.fewshot_recipe] if shots > 0 and study.fewshot_recipe else []  # one k-shot recipe everywhere
        base = once(("finetune", *presets), load_config, FinetuneConfig, presets,
                    [*study.finetune, *_common(study), f"out_dir={Path(study.folder) / 'runs'}", "progress=false"])
        syn = replace(base.synthetic, path=str(gen.out), per_class=volume, filter=filt) if needs else base.synthetic
        cfg = replace(base, strategy=strategy, seed=seed, model=replace(base.model, name=model),
                      data=replace(base.data, name=dataset, shots=shots), synthetic=syn)
        ident = identity(effective_config(cfg), res, produced_by)
        rid = _slug(f"{dataset}_{model}_{strategy}_{shots}shot_s{seed}") + f"_{digest(ident)}"
        jobs.setdefault(rid, Job("finetune", rid, replace(cfg, run_name=rid), needs=needs, labels=labels,
                                 identity=ident))
    for job in jobs.values():
        if job.kind == "generate":  # each set is generated once, with the largest volume any run needs
            job.config = replace(job.config, per_class=max(volumes[job.id]))
            job.labels["per_class"] = max(volumes[job.id])
        elif job.kind == "filter":  # a kept list for every volume its runs train on
            job.config = replace(job.config, per_class=sorted(volumes[job.id]))
            job.labels["per_class"] = max(volumes[job.needs[0]])
    return Plan(study, [j for kind in KINDS for j in jobs.values() if j.kind == kind], missing)


def num_classes_of(data) -> int | None:
    """Classes of a job's dataset (shipped names, or a present folder dataset's class folders), else None."""
    if data.name in DATASETS:
        return len(classnames(data.name))
    if data.name == "folder":
        train = Path(data.root or default_root()) / data.train_dir
        if train.is_dir():
            return sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None


def style_steps(job: Job) -> tuple[int | None, int | None]:
    """(total steps, steps per class) a style job will train; per class is None for DSI, total None when the
    number of classes is unknown until the data is present. Mirrors `StyleRecipe.total_steps`."""
    c = job.config
    classes = num_classes_of(c.data)
    if c.steps_per_class:
        return (c.steps_per_class * classes if classes else None), (c.steps_per_class if c.mode == "class" else None)
    per_class = (c.steps // classes if classes else None) if c.mode == "class" else None
    return c.steps, per_class


# Standard train-split sizes (for GPU-hour estimates when a dataset is not on this machine).
TRAIN_SIZES = {"aircraft": 6667, "cars": 8144, "food101": 75750, "dtd": 3760, "pets": 3680, "sun397": 19850,
               "caltech101": 3030, "flowers102": 2040, "dogs": 12000, "cub200": 5994, "cifar10": 50000,
               "cifar100": 50000, "eurosat": 21600, "digits": 898}


def num_classes(dataset: str) -> int:
    return len(classnames(dataset)) if dataset in DATASETS else 0
