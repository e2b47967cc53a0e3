"""Mixed precision and memory format of the training loop on CUDA, each against an fp32 step on the same batch."""

import copy

import pytest
import torch

from synthtl.runtime import resolve_runtime
from synthtl.training.loop import Steps, train_one_epoch
from tests.gpu.conftest import needs_cuda

pytestmark = needs_cuda

CLIP = 0.5  # small enough that clipping is active on a random ResNet's first step


def setup(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=10).cuda()
    g = torch.Generator().manual_seed(seed)
    batch = [(torch.randn(16, 3, 112, 112, generator=g), torch.randint(0, 10, (16,), generator=g), 0)]
    return model, batch


def one_step(model, batch, precision: str, channels_last: bool = False, scaler=None, seen: list | None = None):
    """One SGD step of synthtl's loop; returns (loss, update vector, model)."""
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if seen is not None:
        model.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    before = torch.cat([p.detach().flatten().float() for p in model.parameters()]).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    how = Steps(opt, resolve_runtime("cuda", precision), 1, lambda s: 0.1, 10, clip_grad=CLIP, scaler=scaler,
                channels_last=channels_last, progress=False)
    stats, step = train_one_epoch(model, batch, how, 0)
    assert step == 1
    after = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    return stats.loss, after - before, model


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_bf16_step_matches_fp32():
    model, batch = setup()
    loss32, d32, _ = one_step(model, batch, "fp32")
    loss16, d16, _ = one_step(model, batch, "bf16")
    assert abs(loss16 - loss32) < 2e-2 * abs(loss32)
    assert cosine(d16, d32) > 0.97  # bf16 keeps 8 mantissa bits: the step's direction, not its bits
    assert 0.9 < d16.norm() / d32.norm() < 1.1  # both clipped to the same gradient norm


def test_fp16_step_with_grad_scaler_and_clipping_matches_fp32():
    model, batch = setup()
    loss32, d32, _ = one_step(model, batch, "fp32")
    scale = 2.0**16  # GradScaler's default, as synthtl creates it
    for _ in range(8):  # an overflowing step is skipped and the scale halved: redo it from the same weights
        scaler = torch.amp.GradScaler("cuda", init_scale=scale)
        loss16, d16, _ = one_step(model, batch, "fp16", scaler=scaler)
        if scaler.get_scale() >= scale:
            break
        assert d16.abs().max() == 0  # a skipped step leaves the weights alone
        scale = scaler.get_scale()
    assert abs(loss16 - loss32) < 1e-2 * abs(loss32)
    assert cosine(d16, d32) > 0.99
    # Clipping must see unscaled gradients: clipping the scaled ones would shrink the step by the scale.
    assert 0.9 < d16.norm() / d32.norm() < 1.1


def test_channels_last_step_matches_and_reaches_the_model():
    model, batch = setup()
    _, d_ref, _ = one_step(model, batch, "fp32")
    seen: list[bool] = []
    _, d_cl, m = one_step(model, batch, "fp32", channels_last=True, seen=seen)
    assert seen == [True]  # the loop handed the model a channels_last batch
    assert m.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cosine(d_cl, d_ref) > 0.999


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_step_is_finite_at_224_with_resnet50(precision):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=10).cuda().to(memory_format=torch.channels_last)
    batch = [(torch.randn(32, 3, 224, 224), torch.randint(0, 10, (32,)), 0)]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    loss, delta, _ = one_step(model, batch, precision, channels_last=True, scaler=scaler)
    assert torch.isfinite(torch.tensor(loss)) and torch.isfinite(delta).all()
