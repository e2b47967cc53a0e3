"""The paper's larger backbones (ResNet-50, ViT-B/16) at full size, random weights, 224 px, through synthtl's loop."""

import pytest
import torch

from synthtl.config import StageConfig
from synthtl.data.datasets import load_split
from synthtl.data.loader import ImageDataset, set_epoch, train_loader
from synthtl.data.transforms import train_transform
from synthtl.models import create_classifier
from synthtl.runtime import resolve_runtime
from synthtl.training.loop import Steps, train_one_epoch
from synthtl.training.optim import build_optimizer

pytestmark = pytest.mark.fullsize  # model init + one 224 px step each: 43 s on a shared, busy 2-core box


@pytest.mark.parametrize("name, first", [("resnet50", "conv1.weight"), ("vit_b16", "patch_embed.proj.weight")])
def test_one_training_step_at_224(folder_data, name, first):
    torch.manual_seed(0)
    model, dc = create_classifier(name, 3, pretrained=False)
    assert tuple(dc["input_size"]) == (3, 224, 224)  # the weights' native size travels with the model
    images = load_split("folder", "train", folder_data).subset([0, 8])  # 2 images (the loop's minimum batch)
    loader = train_loader([ImageDataset(images, train_transform(dc))], 2, seed=0, num_workers=0)
    set_epoch(loader, 0, 0)
    assert next(iter(loader))[0].shape == (2, 3, 224, 224)
    params = dict(model.named_parameters())
    head = [n for n in params if n.startswith(("fc.", "head."))][0]
    before = {n: params[n].detach().clone() for n in (first, head)}
    opt = build_optimizer(model, StageConfig(lr=0.01))
    stats, step = train_one_epoch(model, loader, Steps(opt, resolve_runtime("cpu"), 1, lambda s: 0.01, 3, clip_grad=1.0,
                                                       progress=False), 0)
    assert step == 1 and stats.steps == 1 and stats.images == 2
    assert torch.isfinite(torch.tensor(stats.loss)) and 0 < stats.loss < 10
    for n, old in before.items():  # the gradient reached the stem as well as the head
        assert not torch.equal(params[n].detach(), old), n
