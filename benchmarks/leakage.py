"""Speed of the leakage check: perceptual hashing (images/s) and the all-pairs hash comparison (seconds).

    python benchmarks/leakage.py                       # targets: >= 500 img/s hashing, <= 120 s for 100k x 10k
    python benchmarks/leakage.py --images 2000 --syn 100000 --test 10000 --workers 2

Hashing reads JPEG q95 files the size the generator writes (512 px; Stable Diffusion v1.5's output), with the
textbook path (full decode, grayscale, LANCZOS to 32 px, one `scipy.fft.dctn` per image) timed beside ours (draft
decode, BOX resize, batched DCT, threads) on the same files. The comparison uses random 64-bit hashes with planted
near-duplicates (which it must find) and pure all-pairs work: nothing is sampled or indexed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from synthtl.metrics.leakage import hash_files, hash_pairs


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    """Smooth random images with mild grain saved as JPEG q95: about 80 KB at 512 px, like generated photos."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (size // 32, size // 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 3, (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        p = folder / f"{i:06d}.jpg"
        img.save(p, quality=95)
        paths.append(p)
    return paths


def textbook_hash(path: Path) -> int:
    with Image.open(path) as img:
        g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(g, norm="ortho")[:8, :8].flatten()
    bits = np.concatenate([[low[0] > 0], low[1:] > np.median(low[1:])])
    return int("".join("1" if b else "0" for b in bits), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="JPEG files hashed")
    ap.add_argument("--size", type=int, default=512, help="their side in pixels")
    ap.add_argument("--syn", type=int, default=100_000, help="synthetic hashes in the comparison")
    ap.add_argument("--test", type=int, default=10_000, help="test hashes in the comparison")
    ap.add_argument("--workers", type=int, default=0, help="threads (0 = one per core)")
    ap.add_argument("--chunk", type=int, default=4096, help="report.leak_chunk")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    folder = Path(tempfile.mkdtemp(prefix="synthtl_leak_"))
    try:
        paths = write_images(folder, args.images, args.size)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        n_text = min(len(paths), 300)
        t0 = time.perf_counter()
        ref = [textbook_hash(p) for p in paths[:n_text]]
        text_rate = n_text / (time.perf_counter() - t0)
        hash_files(paths[:50], args.workers)  # warm-up: thread pool, page cache of the first files
        t0, c0 = time.perf_counter(), time.process_time()
        hashes, ok, _ = hash_files(paths, args.workers)
        rate = len(paths) / (time.perf_counter() - t0)
        per_cpu_s = len(paths) / (time.process_time() - c0)  # CPU time of every thread: fair on a shared machine
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert ok.all()
    # Different resampling (BOX after draft vs LANCZOS) moves a few bits, never many: the same images must match.
    agree = np.bitwise_count(hashes[:n_text] ^ np.array(ref, dtype=np.uint64))
    print(f"hashing {args.images} JPEGs of {args.size} px ({kb:.0f} KB each) on {cores} cores: "
          f"textbook {text_rate:.0f} img/s, ours {rate:.0f} img/s ({rate / text_rate:.1f}x; target >= 500 img/s); "
          f"ours vs textbook hash: median {np.median(agree):.0f} bits apart")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  ours per CPU-second: {per_cpu_s:.0f} images (x {cores} cores = {per_cpu_s * cores:.0f} img/s when the "
          f"cores are free; 1-minute load average now {load:.1f})")

    rng = np.random.default_rng(1)
    syn = rng.integers(0, 2**63, args.syn, dtype=np.uint64)
    test = rng.integers(0, 2**63, args.test, dtype=np.uint64)
    planted = [(0, 0), (args.syn - 1, args.test - 1), (args.syn // 2, args.test // 3)]
    for i, j in planted:
        syn[i] = test[j] ^ np.uint64(0b10110)  # 3 bits apart
    t0, c0 = time.perf_counter(), time.process_time()
    ii, jj, _ = hash_pairs(syn, test, 6, args.chunk, args.workers)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    found = set(zip(ii.tolist(), jj.tolist(), strict=True))
    assert all(p in found for p in planted), "a planted near-duplicate was missed"
    print(f"comparing {args.syn} x {args.test} hashes (all pairs, <= 6 bits) on {cores} cores: {seconds:.1f} s "
          f"({cpu_s:.1f} CPU-s; target <= 120 s); {len(found)} pairs found, the {len(planted)} planted ones among them")


if __name__ == "__main__":
    main()
