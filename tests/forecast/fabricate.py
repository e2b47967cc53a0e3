"""A finished study written the way `synthtl study` writes one (plan.json, runs/<id>/{config.yaml,result.json},
gen/<id>/{plan.json,progress/cost-shard-*.jsonl}), with accuracies drawn from known curves: no training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from synthtl.files import write_json, write_jsonl

REAL = 3680  # real train images (Oxford-IIIT Pets' trainval split)
CLASSES = 37
EPOCHS = {"synthetic": 10, "real": 30, "mixed": 30}
TRAIN_S = 2e-3  # GPU-seconds per training image seen
GEN_S = 0.5  # GPU-seconds per generated image


def stages(strategy: str, volume: int) -> dict:
    """Each stage's epochs, images per epoch and measured seconds, as a run's result.json has them."""
    images = {"synthetic": volume * CLASSES, "real": REAL, "mixed": REAL + volume * CLASSES}
    names = {"vanilla": ["real"], "mixed": ["mixed"]}.get(strategy, ["synthetic", "real"])
    out = {}
    for n in names:
        secs = EPOCHS[n] * images[n] * TRAIN_S
        out[n] = {"epochs": EPOCHS[n], "train_images": images[n], "wall_s": secs * 1.1, "gpu_s": secs}
    return out


def _run(root: Path, rid: str, labels: dict, top1: float, set_dir: Path | None, pretrained: bool) -> dict:
    folder = root / "runs" / rid
    st = stages(labels["strategy"], labels["volume"] or 0)
    syn = {"path": str(set_dir or ""), "per_class": labels["volume"] or 0, "filter": ""}
    cfg = {"strategy": labels["strategy"], "seed": labels["seed"], "data": {"name": labels["dataset"], "shots": 0},
           "model": {"name": labels["model"], "pretrained": pretrained}, "synthetic": syn}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_json(folder / "result.json", {
        "strategy": labels["strategy"], "dataset": labels["dataset"], "model": labels["model"],
        "seed": labels["seed"], "shots": 0, "synthetic": syn["path"] or None, "synthetic_per_class": syn["per_class"],
        "test": {"top1": top1}, "stages": st, "num_classes": CLASSES, "identity": rid,
        "wall_s": sum(s["wall_s"] for s in st.values()), "gpu_s": sum(s["gpu_s"] for s in st.values())})
    return {"kind": "finetune", "id": rid, "needs": [], "labels": labels, "out": str(folder), "done": True}


def fabricate_study(root: Path, curves: dict[str, Callable], volumes=(250, 500, 1000), seeds=(0, 1),
                    pretrained: bool = True) -> Path:
    """Vanilla (volume 0) and each strategy of `curves` (name -> top-1 at a volume) at every volume and seed, with
    0.3 pt of seed noise; `pretrained=False`: random-weight classifiers, as in the demo."""
    rng = np.random.default_rng(0)
    gen = root / "gen" / "gen-pets-single-g2-0123456789ab"
    write_json(gen / "plan.json", {"per_class": max(volumes), "settings": {"guidance": 2.0,
                                                                            "templates": ["a good photo of the {}."]}})
    write_jsonl(gen / "progress" / "cost-shard-0000-of-0001.jsonl", [{
        "images": max(volumes) * CLASSES, "seconds": max(volumes) * CLASSES * GEN_S, "redraws": 0, "gpus": 1}])
    jobs = []
    for strategy, curve in {"vanilla": next(iter(curves.values())), **curves}.items():
        for v in [0] if strategy == "vanilla" else volumes:
            for s in seeds:
                labels = {"dataset": "pets", "model": "resnet18", "shots": 0, "strategy": strategy, "seed": s,
                          "volume": v or None, "guidance": 2.0 if v else None, "prompt": "single" if v else None,
                          "filter": None}
                top1 = float(curve(v) + 0.3 * rng.standard_normal())
                jobs.append(_run(root, f"pets_resnet18_{strategy}_s{s}_v{v}", labels, top1, gen if v else None,
                                 pretrained))
    write_json(root / "plan.json", {"name": "fabricated", "description": "fabricated from known curves", "jobs": jobs})
    return root
