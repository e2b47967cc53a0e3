"""What every style method learns from: the real training images (never a test image), their VAE latents cached once
(with mirrored copies), and class-balanced batches drawn from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from synthtl.config import StyleConfig
from synthtl.data.datasets import load_data
from synthtl.data.imagelist import ImageList
from synthtl.data.images import load_rgb
from synthtl.data.splits import train_indices, write_split
from synthtl.errors import BadImageError, DataError
from synthtl.runtime import Runtime, derive_seed, is_main


def training_images(cfg: StyleConfig, out: Path) -> ImageList:
    """The real training images (train split, or its few-shot subset: the selection fine-tuning makes)."""
    d = cfg.data
    images = load_data(d, "train")
    seed = d.split_seed if d.split_seed >= 0 else cfg.seed
    idx = train_indices(images, d, seed)[0]  # unreadable shots are skipped later, as fine-tuning does
    if cfg.images_per_class:
        rng = np.random.default_rng(derive_seed(seed, "style-images") % 2**32)
        keep = [i for cls in images.subset(idx).by_class() for i in rng.permutation(cls)[: cfg.images_per_class]]
        idx = [idx[i] for i in sorted(keep)]
    if not idx:
        raise DataError(f"dataset {d.name!r} has no images in the chosen training split; nothing to learn a style from")
    write_split(out / "splits" / "train.json", images, idx, kind="style-train", shots=d.shots, seed=seed)
    return images.subset(idx)


def square(img: Image.Image, size: int, center: bool) -> tuple[Image.Image, int, int]:
    """Short side to `size`; with `center`, also the centre square. Returns (image, crop top, crop left)."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    if not center:
        return img, 0, 0
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size)), top, left


@dataclass
class Latents:
    """The cached VAE latent means: latents[i] is a (variants, 4, h, w) tensor on CPU in the frozen models' dtype."""

    latents: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int, int, int]] = field(default_factory=list)  # SDXL: original h, w, crop top, left
    skipped: int = 0


@torch.inference_mode()
def cache_latents(vae, images: ImageList, cfg: StyleConfig, rt: Runtime, sizes: bool = False) -> Latents:
    """Every image's latent (and its mirror image's), computed once; `sizes`: also record SDXL's size conditioning."""
    out = Latents()
    for i in tqdm(range(len(images)), desc="encode", unit="img", disable=not (cfg.progress and is_main())):
        try:
            original = load_rgb(images.path(i))
            img, top, left = square(original, cfg.resolution, cfg.crop == "center")
        except BadImageError:
            if cfg.data.on_bad_image == "skip":
                out.skipped += 1
                continue
            raise
        variants = [img] + ([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if cfg.random_flip else [])
        x = torch.stack([torch.from_numpy(np.asarray(v, dtype=np.float32)).permute(2, 0, 1) for v in variants])
        x = (x / 127.5 - 1).to(rt.device, vae.dtype)
        with rt.autocast():
            lat = vae.encode(x).latent_dist.mean
        out.latents.append(lat.to("cpu", vae.dtype))
        out.labels.append(images.labels[i])
        if sizes:
            out.sizes.append((original.height, original.width, top, left))
    if not out.latents:
        raise DataError("none of the training images could be read")
    return out


def sample_picks(data: Latents, pool: dict[int, list[int]], count: int, size: int,
                 g: torch.Generator) -> list[tuple[int, int, int, int, int]]:
    """A class-balanced draw of (class, latent index, variant, crop top, crop left), crops of `size` cells."""
    present = sorted(pool)
    picks = []
    for _ in range(count):
        y = present[int(torch.randint(len(present), (1,), generator=g))]
        i = pool[y][int(torch.randint(len(pool[y]), (1,), generator=g))]
        v = int(torch.randint(len(data.latents[i]), (1,), generator=g))
        h, w = data.latents[i].shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=g)) if h > size else 0
        left = int(torch.randint(w - size + 1, (1,), generator=g)) if w > size else 0
        picks.append((y, i, v, top, left))
    return picks


def class_pool(seed: int, groups: dict[int, list[int]], step: int) -> dict[int, list[int]]:
    """Per-class mode: the one class (and its images) filling step `step`'s batch. Classes take turns in a fresh seeded
    order each round, so after k rounds every token had exactly k updates on its own class, as a separate run would."""
    classes = sorted(groups)
    g = torch.Generator().manual_seed(derive_seed(seed, "style-class-order", step // len(classes)))
    c = classes[int(torch.randperm(len(classes), generator=g)[step % len(classes)])]
    return {c: groups[c]}
