import torch
from timm.data import Mixup

from synthtl.config import StageConfig
from synthtl.data.datasets import load_split
from synthtl.data.loader import ImageDataset, set_epoch, train_loader
from synthtl.data.transforms import train_transform
from synthtl.models import create_classifier
from synthtl.runtime import resolve_runtime
from synthtl.training.loop import Steps, evaluate, mix, train_one_epoch
from synthtl.training.optim import build_optimizer, lr_at

DC = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0,
      "interpolation": "bilinear"}


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.0) for s in range(101)]
    assert abs(lrs[0] - 0.01) < 1e-9 and abs(lrs[10] - 1.0) < 1e-9 and lrs[100] < 1e-9
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))


def test_no_weight_decay_on_biases_and_norms():
    model, _ = create_classifier("test_resnet", 3, pretrained=False)
    opt = build_optimizer(model, StageConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])


def test_loss_falls_when_overfitting_eight_images(folder_data):
    torch.manual_seed(0)
    images = load_split("folder", "train", folder_data).subset([0, 1, 2, 8, 9, 16, 17, 18])
    ds = ImageDataset(images, train_transform(DC, crop_scale_min=1.0, hflip=False))
    loader = train_loader([ds], 8, seed=0, num_workers=0)
    model, _ = create_classifier("test_resnet", 3, pretrained=False)
    rt = resolve_runtime("cpu")
    opt = build_optimizer(model, StageConfig(lr=0.05))
    losses, step = [], 0
    for epoch in range(25):
        set_epoch(loader, 0, epoch)
        stats, step = train_one_epoch(model, loader, Steps(opt, rt, 10**6, lambda s: 0.05, 3, progress=False), step)
        losses.append(stats.loss)
    assert losses[-1] < 0.5 * losses[0]
    assert stats.steps == 1 and stats.images == 8
    from synthtl.data.loader import eval_loader
    from synthtl.data.transforms import eval_transform

    acc = evaluate(model, eval_loader(ImageDataset(images, eval_transform(DC)), 8, 0), rt, 3)
    assert acc["top1"] == 100.0


def test_mixup_handles_odd_batches():
    fn = Mixup(mixup_alpha=0.2, num_classes=3, label_smoothing=0.0)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 2])
    xm, ym = mix(fn, x, y, 3, 0.0)
    assert xm.shape == x.shape and ym.shape == (5, 3)
    assert torch.allclose(ym.sum(1), torch.ones(5)) and torch.equal(ym[-1], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(xm[-1], x[-1])
