"""Device, precision, seeds and rank, resolved once and passed around."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from synthtl.errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Only rank 0 prints, writes files and shows progress bars."""
    return int(os.environ.get("RANK", "0")) == 0


def seed_everything(seed: int, rank_: int = 0) -> int:
    """Seeds python, numpy and torch (all devices); returns the seed actually used."""
    seed = int(seed) + int(rank_)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (base seed, stage name, epoch, class index...)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast on an accelerator, a no-op context in fp32 (the CPU path is the same code)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def gpus(self) -> int:
        return 1 if self.is_cuda else 0


def cpu_threads(share: int = 1) -> int:
    """The CPU threads of one of `share` processes that run side by side: the cores this process may run on
    (`os.sched_getaffinity`, a Slurm or container limit, not the machine's count) divided among them, at least 1. More
    threads than cores make OpenMP threads spin against each other (benchmarks/threads.py: 6-10x slower)."""
    return max(1, len(os.sched_getaffinity(0)) // share)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_runtime(device: str = "auto", precision: str = "auto", auto_gpu: str = "bf16") -> Runtime:
    """Resolves `device` ("auto", "cpu", "cuda", "cuda:1") and `precision` ("auto", "fp32", "bf16", "fp16").

    The one precision policy: "auto" is fp32 on CPU, `auto_gpu` on CUDA ("bf16", fp16 without bf16: training and
    inversion's frozen models; "fp16": SD inference). Under torchrun "cuda"/"auto" is this rank's GPU (LOCAL_RANK).
    Never downgrades silently: CUDA without CUDA, or fp16 on CPU, is an error."""
    try:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: synthtl runs on cpu or cuda; use auto, cpu, cuda or cuda:<index>")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use device=cpu or device=auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible "
                          "(CUDA_VISIBLE_DEVICES renumbers them from 0); use cuda:0 .. or device=auto")
    if dev.type == "cuda":  # under torchrun each rank takes its own GPU, made the current device (kernels and NCCL)
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if dev.index is None else dev
        torch.cuda.set_device(dev)
    if precision not in ("auto", *_DTYPES):
        raise ConfigError(f"precision={precision!r}: choose one of auto, fp32, bf16, fp16")
    if precision == "auto":
        bf16 = auto_gpu != "fp16" and dev.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "fp32" if dev.type != "cuda" else "bf16" if bf16 else "fp16"
    if dev.type == "cpu" and precision == "fp16":
        raise ConfigError("precision=fp16 is not supported on CPU; use precision=fp32 or bf16")
    if dev.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):  # the user's OMP_NUM_THREADS wins
        torch.set_num_threads(cpu_threads())
    return Runtime(device=dev, dtype=_DTYPES[precision])


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
