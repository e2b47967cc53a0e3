"""Generated sets at real scale: wall time, CPU seconds and peak memory of every set-wide operation, at 3 sizes.

    python benchmarks/scale.py                       # 10 x 1k, 100 x 3k, 397 x 3k (SUN397 at the paper's 3k)
    python benchmarks/scale.py --sizes 10x1000 100x3000 --json
    python benchmarks/scale.py --sizes 10x1000 --ops first_use cached validate

No model generates anything: a set is planned from a synthetic identity, its progress logs are written in the
generator's format, and its image files and 256-px-style training copies are hard links to one small real JPEG per
class (so that the sets cost directory entries, not disk). A matching `data.name=folder` dataset (2 train and 1 test
image per class) serves as the real data. Each operation runs in a fresh subprocess, so peaks do not mix; the peak is
reported above the process's RSS after its imports. Targets (issue 22, "A million images") apply to 397 x 3,000.

The fine-tuning rows run `synthtl finetune` (`cli.main`, bridged++ on a random test_resnet at 32 px, 2 loader
workers, leep off) until its first training batch: the benchmark stands in for `train_one_epoch` (what the stage loop
calls with the real loader) with a function that takes one batch from that loader and stops the run. Included: the
CLI, config and identity, the real data's listing, scan and split, the synthetic set's reading, the model, the loader
and its workers, one batch decoded and augmented. "first use" starts with an empty data cache, "cached" reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"plan": 30, "status": 10, "resume": 15, "rerun": 10, "load": 20, "cached": 20}  # for 397 x 3,000
TARGET_RSS_MB = 1536  # every operation, above the import baseline
TARGET_VALIDATE = 700  # images per second on 2 cores
TARGET_FIRST_USE_CPU_MS = 1.5  # CPU per image of the first use
TARGET_SCAN = 800  # real-dataset first-use scan, images per second on 2 idle cores
SET_OPS = ("plan", "status", "finalize", "rerun", "load", "resume")
RUN_OPS = ("first_use", "cached", "validate")
OPS = SET_OPS + RUN_OPS + ("real_scan",)
WHAT = {"plan": "plan + write the manifest", "status": "generate --status", "finalize": "finalize (last shard, once)",
        "rerun": "re-run a finished set", "load": "read for training (`load_synthetic_set`, per_class = all)",
        "resume": "resume start-up (half done)", "first_use": "`finetune` to its first batch, empty cache",
        "cached": "`finetune` to its first batch, cached", "validate": "`generate --validate` (image + copy)"}


def _ids(classes: int) -> list[str]:
    return [f"class_{c:03d}_with_a_name_of_ordinary_length" for c in range(classes)]


def _names(classes: int) -> list[str]:
    return [i.replace("_", " ") for i in _ids(classes)]


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
    return genset.class_table(list(zip(_ids(classes), names, strict=True)), prompts, [""] * classes)


# ---------------------------------------------------------------------------------------------------- operations
def _op(name: str, folder: Path, classes: int, per_class: int) -> None:
    """Runs one operation in this (fresh) process; prints its wall time, CPU seconds and peak RSS above imports."""
    import numpy as np

    from synthtl import cli  # noqa: F401 - the command-line entry point's imports are part of the baseline
    from synthtl.data import genset
    from synthtl.data.imagelist import ImageList
    from synthtl.data.synthetic import load_synthetic_set
    from synthtl.generation import run as gen_run
    from synthtl.generation import shards

    if name in ("first_use", "cached"):
        import synthtl.training.run  # noqa: F401 - torch and timm: what the command imports before any work
    _reset_peak()
    base, t0, c0 = _rss_mb(), time.perf_counter(), _cpu_s()
    extra = {}
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
        real = ImageList(root=folder, paths=(), labels=(), classes=tuple(_ids(classes)), names=names, name="real")
        images, rec = load_synthetic_set(folder, real, per_class)
        assert len(images) == classes * per_class and not rec["partial"]
        np.bincount(np.array(images.labels))
    elif name == "resume":
        rows = genset.read_rows(folder)
        _, todo = gen_run.resume_todo(folder, rows, per_class, 0, 1)
        assert len(todo) == classes * per_class - classes * per_class // 2, len(todo)
    elif name == "validate":
        rc = _cli("generate", "--validate", str(folder))
        assert rc == 0, rc
    elif name == "real_scan":
        extra = _scan_folder(folder)
    else:
        extra = _first_batch(name, folder, per_class, t0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"seconds": seconds, "cpu_s": _cpu_s() - c0, "peak_mb": peak - base, **extra}),
          flush=True)


def _reset_peak() -> None:
    """Starts the peak RSS afresh after the imports (Linux: "5" > /proc/self/clear_refs), so that a peak of the imports
    themselves does not hide the operation's."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cli(*argv: str) -> int:
    from synthtl import cli

    with open(os.devnull, "w") as quiet:  # --validate lists nothing on a clean set; finetune prints a line or two
        stdout, sys.stdout = sys.stdout, quiet
        try:
            return cli.main(list(argv))
        finally:
            sys.stdout = stdout


class _FirstBatch(Exception):
    """Stops `synthtl finetune` once its first training batch is loaded."""


def _first_batch(name: str, folder: Path, per_class: int, t0: float) -> dict:
    """`synthtl finetune` until its first training batch; returns when it arrived (from `t0`) and facts about it."""
    from synthtl import faults
    from synthtl.training import stage

    work = folder.parent
    seen: dict = {}

    def first(model, loader, how, step):  # in place of `train_one_epoch`, called with the stage's real loader
        x, y, _ = next(iter(loader))
        seen.update(t=time.perf_counter(), batch=len(y), images=len(loader.dataset))
        raise _FirstBatch

    stage.train_one_epoch = first
    argv = ["finetune", "data.name=folder", f"data.root={work / 'real'}", f"data.cache_dir={work / 'cache'}",
            "data.num_workers=2", "model.name=test_resnet", "model.pretrained=false", "model.img_size=32",
            "strategy=bridged++", "synth_stage.batch_size=32", f"synthetic.path={folder}",
            f"synthetic.per_class={per_class}", f"out_dir={work / 'runs'}", f"run_name={name}", "progress=false",
            "leep.enabled=false"]
    with faults.inject("run.claimed", lambda run_dir: seen.update(claimed=time.perf_counter())):
        try:
            rc = _cli(*argv)
            raise SystemExit(f"finetune ended (exit {rc}) before its first batch")
        except _FirstBatch:
            pass
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds_to_claim": seen["claimed"] - t0, "first_batch_s": seen["t"] - t0, "batch": seen["batch"],
                "synthetic_images": seen["images"], "worker_peak_mb": workers}


def _scan_folder(folder: Path) -> dict:
    """The first-use scan of a real class-per-folder dataset as `synthtl finetune` runs it (default data settings:
    256-px copies, 4 threads), then the same scan again with its cache complete."""
    from synthtl.config import DataConfig
    from synthtl.data.cache import scan_images
    from synthtl.data.datasets import image_folder

    d = DataConfig()
    images = image_folder(folder, tag="real")
    t0 = time.perf_counter()
    scan_images(images, folder.parent / "scan-cache", d.cache_short_side, d.on_bad_image, d.num_workers, False)
    t1 = time.perf_counter()
    scan_images(images, folder.parent / "scan-cache", d.cache_short_side, d.on_bad_image, d.num_workers, False)
    return {"images": len(images), "threads": d.num_workers, "first_s": t1 - t0, "cached_s": time.perf_counter() - t1}


def _photos(root: Path, count: int, classes: int = 20) -> None:
    """`count` photo-like 500 x 375 JPEGs at q90 (smooth colour fields, texture and sensor noise), class-per-folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    fields = [np.stack([np.sin(xx / rng.uniform(20, 80) + yy / rng.uniform(30, 80) + k) for k in range(3)], -1)
              for _ in range(8)]
    for n in range(count):
        texture = Image.fromarray(rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)).resize((500, 375))
        img = (fields[n % 8] * rng.uniform(40, 120, 3) + 128 + (np.asarray(texture, np.float32) - 128) * 0.3
               + rng.normal(0, 8, (375, 500, 3)))
        path = root / f"class_{n % classes:03d}" / f"{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the loader workers), user + system."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _run_op(name: str, folder: Path, classes: int, per_class: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--op", name, "--dir", str(folder), "--size",
                           f"{classes}x{per_class}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    if name == "first_use" or name == "cached":  # the wall time that counts ends at the first batch
        out["seconds"] = out.pop("first_batch_s")
    if name == "real_scan":  # CPU seconds count both scans; the second only stats files and reads the log
        out["images_per_s"] = out["images"] / out["first_s"]
        out["cpu_ms_per_image"] = out["cpu_s"] / out["images"] * 1e3
    return out


# --------------------------------------------------------------------------------------------------- the files
def _small_jpegs(tmp: Path, classes: int) -> list[tuple[Path, Path]]:
    """(image, training copy) of each class: one small real JPEG and its copy as the generator writes it."""
    import numpy as np
    from PIL import Image

    from synthtl.data.cache import resized_jpeg

    out = []
    rng = np.random.default_rng(0)
    for c in range(classes):
        arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((64, 64), Image.Resampling.BICUBIC)
        pair = (tmp / "sources" / f"{c:04d}.jpg", tmp / "sources" / f"{c:04d}-train.jpg")
        pair[0].parent.mkdir(parents=True, exist_ok=True)
        img.save(pair[0], format="JPEG", quality=95)
        pair[1].write_bytes(resized_jpeg(img, 256))
        out.append(pair)
    return out


def _set_files(folder: Path, classes: int, per_class: int) -> None:
    """Image files and training copies (hard links: at most 3,000 per source, far below a file system's limit) and a
    progress log in the generator's format (every row done, planned seeds), and the set's identity.json."""
    from synthtl.data.genset import image_seed, row_id, shard_name
    from synthtl.files import write_json

    table = _table(classes)
    sources = _small_jpegs(folder.parent, classes)
    with open(folder / "progress" / f"{shard_name(0, 1)}.jsonl", "w") as log:
        for c, (k, (image, copy)) in enumerate(zip(table, sources, strict=True)):
            for d, src in (("images", image), ("train", copy)):
                (folder / d / k["folder"]).mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    os.link(src, folder / d / k["folder"] / f"{i:06d}.jpg")
            log.write("".join(json.dumps({"id": row_id(c, i), "seed": image_seed(0, c, i), "redraws": 0}) + "\n"
                              for i in range(per_class)))
    write_json(folder / "identity.json", {"kind": "generate", "hash": f"scale{classes}x{per_class}", "identity": {}})


def _real_folder(root: Path, classes: int) -> None:
    """A `data.name=folder` dataset with the set's classes: 2 train images and 1 test image per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("test", 1)):
        for c in _ids(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")


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


# ------------------------------------------------------------------------------------------------------- driver
def _measure_size(tmp: Path, size: str, ops: list[str]) -> dict:
    """Every operation in `ops` on one set of `size`, in the order a set lives them; the set is removed after."""
    classes, per_class = map(int, size.split("x"))
    work = tmp / f"work-{size}"
    folder = work / "set"
    row: dict = {"plan": _run_op("plan", folder, classes, per_class)}
    t0 = time.perf_counter()
    _set_files(folder, classes, per_class)
    _real_folder(work / "real", classes)
    row["setup_s"] = time.perf_counter() - t0
    for name in ("status", "finalize", "rerun", "load", "first_use", "cached", "validate"):
        if name == "finalize" or name in ops:
            row[name] = _run_op(name, folder, classes, per_class)
    if "resume" in ops:
        _half_log(folder, per_class)
        row["resume"] = _run_op("resume", folder, classes, per_class)
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["10x1000", "100x3000", "397x3000"], help="CLASSESxPER_CLASS")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="what to measure (default: all)")
    ap.add_argument("--scan-images", type=int, default=3000, help="photo-like JPEGs for the real-dataset scan")
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
    results: dict = {"load_avg": os.getloadavg(), "cores": len(os.sched_getaffinity(0)), "sizes": {}}
    try:
        if "validate" in args.ops:
            results["validate_rate"] = v = _validate_rate(tmp)
            if not args.json:
                print(f"--validate: {v['images_per_s']:.0f} img/s (image + training copy each) on {v['workers']} "
                      f"cores, {v['cpu_s_per_image'] * 1000:.1f} CPU-ms per image; target >= {TARGET_VALIDATE}/s",
                      flush=True)
        if "real_scan" in args.ops:
            _photos(tmp / "photos", args.scan_images)
            results["real_scan"] = r = _run_op("real_scan", tmp / "photos", 0, 0)
            shutil.rmtree(tmp / "photos")
            if not args.json:
                print(f"real-dataset first-use scan ({r['images']} photo-like 500x375 q90 JPEGs, {r['threads']} "
                      f"threads): {r['images_per_s']:.0f} img/s, {r['cpu_ms_per_image']:.2f} CPU-ms per image; "
                      f"cached rescan {r['cached_s']:.2f} s; target >= {TARGET_SCAN}/s on 2 idle cores", flush=True)
        for size in args.sizes if set(args.ops) - {"real_scan"} else []:
            results["sizes"][size] = row = _measure_size(tmp, size, args.ops)
            if not args.json:
                _print_size(size, row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_avg_after"] = os.getloadavg()
    print(json.dumps(results, indent=2) if args.json else f"\nload average before {results['load_avg']}, after "
          f"{results['load_avg_after']}")


def _print_size(size: str, row: dict) -> None:
    classes, per_class = map(int, size.split("x"))
    rows, big = classes * per_class, size == "397x3000"
    print(f"\n{size} ({rows:,} rows; set files made in {row['setup_s']:.0f} s)")
    print("| operation | wall s | CPU s | CPU ms per image | peak MB above imports | target s | ratio to target |")
    print("|---|---|---|---|---|---|---|")
    for name in OPS:
        if name not in row:
            continue
        r, target = row[name], TARGETS_S.get(name)
        ratio = f"{r['seconds'] / target:.2f}" if big and target else "-"
        print(f"| {WHAT[name]} | {r['seconds']:.2f} | {r['cpu_s']:.1f} | {r['cpu_s'] / rows * 1e3:.3f} | "
              f"{r['peak_mb']:.0f} | {target or '-'} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
