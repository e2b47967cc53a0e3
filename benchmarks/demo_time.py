"""Wall time of `synthtl demo` (the README's main command) from a fresh output folder and cache.

    python benchmarks/demo_time.py            # target: under 3 minutes on 2 CPU cores

It runs the installed `synthtl demo` in a subprocess (imports included), as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="synthtl_demo_"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHTL_CACHE": str(out / "cache")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "synthtl", "demo", "--out", str(out / "demo")], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"demo failed with exit code {proc.returncode}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    verdict = "within" if seconds < 180 else "OVER"
    print(f"synthtl demo: {seconds:.0f} s on {cores} CPU cores ({verdict} the 3-minute target)")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
