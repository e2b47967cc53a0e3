"""`synthtl demo`: the whole pipeline offline on the embedded default (scikit-learn's bundled digits).

A tiny random-weight Stable Diffusion built from configs, a short dataset style inversion, generation with the single
template and with the learned style, every strategy x 2 seeds with a tiny random-weight classifier, then the report.
No download; a few minutes on two CPU cores; the numbers only prove the plumbing. `--real` runs a small real study
instead (one dataset, ResNet-18, 100 images per class), which needs a GPU and hub access.
"""

from __future__ import annotations

import time
from pathlib import Path

from synthtl.config import StudyConfig, load_config
from synthtl.experiments.runner import run_study
from synthtl.reporting.report import build_report


def run_demo(out: str | Path = "demo_out", real: bool = False, overrides: list[str] | None = None) -> Path:
    """Runs the demo study (or, with `real`, the small real one) and builds its report; returns the HTML path."""
    t0 = time.perf_counter()
    out = Path(out)
    preset = "studies/demo_real" if real else "studies/demo"
    study = load_config(StudyConfig, preset, [f"out_dir={out}", f"cache_dir={out / 'cache'}", *(overrides or [])])
    run_study(study)
    paths = build_report(study.folder, study.report)
    print(f"\n[synthtl demo] finished in {time.perf_counter() - t0:.0f} s. Report: {paths['html']}")
    print(f"[synthtl demo] tables: {paths['tables']} (Markdown, CSV, LaTeX); figures: {paths['figures']}")
    if not real:
        print("[synthtl demo] The generator is a random-weight tiny Stable Diffusion and the classifier a tiny "
              "random-weight ResNet: these numbers only prove that the pipeline runs end to end, not the method. "
              "`synthtl demo --real` (GPU + hub access) runs a small real study.")
    return paths["html"]
