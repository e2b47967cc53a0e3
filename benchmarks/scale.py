"""Generated sets at real scale: wall time and peak memory of every set-wide operation, at 3 sizes.

    python benchmarks/scale.py                       # 10 x 1k, 100 x 1k, 397 x 3k (SUN397 at the paper's 3k)
    python benchmarks/scale.py --sizes 10x1000 100x1000 --json

No model runs: a set is planned from a synthetic identity, its progress logs are written in the generator's format
and its image files are empty (no operation below decodes them, except --validate, which is measured on real small
JPEGs and extrapolated). Each operation runs in a fresh subprocess, so peaks do not mix; the peak is reported above
the process's RSS after its imports. Targets (issue "A million images") apply to the 397 x 3,000 set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"plan": 30, "status": 10, "resume": 15, "rerun": 10, "load": 20}  # for 397 x 3,000 images
TARGET_RSS_MB = 1536  # every operation, above the import baseline
TARGET_VALIDATE = 700  # images per second on 2 cores
OPS = ("plan", "status", "finalize", "rerun", "load", "resume")
WHAT = {"plan": "plan + write the manifest", "status": "generate --status", "finalize": "finalize (last shard, once)",
        "rerun": "re-run a finished set", "load": "read for training (per_class = all)",
        "resume": "resume start-up (half done)"}


def _names(classes: int) -> list[str]:
    return [f"class {c:03d} with a name of ordinary length" for c in range(classes)]


def _ident(classes: int) -> dict:
    return {"format": 1, "model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "revision": "0" * 40,
            "scheduler": "dpmsolver++", "steps": 25, "guidance": 2.0, "height": 512, "width": 512, "dtype": "fp16",
            "templates": ["a good photo of the {}."], "suffix": "", "negative": "", "style_hash": "", "seed": 0,
            "classes": _names(classes), "image_format": "jpeg", "quality": 95, "train_copy": 256}


def _table(classes: int) -> list[dict]:
    from synthtl.data import genset

    names = _names(classes)
    prompts = [[{"prompt": f"a good photo of the {n}.", "template": 0, "truncated": False,
                 "requested_prompt": f"a good photo of the {n}."}] for n in names]
    return genset.class_table([(n, n) for n in names], prompts, [""] * classes)


def _op(name: str, folder: Path, classes: int, per_class: int) -> None:
    """Runs one operation in this (fresh) process; prints its wall time and peak RSS above the import baseline."""
    import numpy as np

    from synthtl.data import genset
    from synthtl.data.imagelist import ImageList
    from synthtl.data.synthetic import load_synthetic_set
    from synthtl.generation import run as gen_run
    from synthtl.generation import shards

    base = _rss_mb()
    t0 = time.perf_counter()
    if name == "plan":
        genset.write_or_extend(folder, _ident(classes), _table(classes), per_class)
    elif name == "status":
        st = shards.status(folder)
        assert st["done"] == st["total"] == classes * per_class, st["done"]
    elif name == "finalize":
        rows = genset.read_rows(folder)
        assert shards.finalize(folder, rows, 0, 1, per_class)
    elif name == "rerun":
        rows = genset.read_rows(folder)
        assert gen_run.finished(rows, per_class)
    elif name == "load":
        names = tuple(_names(classes))
        real = ImageList(root=folder, paths=(), labels=(), classes=names, names=names, name="real")
        images, rec = load_synthetic_set(folder, real, per_class)
        assert len(images) == classes * per_class and not rec["partial"]
        np.bincount(np.array(images.labels))
    elif name == "resume":
        rows = genset.read_rows(folder)
        _, todo = gen_run.resume_todo(folder, rows, per_class, 0, 1)
        assert len(todo) == classes * per_class - classes * per_class // 2, len(todo)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak - base}), flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fake_images_and_logs(folder: Path, classes: int, per_class: int) -> None:
    """Empty image files and a progress log in the generator's format (every row done, planned seeds)."""
    from synthtl.data.genset import image_seed, row_id, shard_name

    table = _table(classes)
    with open(folder / "progress" / "shard-0000-of-0001.jsonl", "w") as log:
        for c, k in enumerate(table):
            d = folder / "images" / k["folder"]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{i:06d}.jpg").touch()
            log.write("".join(json.dumps({"id": row_id(c, i), "seed": image_seed(0, c, i), "redraws": 0}) + "\n"
                              for i in range(per_class)))
    assert shard_name(0, 1) == "shard-0000-of-0001"


def _half_log(folder: Path, per_class: int) -> None:
    """Keeps the log rows of the first half of the rows (a set killed half way)."""
    log = folder / "progress" / "shard-0000-of-0001.jsonl"
    with open(log) as f:
        lines = f.readlines()
    with open(log, "w") as f:
        f.writelines(lines[: len(lines) // 2])
    (folder / "complete.json").unlink(missing_ok=True)
    for p in (folder / "progress").glob("*.finished.json"):
        p.unlink()


def _run_op(name: str, folder: Path, classes: int, per_class: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--op", name, "--dir", str(folder), "--size",
                           f"{classes}x{per_class}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def _validate_rate(tmp: Path, images: int = 240) -> dict:
    """--validate on real 512-px q95 JPEGs with their 256-px training copies (one class, `images` rows)."""
    import numpy as np
    from PIL import Image

    from synthtl.data import genset
    from synthtl.data.cache import resized_jpeg
    from synthtl.data.genset import image_seed, row_id
    from synthtl.generation import shards

    folder = tmp / "validate"
    table = _table(1)
    genset.write_or_extend(folder, _ident(1), table, images)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC)  # smooth, like a generated image
    data, copy = _jpeg(img), resized_jpeg(img, 256)
    for d in ("images", "train"):
        (folder / d / table[0]["folder"]).mkdir(parents=True, exist_ok=True)
    with open(folder / "progress" / "shard-0000-of-0001.jsonl", "w") as log:
        for i in range(images):
            (folder / "images" / table[0]["folder"] / f"{i:06d}.jpg").write_bytes(data)
            (folder / "train" / table[0]["folder"] / f"{i:06d}.jpg").write_bytes(copy)
            log.write(json.dumps({"id": row_id(0, i), "seed": image_seed(0, 0, i), "redraws": 0}) + "\n")
    t0, c0 = time.perf_counter(), time.process_time()
    res = shards.validate(folder)
    seconds = time.perf_counter() - t0
    assert res["checked"] == images and not res["corrupt"] and not res["missing"]
    return {"images_per_s": images / seconds, "cpu_s_per_image": (time.process_time() - c0) / images,
            "workers": os.cpu_count()}


def _jpeg(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["10x1000", "100x1000", "397x3000"], help="CLASSESxPER_CLASS")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--op", choices=OPS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.op:
        classes, per_class = map(int, args.size.split("x"))
        _op(args.op, Path(args.dir), classes, per_class)
        return
    tmp = Path(tempfile.mkdtemp(prefix="synthtl_scale_"))
    results: dict = {"load_avg": os.getloadavg()[0], "cores": len(os.sched_getaffinity(0)), "sizes": {}}
    try:
        results["validate"] = _validate_rate(tmp)
        if not args.json:
            v = results["validate"]
            print(f"--validate: {v['images_per_s']:.0f} img/s (image + training copy each) on {v['workers']} "
                  f"cores, {v['cpu_s_per_image'] * 1000:.1f} CPU-ms per image; target >= {TARGET_VALIDATE}/s",
                  flush=True)
        for size in args.sizes:
            classes, per_class = map(int, size.split("x"))
            folder = tmp / f"set-{size}"
            row = {}
            row["plan"] = _run_op("plan", folder, classes, per_class)
            t0 = time.perf_counter()
            _fake_images_and_logs(folder, classes, per_class)
            row["setup_s"] = time.perf_counter() - t0
            for name in ("status", "finalize", "rerun", "load"):
                row[name] = _run_op(name, folder, classes, per_class)
            _half_log(folder, per_class)
            row["resume"] = _run_op("resume", folder, classes, per_class)
            results["sizes"][size] = row
            if not args.json:
                _print_size(size, classes * per_class, row)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))


def _print_size(size: str, rows: int, row: dict) -> None:
    big = size == "397x3000"
    print(f"\n{size} ({rows:,} rows)")
    print("| operation | wall s | peak MB above imports | us per row | target s | ratio to target |")
    print("|---|---|---|---|---|---|")
    for name in OPS:
        r = row[name]
        target = TARGETS_S.get(name)
        ratio = f"{r['seconds'] / target:.2f}" if big and target else "-"
        print(f"| {WHAT[name]} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['seconds'] / rows * 1e6:.2f} | "
              f"{target or '-'} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
