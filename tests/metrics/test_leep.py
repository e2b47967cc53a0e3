import math

import torch

from synthtl.metrics.accuracy import summarize
from synthtl.metrics.leep import leep


def test_leep_hand_computed_example():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    # P(y|z) by hand: P(0|z0)=0.35/0.45=7/9, P(0|z1)=0.15/0.55=3/11, P(1|z0)=2/9, P(1|z1)=8/11
    eep = [0.8 * 7 / 9 + 0.2 * 3 / 11, 0.6 * 7 / 9 + 0.4 * 3 / 11,
           0.3 * 2 / 9 + 0.7 * 8 / 11, 0.1 * 2 / 9 + 0.9 * 8 / 11]
    expected = sum(math.log(e) for e in eep) / 4
    assert abs(leep(probs, labels, 2) - expected) < 1e-9
    assert abs(expected - (-0.471250)) < 1e-5


def test_leep_prefers_informative_source_labels():
    labels = torch.arange(4).repeat(5)
    aligned = torch.nn.functional.one_hot(labels, 4).float() * 0.9 + 0.025
    uniform = torch.full((20, 4), 0.25)
    assert leep(aligned, labels, 4) > leep(uniform, labels, 4)
    assert abs(leep(uniform, labels, 4) - math.log(0.25)) < 1e-9  # uninformative source: log(1/|Y|)


def test_accuracy_summary():
    logits = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [3.0, 0, 1, 0, 0, 0],
                           [0, 0.5, -5, 0.2, 0.1, 3.0]])
    labels = torch.tensor([0, 1, 2, 2])
    s = summarize(logits, labels, 3)
    assert s["top1"] == 50.0 and s["top5"] == 75.0
    assert abs(s["mean_class_acc"] - 100 * (1 + 1 + 0) / 3) < 1e-9
