"""CPU threads of jobs that share the cores: what a CPU study with `launcher.parallel=2` does, before and after
synthtl shared the cores out (each slot's OMP_NUM_THREADS = its share of `os.sched_getaffinity`), under a fixed
background load.

    python benchmarks/threads.py                 # 2 side-by-side tiny fine-tunes on digits, 1 busy background process
    python benchmarks/threads.py --jobs 2 --load 0

"before": every job takes all the cores (torch's default). "after": each takes `runtime.cpu_threads(jobs)`. Prints
the wall time of the slowest job of each round and the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from synthtl.runtime import cpu_threads  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _round(jobs: int, threads: int, work: Path, tag: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "synthtl", "finetune", "-c", "finetune/tiny_cpu", "data.name=digits",
            "data.shots=20", "real_stage.epochs=3", "leep.enabled=false", "progress=false",
            f"data.cache_dir={work / 'cache'}"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*argv, f"out_dir={work / tag}", f"seed={i}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for i in range(jobs)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(p.stderr.read().decode()[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="fine-tunes side by side (study slots)")
    ap.add_argument("--load", type=int, default=1, help="busy background processes")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    stop = mp.Event()
    load = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _round(1, 1, work, "warm")  # the data cache and the digits PNGs, once
        for p in load:
            p.start()
        try:
            before = _round(args.jobs, cores, work, "before")
            after = _round(args.jobs, cpu_threads(args.jobs), work, "after")
        finally:
            stop.set()
    print(f"{args.jobs} fine-tunes side by side on {cores} cores, {args.load} busy background process(es), load "
          f"average {os.getloadavg()[0]:.1f}")
    print(f"  before: {cores} threads each   {before:6.1f} s")
    print(f"  after : {cpu_threads(args.jobs)} thread(s) each  {after:6.1f} s   ({before / after:.2f}x faster)")


if __name__ == "__main__":
    main()
