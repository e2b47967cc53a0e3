"""LEEP transferability score (Nguyen et al., ICML 2020).

Given the source model's softmax theta_i over its own label space Z for every target example (x_i, y_i):
    P(y, z) = 1/n sum_i theta_i(z) [y_i = y],   P(y | z) = P(y, z) / sum_y' P(y', z),
    LEEP = 1/n sum_i log( sum_z P(y_i | z) theta_i(z) ).
Higher (closer to 0) means the source model transfers better to the target labels."""

from __future__ import annotations

import torch


def leep(probs: torch.Tensor, labels: torch.Tensor, num_target_classes: int) -> float:
    """LEEP of source softmax `probs` (n, |Z|) for target `labels` (n,) in [0, num_target_classes)."""
    probs = probs.double()
    n = probs.shape[0]
    joint = torch.nn.functional.one_hot(labels.long(), num_target_classes).double().T @ probs / n  # (|Y|, |Z|)
    conditional = joint / joint.sum(dim=0, keepdim=True).clamp_min(1e-300)  # P(y | z) = P(y, z) / P(z)
    eep = (probs @ conditional.T)[torch.arange(n), labels.long()]  # sum_z P(y_i|z) theta_i(z)
    return torch.log(eep.clamp_min(1e-300)).mean().item()
