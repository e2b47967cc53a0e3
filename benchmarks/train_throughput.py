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
`--compile` adds (b) and (c) with the model compiled (`model.compile=true`); `--ddp N` adds (b) run data-parallel in N
processes under torchrun (the global batch stays `--batch`), with its scaling against one process.

    python benchmarks/train_throughput.py --model resnet18 --compile --ddp 8 --workers 8         # an 8-GPU node
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
from synthtl.training.loop import Steps, train_one_epoch  # noqa: E402


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
    ap.add_argument("--compile", action="store_true", help="also time ours and the bound with the model compiled")
    ap.add_argument("--ddp", type=int, default=0, help="also time ours data-parallel in N torchrun processes")
    ap.add_argument("--ddp-worker", default="", help=argparse.SUPPRESS)  # internal: a torchrun rank; JSON out path
    args = ap.parse_args()
    if args.ddp_worker:
        return ddp_worker(args)

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
            how = Steps(opt, rt, 10**9, lambda s: 0.01, 10, scaler=scaler, augment=augment,
                        channels_last=channels_last, progress=False)
            stats, step_count = train_one_epoch(model, loader, how, step_count)
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
        print(f"  {name:<16} {rates[name]:9.1f} images/s")
    print(f"ours / plain = {rates['ours'] / rates['plain']:.2f}x    ours / compute bound = "
          f"{100 * rates['ours'] / rates['bound']:.0f}%    plain / compute bound = "
          f"{100 * rates['plain'] / rates['bound']:.0f}%")
    if args.compile:
        model.compile()
        for name, fn in (("bound_compiled", bound_rate), ("ours_compiled", our_rate)):
            rates[name] = fn()
            print(f"  {name:<16} {rates[name]:9.1f} images/s")
        print(f"compiled / eager: ours {rates['ours_compiled'] / rates['ours']:.2f}x, bound "
              f"{rates['bound_compiled'] / rates['bound']:.2f}x")
    if args.ddp:
        rates[f"ours_ddp{args.ddp}"] = run_ddp(args, folder, work)
        print(f"  {f'ours_ddp{args.ddp}':<16} {rates[f'ours_ddp{args.ddp}']:9.1f} images/s (all ranks)    "
              f"scaling = {rates[f'ours_ddp{args.ddp}'] / rates['ours']:.2f}x of 1 process with {args.ddp}")
    if args.json:
        write_json(args.json, {"device": device_name, "command": " ".join(sys.argv[1:]), **rates})


def run_ddp(args: argparse.Namespace, folder: Path, work: Path) -> float:
    """Runs this script's DDP worker under torchrun with N processes; returns the global images/s."""
    import subprocess

    out = work / "ddp.json"
    out.unlink(missing_ok=True)
    keep, skip = [], False
    for a in sys.argv[1:]:  # this command line without --ddp N
        if skip or a.startswith("--ddp"):
            skip = a == "--ddp"
            continue
        keep.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ddp}",
           __file__, *keep, "--folder", str(folder), "--ddp-worker", str(out)]
    subprocess.run(cmd, check=True)
    import json

    return json.loads(out.read_text())["rate"]


def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun rank: synthtl's loop on its share of every global batch, DDP-wrapped (training/distributed)."""
    from synthtl.training import distributed

    rt = resolve_runtime("auto", args.precision)
    world = distributed.init(rt)
    model, dc = create_classifier(args.model, 10, pretrained=False, img_size=args.size)
    dc["input_size"] = (3, args.size, args.size)
    model.to(rt.device)
    if rt.is_cuda:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()
    trained = distributed.wrap(model, rt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 else None
    images = image_folder(Path(args.folder), tag="bench")
    work = Path(tempfile.gettempdir()) / "synthtl_bench"
    cached = scan_images(images, work / "cache", short_side=256, workers=args.workers, progress=False).images
    loader = train_loader([ImageDataset(cached, train_transform(dc))], args.batch, seed=0,
                          num_workers=max(1, args.workers // world), pin_memory=rt.is_cuda,
                          rank=distributed.rank(), world=world)
    n, step_count, t0 = 0, 0, 0.0
    for epoch in range(args.epochs + 1):
        if epoch == 1:
            distributed.barrier()
            t0, n = time.perf_counter(), 0
        set_epoch(loader, 0, epoch)
        how = Steps(opt, rt, 10**9, lambda s: 0.01, 10, scaler=scaler, channels_last=rt.is_cuda, world=world,
                    progress=False)
        stats, step_count = train_one_epoch(trained, loader, how, step_count)
        n += stats.images
    distributed.barrier()
    total = distributed.sum_all([n], rt.device)[0]
    if distributed.rank() == 0:
        write_json(args.ddp_worker, {"rate": total / (time.perf_counter() - t0), "world": world})
    distributed.close()


def write_json(path: str, row: dict) -> None:
    import json

    Path(path).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
