"""Training images/s of synthtl's loop beside a plain ImageFolder loop and the compute bound, in one run.

    python benchmarks/train_throughput.py --model resnet50 --images 4096 --workers 16          # on a GPU
    python benchmarks/train_throughput.py --model test_resnet --size 64 --images 512 --epochs 1  # CPU smoke

(a) plain: a textbook epoch loop over torchvision ImageFolder + DataLoader (PIL RandomResizedCrop/flip on the
    full-size JPEGs, default non-persistent workers);
(b) ours: synthtl's `train_one_epoch` over its first-use scan cache (short side 256) and loader (persistent workers,
    seeded per-sample augmentation; `--decode device`: nvJPEG + roi_align crops on the GPU);
(c) bound: the same model stepped on one batch already on the device (no data loading at all).
Same model, optimizer, precision and memory format; (a) and (b) are timed over whole epochs after a warm-up epoch
(so per-epoch worker start-up counts), (c) over the same number of steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthtl.data.cache import scan_images  # noqa: E402
from synthtl.data.datasets import image_folder  # noqa: E402
from synthtl.data.loader import ImageDataset, set_epoch, train_loader  # noqa: E402
from synthtl.data.transforms import DeviceAugment, train_transform  # noqa: E402
from synthtl.models import create_classifier  # noqa: E402
from synthtl.runtime import resolve_runtime  # noqa: E402
from synthtl.training.loop import train_one_epoch  # noqa: E402


def make_jpeg_folder(root: Path, n: int, classes: int = 10, size: tuple[int, int] = (500, 375)) -> Path:
    """Photo-sized JPEGs (like Food-101/Aircraft originals) with smooth random content."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"c{i % classes:02d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps of the compute-bound measurement")
    ap.add_argument("--folder", default="", help="use this class-per-folder JPEG folder instead of generating one")
    ap.add_argument("--decode", choices=["cpu", "device"], default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file (benchmarks/gpu_check.sh)")
    args = ap.parse_args()

    rt = resolve_runtime("auto", args.precision)
    work = Path(tempfile.gettempdir()) / "synthtl_bench"
    folder = Path(args.folder) if args.folder else make_jpeg_folder(work / "jpegs", args.images)
    model, dc = create_classifier(args.model, 10, pretrained=False, img_size=args.size)
    dc["input_size"] = (3, args.size, args.size)
    model.to(rt.device)
    channels_last = rt.is_cuda
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with rt.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    steps_per_epoch = args.images // args.batch

    def plain_rate() -> float:
        import torchvision
        from torchvision import transforms as T

        tf = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(dc["mean"], dc["std"])])
        ds = torchvision.datasets.ImageFolder(str(folder), tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                             pin_memory=rt.is_cuda, drop_last=True)
        images, t0 = 0, 0.0
        for epoch in range(args.epochs + 1):
            if epoch == 1:
                sync()
                t0, images = time.perf_counter(), 0
            for x, y in loader:
                x = x.to(rt.device, non_blocking=True)
                step(x.contiguous(memory_format=torch.channels_last) if channels_last else x, y.to(rt.device))
                images += len(y)
        sync()
        return images / (time.perf_counter() - t0)

    def our_rate() -> float:
        images = image_folder(folder, tag="bench")
        t0 = time.perf_counter()
        cached = scan_images(images, work / "cache", short_side=256, workers=args.workers, progress=False).images
        print(f"  first-use scan + resize of {len(images)} images: {time.perf_counter() - t0:.1f} s (once per dataset)")
        if args.decode == "device":
            ds, augment = ImageDataset(cached, raw=True), DeviceAugment(dc, rt.device, train=True)
        else:
            ds, augment = ImageDataset(cached, train_transform(dc)), None
        loader = train_loader([ds], args.batch, seed=0, num_workers=args.workers, pin_memory=rt.is_cuda)
        n, step_count, t0 = 0, 0, 0.0
        for epoch in range(args.epochs + 1):
            if epoch == 1:
                sync()
                t0, n = time.perf_counter(), 0
            set_epoch(loader, 0, epoch)
            stats, step_count = train_one_epoch(model, loader, opt, rt, step=step_count, total_steps=10**9,
                                                lr_fn=lambda s: 0.01, num_classes=10, scaler=scaler, augment=augment,
                                                channels_last=channels_last, progress=False)
            n += stats.images
        sync()
        return n / (time.perf_counter() - t0)

    def bound_rate() -> float:
        x = torch.randn(args.batch, 3, args.size, args.size, device=rt.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,), device=rt.device)
        for _ in range(args.warmup):
            step(x, y)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps_per_epoch * args.epochs):
            step(x, y)
        sync()
        return steps_per_epoch * args.epochs * args.batch / (time.perf_counter() - t0)

    def sync() -> None:
        if rt.is_cuda:
            torch.cuda.synchronize(rt.device)

    device_name = torch.cuda.get_device_name(rt.device) if rt.is_cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}; model {args.model} at {args.size}px, batch {args.batch}, precision "
          f"{rt.dtype}, workers {args.workers}, decode {args.decode}")
    rates = {}
    for name, fn in (("bound", bound_rate), ("plain", plain_rate), ("ours", our_rate)):
        rates[name] = fn()
        print(f"  {name:<6} {rates[name]:9.1f} images/s")
    print(f"ours / plain = {rates['ours'] / rates['plain']:.2f}x    ours / compute bound = "
          f"{100 * rates['ours'] / rates['bound']:.0f}%    plain / compute bound = "
          f"{100 * rates['plain'] / rates['bound']:.0f}%")
    if args.json:
        write_json(args.json, {"device": device_name, "command": " ".join(sys.argv[1:]), **rates})


def write_json(path: str, row: dict) -> None:
    import json

    Path(path).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
