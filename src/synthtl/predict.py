"""Using a trained classifier: load a finished run's model, classify images, export it for timm.

    from synthtl.predict import load_model, predict
    trained = load_model("runs/pets/resnet18/bridged++/full/seed0")   # the weights the run reported
    predict(trained, ["cat.jpg"], top_k=3)   # [{"path": ..., "top": [(class name, probability), ...]}]

The weights are those `result.json` reports: the final stage's last epoch, or the best validation epoch with
select=val (`weights="ema"`: the EMA copy, if kept). Images go through the run's evaluation transform."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from synthtl.config import FinetuneConfig, from_dict
from synthtl.data.images import load_rgb
from synthtl.data.transforms import eval_transform
from synthtl.errors import ConfigError, DataError
from synthtl.files import load_torch, read_json


@dataclass
class Trained:
    model: nn.Module  # in eval mode, on the CPU
    classes: list[str]  # class names, in the model's output order
    data_config: dict  # input size, mean, std, interpolation, crop_pct
    cfg: FinetuneConfig  # the run's effective config
    weights: str  # which weights: "last", "val:epoch<n>" or "ema"

    @property
    def transform(self):
        return eval_transform(self.data_config)


def _state(run: Path, result: dict, weights: str) -> tuple[dict, str]:
    last = next(reversed(result["stages"]))
    stage = load_torch(run / "checkpoints" / f"stage-{last}.pt", "synthtl checkpoint", "re-run the fine-tuning")
    if weights == "ema":
        if stage.get("ema") is None:
            raise ConfigError(f"{run} kept no EMA weights (ema.enabled was false): use the default weights")
        return stage["ema"], "ema"
    if weights != "selected":
        raise ConfigError(f"weights={weights!r}: use 'selected' (what result.json reports) or 'ema'")
    if str(result.get("selected", "last")).startswith("val:"):
        best = load_torch(run / "checkpoints" / "best_val.pt", "synthtl checkpoint", "re-run the fine-tuning")
        return best["model"], result["selected"]
    return stage["model"], "last"


def load_model(run: str | os.PathLike, weights: str = "selected") -> Trained:
    """The classifier a finished `synthtl finetune` run trained (see the module doc)."""
    from synthtl.models import create_classifier

    run = Path(run)
    if not (run / "result.json").is_file():
        raise DataError(f"{run} is not a finished fine-tuning run (no result.json); finish it first")
    result = read_json(run / "result.json")
    cfg = from_dict(FinetuneConfig, yaml.safe_load((run / "config.yaml").read_text()))
    classes = result.get("class_names") or read_json(run / "splits" / "train.json")["classes"]
    model, data_config = create_classifier(cfg.model.name, len(classes), pretrained=False, img_size=cfg.model.img_size)
    data_config = result.get("data_config") or data_config  # the preprocessing the run evaluated with
    state, which = _state(run, result, weights)
    model.load_state_dict(state)
    return Trained(model.eval(), list(classes), data_config, cfg, which)


@torch.no_grad()
def predict(trained: Trained, paths: Sequence[str | os.PathLike], top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """The `top_k` classes of each image with their probabilities, in the order given."""
    tf, out = trained.transform, []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start:start + batch_size]]
        x = torch.stack([tf(load_rgb(p)) for p in chunk])
        probs = torch.softmax(trained.model(x).float(), dim=1)
        top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for p, values, idx in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            out.append({"path": str(p), "top": [(trained.classes[i], v) for i, v in zip(idx, values, strict=True)]})
    return out


def export_model(run: str | os.PathLike, out: str | os.PathLike, weights: str = "selected") -> Path:
    """Writes `model.safetensors` and timm's `config.json` (architecture, class names, preprocessing) into `out`:
    `timm.create_model("local-dir:<out>", pretrained=True)` loads it."""
    from timm.models import save_for_hf

    from synthtl.models import resolve

    trained = load_model(run, weights)
    lib, _ = resolve(trained.cfg.model.name)
    if lib != "timm":
        raise ConfigError(f"export-model writes timm folders; {trained.cfg.model.name} is a torchvision model: load "
                          "it with synthtl.predict.load_model instead")
    d = trained.data_config
    save_for_hf(trained.model, str(out), model_config={"label_names": trained.classes}, safe_serialization=True,
                data_config={k: d[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in d})
    return Path(out)
