"""Study-scale timings: `synthtl study --dry-run` with thousands of jobs and `synthtl report` over thousands of runs.

    python benchmarks/scale_studies.py                 # 500 / 2,000 / 5,000 jobs; 300 / 1,000 / 3,000 runs
    python benchmarks/scale_studies.py --sizes small   # the smallest size only (a smoke check)

Each operation runs in a fresh subprocess (peak RSS from GNU time, `/usr/bin/time -f %M`), so that growth with size
is visible and peaks do not mix. Targets (issue "A million images"): dry-run of 5,000 jobs <= 60 s, report of 3,000
runs <= 30 s, each at <= 1.5 GB peak RSS above the import baseline. The dry-run needs no dataset on disk (class counts
come from the shipped class names); the report's runs are copies of a real tiny study's run folders with other seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": (500, 300), "medium": (2000, 1000), "large": (5000, 3000)}
PY = [sys.executable, "-m", "synthtl"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command in a fresh process (GNU time's %M: that process's own peak)."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, env=ENV, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, int(done.stderr.strip().splitlines()[-1]) / 1024


def baseline_rss(cwd: Path) -> float:
    """Peak RSS of importing synthtl's CLI and torch (what every command pays before its own work)."""
    code = "import synthtl.cli, torch, timm, omegaconf"
    return timed([sys.executable, "-c", code], cwd)[1]


def tiny_study(work: Path) -> Path:
    """A real tiny study (2 strategies x 2 seeds on a generated image folder) whose run folders are cloned."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_folder

    data = work / "data"
    make_folder(data / "train", 8, seed=1)
    make_folder(data / "test", 4, seed=2)
    folder = work / "tiny"
    args = [f"out_dir={folder}", f"data_root={data}", f"cache_dir={work / 'cache'}",
            "finetune_preset=finetune/tiny_cpu",
            "finetune=[real_stage.epochs=2,synth_stage.epochs=1,real_stage.batch_size=8,synth_stage.batch_size=8]",
            "generate_preset=generate/tiny", "generate=[generator.steps=2]", "grid.datasets=[folder]",
            "grid.models=[test_resnet]", "grid.strategies=[vanilla,bridged++]", "grid.seeds=[0,1]", "grid.volumes=[4]"]
    grid = work / "grid.yaml"
    grid.write_text("name: tiny\n")
    subprocess.run([*PY, "study", "--config", str(grid), *args], cwd=work, env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    return folder


def clone_runs(src: Path, dst: Path, n: int) -> None:
    """`n` run folders: copies of the tiny study's runs with new seeds (distinct runs for the report)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("runs", "report"))
    runs = sorted(p.parent for p in (src / "runs").glob("*/result.json"))
    for i in range(n):
        base = runs[i % len(runs)]
        out = dst / "runs" / f"{base.name}_c{i}"
        out.mkdir(parents=True)
        result = json.loads((base / "result.json").read_text())
        result["seed"] = 1000 + i // len(runs)
        (out / "result.json").write_text(json.dumps(result))
        for name in ("config.yaml", "metrics.jsonl"):
            shutil.copy(base / name, out / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="synthtl_scale_"))
    base = baseline_rss(work)
    print(f"import baseline: {base:.0f} MB peak RSS; CPU: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    tiny = tiny_study(work)
    print(f"{'operation':<36} {'size':>7} {'wall s':>8} {'peak MB':>8} {'above base':>10}  target")
    for size in args.sizes.split(","):
        jobs, runs = SIZES[size]
        seeds = jobs // 50  # paper/utilization: 10 datasets x 5 strategies x seeds
        study = work / f"study_{size}"
        cmd = [*PY, "study", "paper/utilization", "data_root=/nonexistent", f"out_dir={study}",
               f"grid.seeds=[{','.join(map(str, range(seeds)))}]", "--dry-run"]
        for label in ("study --dry-run (first)", "study --dry-run (again)"):
            wall, peak = timed(cmd, work)
            print(f"{label:<36} {jobs:>7} {wall:8.1f} {peak:8.0f} {peak - base:10.0f}  <= 60 s at 5,000 jobs")
        reported = work / f"report_{size}"
        clone_runs(tiny, reported, runs)
        wall, peak = timed([*PY, "report", str(reported), "quality=false"], work)
        print(f"{'report (quality=false)':<36} {runs:>7} {wall:8.1f} {peak:8.0f} {peak - base:10.0f}  "
              "<= 30 s at 3,000 runs")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
