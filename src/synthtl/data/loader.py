"""Torch datasets and loaders whose order and augmentation depend only on (seed, stage, epoch).

The batch sampler gives every sample its own seed (from the seed, the epoch and its position in it) for its
augmentation: a resumed run sees exactly the batches an uninterrupted one would have seen, whatever the number of
loader workers, and workers can persist across epochs."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb, printable
from synthtl.errors import BadImageError, DataError
from synthtl.runtime import derive_seed


@dataclass(eq=False, repr=False)
class ImageDataset(Dataset):
    """Images of an ImageList through a transform."""

    images: ImageList
    transform: Callable | None = None  # PIL image -> tensor; ignored when `raw`
    on_bad: str = "error"  # "error" raises on an unreadable file; "skip" yields None, which `collate` drops and counts
    raw: bool = False  # yield the file's bytes as a uint8 tensor (decoded on the device by `DeviceAugment`)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        """`key` is an index, or (index, sample seed) from `EpochBatchSampler` for seeded augmentation."""
        i, sample_seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.images.path(i), self.images.labels[i]
        try:
            if self.raw:
                try:
                    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), label
                except FileNotFoundError:
                    raise BadImageError(printable(path), "file not found") from None
            img = load_rgb(path)
            if sample_seed is None:
                return self.transform(img), label
            with torch.random.fork_rng(devices=[]):
                # Only the CPU generator the transforms draw from: torch.manual_seed would also queue lazy
                # CUDA/XPU seeding calls (each capturing a stack trace) for every sample.
                torch.default_generator.manual_seed(sample_seed)
                return self.transform(img), label
        except BadImageError:
            if self.on_bad == "skip":
                return None
            raise


class ConcatImages(ConcatDataset):
    """Several ImageDatasets back to back (real + synthetic for the mixed strategy); keeps (index, seed) keys."""

    def __getitem__(self, key: int | tuple[int, int]):
        i, sample_seed = key if isinstance(key, tuple) else (key, None)
        part = bisect.bisect_right(self.cumulative_sizes, i)
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part][(i - start, sample_seed)]  # (index, None) reads like index


def collate(batch: list) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, int]:
    """Stacks a batch, dropping skipped (None) samples; returns (images, labels, number skipped)."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = [x for x, _ in kept], torch.tensor([y for _, y in kept], dtype=torch.long)
    raw = images[0].dtype == torch.uint8 and images[0].dim() == 1  # JPEG bytes, decoded on the device
    return (images if raw else torch.stack(images)), labels, skipped


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over n images; a final batch of one image is dropped (BatchNorm cannot
    train on it), every other partial batch is kept (few-shot sets are often smaller than one batch)."""
    return n // batch_size + int(n % batch_size > 1)


@dataclass(eq=False, repr=False)
class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches over one or two concatenated parts, reshuffled per epoch from (seed, epoch) alone."""

    sizes: Sequence[int]  # sizes of the concatenated parts: [n] or [n_real, n_synthetic]
    batch_size: int  # the global batch under data-parallel training
    seed: int  # base seed of the run stage
    # With two parts, the second part's share of each epoch: every image of the first part plus
    # round(n_real * f / (1 - f)) images of the second. None = every image of both.
    fraction: float | None = None
    rank: int = 0  # under data-parallel training, yield this rank's contiguous share of every global batch
    world: int = 1  # data-parallel processes
    epoch: int = field(default=0, init=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_size(self) -> int:
        if self.fraction is None or len(self.sizes) == 1:
            return sum(self.sizes)
        return self.sizes[0] + round(self.sizes[0] * self.fraction / (1 - self.fraction))

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        if self.fraction is None or len(self.sizes) == 1:
            idx = torch.randperm(sum(self.sizes), generator=g)
        else:
            n0, n1 = self.sizes
            m = self.epoch_size() - n0
            reps = -(-m // n1)  # enough permutations of the second part to draw m without early repeats
            second = torch.cat([torch.randperm(n1, generator=g) for _ in range(reps)])[:m] + n0
            both = torch.cat([torch.arange(n0), second])
            idx = both[torch.randperm(len(both), generator=g)]
        return idx.tolist()

    def global_size(self, step: int) -> int:
        """Images in global batch `step` of the epoch (all ranks together)."""
        return min(self.batch_size, self.epoch_size() - step * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        base = derive_seed(self.seed, "samples", self.epoch)
        for s in range(len(self)):
            lo = s * self.batch_size
            batch = [(i, (base + lo + k) % 2**63) for k, i in enumerate(order[lo:lo + self.batch_size])]
            share, extra = divmod(len(batch), self.world)  # contiguous shares differing by at most one
            start = self.rank * share + min(self.rank, extra)
            yield batch[start:start + share + (1 if self.rank < extra else 0)]

    def __len__(self) -> int:
        return steps_per_epoch(self.epoch_size(), self.batch_size)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # torch seeds each worker from the loader's generator
    random.seed(seed)
    np.random.seed(seed)


def train_loader(parts: Sequence[ImageDataset], batch_size: int, seed: int, num_workers: int,
                 fraction: float | None = None, pin_memory: bool = False, rank: int = 0, world: int = 1) -> DataLoader:
    """A training loader over one or two datasets (real, or real + synthetic for the mixed strategy)."""
    n = sum(len(p) for p in parts)
    if n < 2:
        raise DataError(f"the training set has {n} image(s); at least 2 are needed")
    dataset = parts[0] if len(parts) == 1 else ConcatImages(parts)
    sampler = EpochBatchSampler([len(p) for p in parts], batch_size, seed, fraction, rank, world)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, worker_init_fn=_worker_init, generator=torch.Generator(),
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Makes the coming epoch's order and the main process's RNG (Mixup, dropout, device-side augmentation)
    functions of (seed, epoch) alone; per-sample seeds come from the sampler."""
    loader.batch_sampler.set_epoch(epoch)
    s = derive_seed(seed, "epoch", epoch)
    loader.generator.manual_seed(s)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def eval_loader(dataset: ImageDataset, batch_size: int, num_workers: int, pin_memory: bool = False,
                persistent: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, prefetch_factor=4 if num_workers else None,
                      persistent_workers=persistent and num_workers > 0)
