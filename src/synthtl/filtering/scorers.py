"""Scoring models of a filter: zero-shot CLIP on the class names, or a classifier fine-tuned on the real train split.
A filter's identity counts its scorer's weights by content, never where they live (`synthtl.identity`)."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from synthtl.config import DataConfig, FilterConfig, from_dict
from synthtl.errors import ConfigError, DataError, SynthTLError, cause
from synthtl.files import load_torch, read_json

OPEN_CLIP = "open_clip:"


@dataclass
class Scorer:
    kind: str  # "clip" or "classifier"
    labels: list[str]  # names of the model's classes
    targets: dict[int, int]  # class_index of the set -> index into `labels`
    prepare: Callable[[list[Image.Image]], Any]  # PIL images -> model input on the device
    logits: Callable[[Any], torch.Tensor]  # model input -> B x len(labels) float32 logits


def check_source(cfg: FilterConfig) -> None:
    """Refusals needing no model (missing CLIP folder; unfinished or synthetic classifier run), before any folder."""
    if cfg.method == "classifier":
        classifier_run(cfg)
    elif not cfg.clip.model.startswith(OPEN_CLIP):
        _local_clip(cfg.clip.model)


def _local_clip(model_id: str) -> str:
    """clip.model as transformers should load it ("~" expanded); refused when it is a path that does not exist."""
    local = Path(model_id).expanduser()
    if looks_like_path(model_id) and not local.exists():  # else transformers calls it a malformed repo id
        raise ConfigError(f"clip.model={model_id!r} does not exist; give a local CLIP folder (save_pretrained) or a "
                          "hub id (e.g. openai/clip-vit-base-patch32)")
    return str(local) if model_id.startswith("~") else model_id  # transformers does not expand "~"


def load_scorer(cfg: FilterConfig, classes: list[tuple[int, str, str]], device: torch.device) -> Scorer:
    """The scorer of `cfg.method` for the set's classes [(index, id, name)]; CLIP prompts: `clip.template`."""
    if cfg.method == "classifier":
        return classifier_scorer(cfg, classes, device)
    build = open_clip_scorer if cfg.clip.model.startswith(OPEN_CLIP) else clip_scorer
    return Scorer("clip", [name for _, _, name in classes], {c: j for j, (c, _, _) in enumerate(classes)},
                  *build(cfg.clip.model, [cfg.clip.template.format(name) for _, _, name in classes], device))


def looks_like_path(model: str) -> bool:
    """Whether clip.model is meant as a local path rather than a hub id ("name" or "namespace/name")."""
    return (model.startswith(("/", "./", "../", "~", ".\\", "..\\")) or model in (".", "..") or model.count("/") > 1
            or (os.sep != "/" and os.sep in model))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _features(out) -> torch.Tensor:
    """transformers' CLIP features: a tensor, or (newer versions) an output whose pooler_output they are."""
    return _unit(out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def clip_scorer(model_id: str, prompts: list[str], device: torch.device) -> tuple[Callable, Callable]:
    """(prepare, logits) of a transformers CLIP from a hub id (cache only when offline) or a local folder."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_id = _local_clip(model_id)
    try:
        model = CLIPModel.from_pretrained(model_id).eval()
        processor = CLIPProcessor.from_pretrained(model_id)
    except Exception as e:  # not cached offline, not a CLIP folder: many types
        raise ConfigError(f"clip.model={model_id!r} could not be loaded as a transformers CLIP ({cause(e)}); "
                          "offline, set clip.model to a local folder holding a CLIP model and its processor "
                          "(save_pretrained), or to a hub id already in the cache") from None
    model.to(device)
    with torch.inference_mode():
        text = processor(text=prompts, return_tensors="pt", padding=True)
        text_features = _features(model.get_text_features(input_ids=text["input_ids"].to(device),
                                                          attention_mask=text["attention_mask"].to(device)))
        scale = model.logit_scale.exp().float()
    return (lambda images: processor(images=images, return_tensors="pt")["pixel_values"].to(device),
            lambda pixels: scale * _features(model.get_image_features(pixel_values=pixels)) @ text_features.T)


def open_clip_scorer(spec: str, prompts: list[str], device: torch.device) -> tuple[Callable, Callable]:
    """(prepare, logits) of OpenCLIP: clip.model="open_clip:<arch>/<weights file or tag>" (`open_clip.list_models()`;
    a tag's weights from the hub, cache only offline), with the preprocessing and tokenizer OpenCLIP attaches."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"clip.model={spec!r} needs OpenCLIP, which is not installed: pip install open_clip_torch "
                          "(it is in synthtl's dev extras), or set clip.model to a transformers CLIP (a hub id or a "
                          "local folder)") from None
    arch, pretrained, is_tag = _open_clip_source(open_clip, spec)
    quiet = logging.root.manager.disable
    logging.disable(logging.ERROR)  # OpenCLIP logs its failures to the root logger: the one line below says it all
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device="cpu",
                                                                     precision="fp32")
        tokens = open_clip.get_tokenizer(arch)(prompts)
    except Exception as e:  # weights not cached offline, a file of another arch, a tokenizer from the hub: many types
        fix = (f"offline, a tag's weights must be in the local cache; or set clip.model=open_clip:{arch}/<path to a "
               "local weights file>") if is_tag else f"check that {pretrained!r} holds weights of the {arch!r} arch"
        raise ConfigError(f"clip.model={spec!r} could not be loaded by OpenCLIP ({cause(e)}); {fix}") from None
    finally:
        logging.disable(quiet)
    model.eval().to(device)  # dropout and patch dropout off: a score must not depend on the batch or the run
    with torch.inference_mode():
        text_features = _unit(model.encode_text(tokens.to(device)).float())
        scale = model.logit_scale.exp().float()
        # SigLIP-style models add a learned bias to every logit: it moves logits (score=logit), never probabilities
        bias = model.logit_bias.float() if getattr(model, "logit_bias", None) is not None else 0.0
    return (lambda images: torch.stack([preprocess(im) for im in images]).to(device),
            lambda pixels: scale * _unit(model.encode_image(pixels).float()) @ text_features.T + bias)


def _open_clip_source(open_clip, spec: str) -> tuple[str, str, bool]:
    """(arch, weights file or tag, whether it is a tag) of "open_clip:<arch>/<weights>", checked before loading."""
    arch, _, pretrained = spec[len(OPEN_CLIP):].partition("/")
    if arch.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"clip.model={spec!r}: OpenCLIP's {arch.split(':')[0]}: names are not supported; use "
                          "clip.model=open_clip:<arch>/<path to a weights file> (or a pretrained tag of the arch)")
    if arch not in open_clip.list_models():
        near = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise ConfigError(f"clip.model={spec!r}: OpenCLIP has no arch {arch!r}"
                          f"{f' (did you mean {near}?)' if near else ''}; use a name of open_clip.list_models(), e.g. "
                          f"open_clip:ViT-B-32/<weights file>")
    if not pretrained:
        raise ConfigError(f"clip.model={spec!r} names no weights, and a random CLIP would score noise; set "
                          f"clip.model=open_clip:{arch}/<path to a weights file> (or a pretrained tag: "
                          f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)[:4]) or 'none for this arch'})")
    if open_clip.get_pretrained_cfg(arch, pretrained):
        return arch, pretrained, True
    if not Path(pretrained).is_file():
        raise ConfigError(f"clip.model={spec!r}: no weights file {pretrained!r}"
                          f"{' (a folder)' if Path(pretrained).is_dir() else ''} and no pretrained tag of that name "
                          f"for {arch}; give the path of a weights file (state_dict .pt/.bin/.safetensors) or one of "
                          f"its tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)[:6]) or 'none'}")
    return arch, pretrained, False


def final_weights(run: Path, result: dict) -> Path:
    """A finished run's reported weights: best_val.pt with select=val, else its last stage's checkpoint."""
    if str(result.get("selected", "last")).startswith("val:") and (run / "checkpoints" / "best_val.pt").is_file():
        return run / "checkpoints" / "best_val.pt"
    stages = list(result.get("stages") or {})
    if not stages:
        raise DataError(f"classifier.run={str(run)!r}: its result.json lists no finished stage; re-run the run")
    path = run / "checkpoints" / f"stage-{stages[-1]}.pt"
    if not path.is_file():
        raise DataError(f"classifier.run={str(run)!r} has no {path.relative_to(run)} (its final weights): were its "
                        "checkpoints deleted? Re-run it (delete its result.json) or pick another run")
    return path


def classifier_run(cfg: FilterConfig) -> tuple[Path, dict, dict]:
    """(folder, config.yaml, result.json) of classifier.run, refused unless it is a finished run on real images only.
    Only its train-split classes and final weights are used (best val epoch with select=val: val is carved from
    train), never its test split or scores. Any run with synthetic.path is refused (even vanilla_matched): a classifier
    that learned the generator's look would rank synthetic images by resemblance to those it saw, not to the class."""
    if not cfg.classifier.run:
        raise ConfigError("method=classifier needs classifier.run=<a run folder of `synthtl finetune`> (a classifier "
                          "fine-tuned on the real train split)")
    run = Path(cfg.classifier.run)
    if not (run / "result.json").is_file() or not (run / "config.yaml").is_file():
        raise DataError(f"classifier.run={str(run)!r} is not a finished `synthtl finetune` run (no result.json and "
                        "config.yaml); finish the run or point at another run folder")
    result = read_json(run / "result.json")
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    synthetic = str((run_cfg.get("synthetic") or {}).get("path") or result.get("synthetic") or "")
    if synthetic or (result.get("images") or {}).get("synthetic"):
        same = synthetic and Path(synthetic).resolve() == Path(cfg.set_dir).resolve()
        raise ConfigError(f"classifier.run={str(run)!r} used synthetic images (strategy="
                          f"{run_cfg.get('strategy', result.get('strategy'))}, synthetic.path={synthetic!r}"
                          f"{' (the set being filtered)' if same else ''}); "
                          "the filter needs a classifier fine-tuned on the real train split only: give a real-only "
                          "run such as strategy=vanilla without synthetic.path")
    return run, run_cfg, result


def classifier_scorer(cfg: FilterConfig, classes: list[tuple[int, str, str]], device: torch.device) -> Scorer:
    """A classifier fine-tuned on the real train split: a `synthtl finetune` run folder, with its own preprocessing."""
    from synthtl.data.datasets import load_data
    from synthtl.data.synthetic import _match_classes
    from synthtl.data.transforms import eval_transform
    from synthtl.models import create_classifier

    run, run_cfg, result = classifier_run(cfg)
    data = from_dict(DataConfig, {**run_cfg["data"], **({"root": cfg.classifier.data_root}
                                                        if cfg.classifier.data_root else {})})
    try:
        real = load_data(data, "train", download=False)  # the run's label order is its dataset's class order
    except SynthTLError as e:
        raise DataError(f"classifier.run={str(run)!r}: its classes come from its dataset (data.name={data.name}, "
                        f"data.root={data.root!r}), which cannot be listed here ({e}); set classifier.data_root to "
                        "where that dataset lives") from None
    if real.num_classes != result["num_classes"]:
        raise DataError(f"classifier.run={str(run)!r} has {result['num_classes']} classes but its dataset now has "
                        f"{real.num_classes}; set classifier.data_root to the dataset the run was trained on")
    mapping = _match_classes([(cid, name) for _, cid, name in classes], real, f"classifier.run={run}")
    weights = final_weights(run, result)
    model, data_config = create_classifier(run_cfg["model"]["name"], result["num_classes"], pretrained=False,
                                           img_size=run_cfg["model"].get("img_size", 0))
    model.load_state_dict(load_torch(weights, "synthtl checkpoint",
                                     f"re-run {run} or choose another classifier.run")["model"])
    model.eval().to(device)
    transform = eval_transform(data_config)
    return Scorer("classifier", list(real.names), {c: mapping[j] for j, (c, _, _) in enumerate(classes)},
                  lambda images: torch.stack([transform(im) for im in images]).to(device), lambda x: model(x).float())
