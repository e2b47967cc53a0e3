"""Optimizers (no weight decay on biases and norm weights) and a stateless warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from synthtl.config import StageConfig


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # biases and norm scales: no weight decay
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum)
    return torch.optim.AdamW(groups, lr=stage.lr)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup from peak/100 to peak over warmup_steps, then cosine from peak to floor at total_steps."""
    if warmup_steps and step < warmup_steps:
        return peak * (0.01 + 0.99 * step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))

