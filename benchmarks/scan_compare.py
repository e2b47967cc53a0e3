"""The real-dataset first-use scan, side by side with an earlier commit's scan on the same images.

    python benchmarks/scan_compare.py --base 6a1b163          # the first commit's data cache
    python benchmarks/scan_compare.py --base 6a1b163 --count 3000 --rounds 2

Two image sets, class-per-folder, written once: 500 x 375 photo-like q90 JPEGs (a copy must be resized and
re-encoded) and 341 x 256 ones (already the copy's size). Each round scans each set with the base tree's
`scan_images` and with this tree's, alternately, in fresh processes, from an empty cache (default settings: 256-px
copies, 4 threads). Prints images per second and CPU-ms per image, and this tree's rate over the base's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, shutil, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from synthtl.data.cache import scan_images
from synthtl.data.datasets import image_folder
images = image_folder(Path(sys.argv[2]))
shutil.rmtree(sys.argv[3], ignore_errors=True)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
scan_images(images, sys.argv[3], 256, "error", 4, False)
t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"img_s": len(images) / t, "cpu_ms": cpu / len(images) * 1000}))
"""


def _images(root: Path, count: int, size: tuple[int, int]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    from PIL import Image
    from scale import _photos

    if size == (500, 375):
        _photos(root, count)
        return
    rng = np.random.default_rng(0)
    for n in range(count):
        img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).resize(size)
        path = root / f"class_{n % 20:03d}" / f"{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare with")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work, base_tree = Path(tmp), Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            print("| images | base img/s | base CPU-ms/img | ours img/s | ours CPU-ms/img | ours/base |")
            print("|---|---|---|---|---|---|")
            for size in ((500, 375), (341, 256)):
                folder = work / f"{size[0]}x{size[1]}"
                _images(folder, args.count, size)
                got: dict[str, list[dict]] = {"base": [], "ours": []}
                for _ in range(args.rounds):
                    for who, src in (("base", base_tree / "src"), ("ours", ROOT / "src")):
                        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(folder), str(work / "cache")],
                                             check=True, capture_output=True, text=True).stdout
                        got[who].append(json.loads(out.splitlines()[-1]))
                mean = {w: {k: sum(r[k] for r in rs) / len(rs) for k in ("img_s", "cpu_ms")} for w, rs in got.items()}
                print(f"| {args.count} x {size[0]} x {size[1]} | {mean['base']['img_s']:.0f} | "
                      f"{mean['base']['cpu_ms']:.2f} | {mean['ours']['img_s']:.0f} | {mean['ours']['cpu_ms']:.2f} | "
                      f"{mean['ours']['img_s'] / mean['base']['img_s']:.2f}x |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
