"""Data-parallel training inside one run (`torchrun --nproc-per-node N -m synthtl finetune ...`).

Every rank builds the same model from the same seed and loads its contiguous share of each global batch (the
configured batch size; each sample keeps its augmentation seed). Losses are scaled so DDP's averaged gradient is that
of the global batch's mean loss, whatever the shares' sizes. On CUDA BatchNorm becomes SyncBatchNorm; on CPU (gloo)
its statistics stay per rank. Mixup mixes within each rank's share, as timm does. Only rank 0 evaluates and writes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from synthtl.runtime import Runtime, world_size


def init(rt: Runtime) -> int:
    """Joins the process group when launched by torchrun; returns the world size (1 = a single process)."""
    world = world_size()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if rt.is_cuda else "gloo")
    return world


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def wrap(model: nn.Module, rt: Runtime) -> nn.Module:
    """The model to train: DDP-wrapped under torchrun (SyncBatchNorm on CUDA), else the model itself."""
    if not active():
        return model
    if rt.is_cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.is_cuda else None)


def sum_all(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (identity without torchrun)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(value: float) -> list[float]:
    """One value from every rank, in rank order (on every rank)."""
    if not active():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every rank (identity without torchrun)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def close() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()
