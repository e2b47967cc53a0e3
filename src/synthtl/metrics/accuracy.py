"""Classification metrics from logits or predictions."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def summarize(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top1, top5 and mean per-class accuracy (%), plus the cross-entropy loss."""
    if len(labels) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class_acc": float("nan"), "loss": float("nan")}
    logits = logits.float()
    top1 = topk_correct(logits, labels, 1)
    per_class = [top1[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100.0 * top1.float().mean().item(),
        "top5": 100.0 * topk_correct(logits, labels, 5).float().mean().item(),
        "mean_class_acc": 100.0 * sum(per_class) / len(per_class),
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
    }
