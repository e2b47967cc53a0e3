"""`synthtl demo`: the whole pipeline offline on the embedded default (scikit-learn's digits).

Synthetic images come from a tiny random-weight Stable Diffusion built from configs and the classifier is a tiny
random-weight ResNet: no download, a few minutes on two CPU cores, and numbers that only prove the plumbing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from synthtl.config import FinetuneConfig, GenerateConfig, load_config
from synthtl.generation.run import run_generate
from synthtl.training.run import run_finetune
from synthtl.training.strategies import STRATEGIES

DEMO_STRATEGIES = ("vanilla", "mixed", "bridged", "bridged_reinit", "bridged++", "vanilla_matched", "vanilla_mixup",
                   "synthetic_only", "from_scratch")


def _summary(results: dict[str, list[float]]) -> str:
    base = statistics.mean(results["vanilla"]) if "vanilla" in results else None
    lines = [f"{'strategy':<16} {'test top-1 (mean ± std over seeds)':>36} {'vs vanilla':>11}"]
    for name, accs in results.items():
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        delta = f"{mean - base:+.2f}" if base is not None and name != "vanilla" else ""
        lines.append(f"{name:<16} {mean:>28.2f} ± {std:<5.2f} {delta:>11}")
    return "\n".join(lines)


def run_demo(out: str | Path = "demo_out", real: bool = False, overrides: list[str] | None = None,
             seeds: tuple[int, ...] = (0, 1)) -> dict[str, list[float]]:
    """Runs every strategy on the digits with a rendered synthetic set; prints a mean ± std table."""
    if real:
        raise SystemExit("synthtl demo --real needs the generator (not yet available in this version)")
    out = Path(out)
    t0 = time.perf_counter()
    synthetic = out / "gen" / "single"
    run_generate(load_config(GenerateConfig, "generate/tiny", [
        "data.name=digits", f"data.cache_dir={out / 'cache'}", f"out_dir={synthetic}", "per_class=40",
        "progress=false"]))
    results: dict[str, list[float]] = {}
    for strategy in DEMO_STRATEGIES:
        STRATEGIES.get(strategy)
        for seed in seeds:
            cfg = load_config(FinetuneConfig, "finetune/tiny_cpu", [
                f"strategy={strategy}", f"seed={seed}", f"out_dir={out / 'runs'}", f"synthetic.path={synthetic}",
                f"data.cache_dir={out / 'cache'}", "progress=false", *(overrides or [])])
            results.setdefault(strategy, []).append(run_finetune(cfg)["test"]["top1"])
    print("\n" + _summary(results))
    print(f"\n[synthtl demo] {len(DEMO_STRATEGIES) * len(seeds)} runs in {time.perf_counter() - t0:.0f} s under "
          f"{out}/runs. The generator is a random-weight tiny Stable Diffusion and the classifier a tiny random-weight "
          "ResNet, so these numbers only prove the plumbing, not the method.")
    return results
