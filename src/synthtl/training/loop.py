"""The training loop in plain sight: `train_one_epoch` and `evaluate` are ordinary functions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from synthtl.errors import SynthTLError
from synthtl.metrics.accuracy import summarize
from synthtl.runtime import Runtime, is_main


@dataclass
class EpochStats:
    loss: float
    top1: float  # against the un-mixed labels when Mixup is on
    images: int
    steps: int
    seconds: float
    skipped: int


def to_device(x: torch.Tensor | list, rt: Runtime, augment: Callable | None, channels_last: bool) -> torch.Tensor:
    """Moves a batch to the device; raw JPEG batches are decoded and augmented there by `augment`."""
    x = augment(x) if augment is not None else x.to(rt.device, non_blocking=True)
    if channels_last and rt.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def mix(mixup_fn: Callable, x: torch.Tensor, y: torch.Tensor, num_classes: int, smoothing: float):
    """timm Mixup needs an even batch: an odd last sample joins unmixed with a (smoothed) one-hot target."""
    if len(x) % 2 == 0:
        return mixup_fn(x, y)
    xm, ym = mixup_fn(x[:-1], y[:-1])
    last = torch.full((1, num_classes), smoothing / num_classes, device=y.device, dtype=ym.dtype)
    last[0, y[-1]] += 1.0 - smoothing
    return torch.cat([xm, x[-1:]]), torch.cat([ym, last])


@dataclass
class Steps:
    """How an epoch's optimizer steps are taken: everything `train_one_epoch` needs besides the model and data."""

    optimizer: torch.optim.Optimizer
    rt: Runtime
    total_steps: int
    lr_fn: Callable[[int], float]
    num_classes: int
    mixup_fn: Callable | None = None
    label_smoothing: float = 0.0
    clip_grad: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    augment: Callable | None = None  # decodes and augments raw JPEG batches on the device
    channels_last: bool = False
    accum_steps: int = 1  # micro-batches per batch: their gradients add up to the whole batch's (less memory)
    ema: object = None  # a timm ModelEmaV3, updated after every optimizer step
    world: int = 1  # data-parallel processes: the loader yields this rank's share of each global batch
    desc: str = ""
    progress: bool = True


def train_one_epoch(model: nn.Module, loader, how: Steps, step: int) -> tuple[EpochStats, int]:
    """One pass over `loader` (stopping early at `how.total_steps`); returns the epoch's stats and the new step."""
    model.train()
    # Running sums stay on the device: reading them (a host sync) every step would stall the GPU.
    loss_sum = torch.zeros((), device=how.rt.device)
    correct = torch.zeros((), dtype=torch.long, device=how.rt.device)
    images, steps, skipped = 0, 0, 0
    sync_every = 25 if how.rt.is_cuda else 1
    sampler = getattr(loader, "batch_sampler", None)
    rank, last_batch = getattr(sampler, "rank", 0), None
    start = time.perf_counter()
    bar = tqdm(total=min(len(loader), how.total_steps - step), desc=how.desc, unit="step", leave=False,
               disable=not (how.progress and is_main()))
    for i, (x, y, n_skipped) in enumerate(loader):
        skipped += n_skipped
        if step >= how.total_steps:
            break
        n_global = sampler.global_size(i) if how.world > 1 else len(y)  # known to every rank without communication
        if n_global < max(2, how.world):  # a lone sample (or fewer than ranks)
            continue
        idle = how.world > 1 and len(y) == 0  # this rank's share was unreadable: it still joins the gradient average
        if idle:
            if last_batch is None:
                raise SynthTLError(f"every image of rank {rank}'s share of the first batch was unreadable "
                                   f"({how.desc}); fix or remove the bad images (data.on_bad_image=error names them)")
            x, y = last_batch
        last_batch = (x, y)
        for g in how.optimizer.param_groups:
            g["lr"] = how.lr_fn(step)
        out, losses = update(model, (x, y), how, n_global, idle, step)
        step, steps = step + 1, steps + 1
        if not idle:
            for loss in losses:  # chunk by chunk, as they were computed: the same float sums
                loss_sum += loss
            correct += (out.argmax(1) == y.to(out.device)).sum()
            images += len(y)
        if steps % sync_every == 0:
            _check_finite(loss_sum, step, how.desc)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / images:.3f}", img_s=f"{images / max(elapsed, 1e-9):.0f}")
        bar.update()
    _check_finite(loss_sum, step, how.desc)
    bar.close()
    if how.rt.is_cuda:
        torch.cuda.synchronize(how.rt.device)
    return EpochStats(loss=loss_sum.item() / max(images, 1), top1=100.0 * correct.item() / max(images, 1),
                      images=images, steps=steps, seconds=time.perf_counter() - start, skipped=skipped), step


def update(model: nn.Module, batch: tuple, how: Steps, n_global: int, idle: bool,
           step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One optimizer step on a batch; returns (the outputs, each micro-batch's summed loss)."""
    x = to_device(batch[0], how.rt, how.augment, how.channels_last)
    target = y = batch[1].to(how.rt.device, non_blocking=True)
    if how.mixup_fn is not None:
        x, target = mix(how.mixup_fn, x, y, how.num_classes, how.label_smoothing)
    how.optimizer.zero_grad(set_to_none=True)
    outs, losses = [], []
    chunks = [c for c in zip(x.tensor_split(how.accum_steps), target.tensor_split(how.accum_steps), strict=True)
              if len(c[1])]
    for k, (xc, tc) in enumerate(chunks):
        # The global batch's mean loss: this chunk's share of it, times `world` (DDP averages over ranks).
        scale = 0.0 if idle else len(tc) * how.world / n_global
        sync = k == len(chunks) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync(), how.rt.autocast():
            out = model(xc)
            loss = _loss(out, tc, how.label_smoothing)
            scaled = loss if scale == 1.0 else loss * scale
            (how.scaler.scale(scaled) if how.scaler is not None else scaled).backward()
        outs.append(out.detach())
        losses.append(loss.detach().float() * len(tc))
    if how.clip_grad:
        if how.scaler is not None:
            how.scaler.unscale_(how.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), how.clip_grad)
    if how.scaler is not None:
        how.scaler.step(how.optimizer)
        how.scaler.update()
    else:
        how.optimizer.step()
    if how.ema is not None:
        how.ema.update(getattr(model, "module", model), step=step)
    return torch.cat(outs), losses


def _loss(out: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    if target.dim() == 2:  # soft targets from Mixup/CutMix (already smoothed by timm)
        return torch.sum(-target * F.log_softmax(out.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(out.float(), target, label_smoothing=label_smoothing)


def _check_finite(loss_sum: torch.Tensor, step: int, desc: str) -> None:
    if not torch.isfinite(loss_sum):
        raise SynthTLError(f"training loss became {loss_sum.item()} by step {step} ({desc}); lower the learning rate "
                           "or use precision=fp32/bf16")


@torch.no_grad()
def predict(model: nn.Module, loader, rt: Runtime, augment: Callable | None = None,
            channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(logits, labels, skipped) over a loader, logits as float32 on CPU."""
    model.eval()
    outs, labels, skipped = [], [], 0
    for x, y, n_skipped in loader:
        skipped += n_skipped
        if len(y) == 0:
            continue
        x = to_device(x, rt, augment, channels_last)
        with rt.autocast():
            outs.append(model(x).float().cpu())
        labels.append(y)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(outs), torch.cat(labels), skipped


def evaluate(model: nn.Module, loader, rt: Runtime, num_classes: int, augment: Callable | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """top1/top5/mean per-class accuracy and loss on a loader."""
    logits, labels, skipped = predict(model, loader, rt, augment, channels_last)
    return {**summarize(logits, labels, num_classes), "skipped": skipped}
