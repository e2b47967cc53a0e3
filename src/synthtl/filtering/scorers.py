"""Scoring models of a filter: zero-shot CLIP on the class names, or a classifier fine-tuned on the real train split.

Each builder returns a `Scorer`: its label space, which of its classes each class of the set is, a function turning
PIL images into model input, and one giving logits. The identity of a scorer hashes its weights and preprocessing,
never where they live.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from synthtl.config import DataConfig, FilterConfig, from_dict
from synthtl.errors import ConfigError, DataError, SynthTLError
from synthtl.files import read_json

OPEN_CLIP = "open_clip:"


@dataclass
class Scorer:
    identity: dict  # what the scores depend on (weights hash, preprocessing), recorded in spec.json
    labels: list[str]  # names of the model's classes
    targets: dict[int, int]  # class_index of the set -> index into `labels`
    prepare: Callable[[list[Image.Image]], Any]  # PIL images -> model input on the device
    logits: Callable[[Any], torch.Tensor]  # model input -> B x len(labels) float32 logits


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes, bytes): equal weights, equal hash."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_scorer(cfg: FilterConfig, classes: list[tuple[int, str, str]], device: torch.device) -> Scorer:
    """The scorer `cfg.method` names, for the set's classes [(class_index, class_id, class_name)]."""
    if cfg.method == "classifier":
        return classifier_scorer(cfg, classes, device)
    prompts = [cfg.clip.template.format(name) for _, _, name in classes]
    if cfg.clip.model.startswith(OPEN_CLIP):
        return open_clip_scorer(cfg.clip.model, classes, prompts, device)
    return clip_scorer(cfg.clip.model, classes, prompts, device)


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _hub_commit(model: str) -> str:
    """The snapshot commit of a hub id in the local cache ("local" for a folder)."""
    if Path(model).is_dir():
        return "local"
    try:
        from huggingface_hub import snapshot_download

        where = Path(snapshot_download(model, local_files_only=True)).as_posix()
    except Exception:  # loading already succeeded, so only the label is missing
        return "unknown"
    return where.rsplit("/snapshots/", 1)[-1] if "/snapshots/" in where else "unknown"


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_scorer(model_id: str, classes: list[tuple[int, str, str]], prompts: list[str],
                device: torch.device) -> Scorer:
    """transformers' CLIPModel + CLIPProcessor from a hub id (cache only when offline) or a local folder."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(model_id).eval()
        processor = CLIPProcessor.from_pretrained(model_id)
    except Exception as e:  # not cached offline, not a CLIP folder: many types
        raise ConfigError(f"clip.model={model_id!r} could not be loaded as a transformers CLIP ({_first_line(e)}); "
                          "offline, set clip.model to a local folder holding a CLIP model and its processor "
                          "(save_pretrained), or to a hub id already in the cache") from None
    identity = {"kind": "clip", "backend": "transformers", "model": model_id if not Path(model_id).is_dir() else
                "local", "revision": _hub_commit(model_id), "weights": state_hash(model),
                "processor": json.loads(processor.image_processor.to_json_string()),
                "vocab": hashlib.sha256(json.dumps(processor.tokenizer.get_vocab(), sort_keys=True).encode()
                                        ).hexdigest()[:16]}
    model.to(device)
    with torch.inference_mode():
        text = processor(text=prompts, return_tensors="pt", padding=True)
        out = model.get_text_features(input_ids=text["input_ids"].to(device),
                                      attention_mask=text["attention_mask"].to(device))
        text_features = _unit(out if isinstance(out, torch.Tensor) else out.pooler_output).float()
        scale = model.logit_scale.exp().float()

    def prepare(images: list[Image.Image]) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"].to(device)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        out = model.get_image_features(pixel_values=pixels)
        return scale * _unit(out if isinstance(out, torch.Tensor) else out.pooler_output).float() @ text_features.T

    return Scorer(identity, [name for _, _, name in classes], {c: j for j, (c, _, _) in enumerate(classes)}, prepare,
                  logits)


def open_clip_scorer(spec: str, classes: list[tuple[int, str, str]], prompts: list[str],
                     device: torch.device) -> Scorer:
    """OpenCLIP: clip.model="open_clip:<arch>/<pretrained tag or weights file>" (needs the open_clip package)."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"clip.model={spec!r} needs OpenCLIP, which is not installed: install open_clip_torch, or "
                          "set clip.model to a transformers CLIP (a hub id or a local folder)") from None
    arch, _, pretrained = spec[len(OPEN_CLIP):].partition("/")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:  # unknown architecture, weights not cached offline
        raise ConfigError(f"clip.model={spec!r} could not be loaded by OpenCLIP ({_first_line(e)}); offline, set "
                          "clip.model=open_clip:<arch>/<path to a local weights file>") from None
    model.eval()
    identity = {"kind": "clip", "backend": "open_clip", "model": arch,
                "revision": pretrained if not Path(pretrained).is_file() else "local", "weights": state_hash(model),
                "processor": repr(preprocess)}
    model.to(device)
    with torch.inference_mode():
        text_features = _unit(model.encode_text(tokenizer(prompts).to(device)).float())
        scale = model.logit_scale.exp().float()

    def prepare(images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([preprocess(im) for im in images]).to(device)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return scale * _unit(model.encode_image(pixels).float()) @ text_features.T

    return Scorer(identity, [name for _, _, name in classes], {c: j for j, (c, _, _) in enumerate(classes)}, prepare,
                  logits)


def final_weights(run: Path, result: dict) -> tuple[Path, str]:
    """(file, label) of the weights a finished run reports numbers for: its best validation epoch's with select=val,
    else its last stage's (`checkpoints/stage-<name>.pt`; result.json lists the stages in the order they ran)."""
    if str(result.get("selected", "last")).startswith("val:") and (run / "checkpoints" / "best_val.pt").is_file():
        return run / "checkpoints" / "best_val.pt", str(result["selected"])
    stages = list(result.get("stages") or {})
    if not stages:
        raise DataError(f"classifier.run={str(run)!r}: its result.json lists no finished stage; re-run the run")
    path = run / "checkpoints" / f"stage-{stages[-1]}.pt"
    if not path.is_file():
        raise DataError(f"classifier.run={str(run)!r} has no {path.relative_to(run)} (its final weights): were its "
                        "checkpoints deleted? Re-run it (delete its result.json) or pick another run")
    return path, f"stage-{stages[-1]}"


def classifier_scorer(cfg: FilterConfig, classes: list[tuple[int, str, str]], device: torch.device) -> Scorer:
    """A classifier fine-tuned on the real train split: a `synthtl finetune` run folder, with its own preprocessing."""
    from synthtl.data.datasets import load_data
    from synthtl.data.synthetic import _match_classes
    from synthtl.data.transforms import eval_transform
    from synthtl.models import create_classifier

    if not cfg.classifier.run:
        raise ConfigError("method=classifier needs classifier.run=<a run folder of `synthtl finetune`> (a classifier "
                          "fine-tuned on the real train split)")
    run = Path(cfg.classifier.run)
    if not (run / "result.json").is_file() or not (run / "config.yaml").is_file():
        raise DataError(f"classifier.run={str(run)!r} is not a finished `synthtl finetune` run (no result.json and "
                        "config.yaml); finish the run or point at another run folder")
    result = read_json(run / "result.json")
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
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
    weights, label = final_weights(run, result)
    model, data_config = create_classifier(run_cfg["model"]["name"], result["num_classes"], pretrained=False,
                                           img_size=run_cfg["model"].get("img_size", 0))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["model"])
    model.eval()
    transform = eval_transform(data_config)
    identity = {"kind": "classifier", "model": run_cfg["model"]["name"], "weights": state_hash(model),
                "checkpoint": label, "run_config_hash": result.get("config_hash"),
                "preprocess": {k: data_config[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
                               if k in data_config}}
    model.to(device)

    def prepare(images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([transform(im) for im in images]).to(device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    return Scorer(identity, list(real.names), {c: mapping[j] for j, (c, _, _) in enumerate(classes)}, prepare,
                  logits)
