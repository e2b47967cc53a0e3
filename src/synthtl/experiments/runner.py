"""`synthtl study`: expand the grid, skip what is finished, run what is left stage by stage, resume after a crash.

Every job is written as a resolved YAML under <study>/jobs/ and executed by the same code as the single-stage
commands (`synthtl learn-style|generate|finetune -c <job>.yaml`), so a job can also be re-run or inspected alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from synthtl.config import StudyConfig, to_yaml
from synthtl.data.synthetic import MANIFEST
from synthtl.errors import SynthTLError
from synthtl.experiments.grid import TRAIN_SIZES, Job, Plan, expand, num_classes
from synthtl.experiments.launch import launch
from synthtl.files import read_json, read_jsonl, write_json, write_text
from synthtl.runtime import is_main

STAGES = ("style", "generate", "finetune")


class StudyError(SynthTLError):
    """Some jobs of a study failed."""


def job_file(study: StudyConfig, job: Job) -> Path:
    return Path(study.folder) / "jobs" / f"{job.id}.yaml"


def is_done(job: Job) -> bool:
    """Finished jobs are skipped: style.json / every planned image of the needed volume / result.json."""
    out = job.out
    if job.kind == "style":
        return (out / "style.json").is_file()
    if job.kind == "finetune":
        return (out / "result.json").is_file()
    if not (out / MANIFEST).is_file() or not (out / "plan.json").is_file():
        return False
    if read_json(out / "plan.json")["per_class"] < job.config.per_class:
        return False
    from synthtl.generation.plan import done_rows

    done = done_rows(out)
    wanted = [r for r in read_jsonl(out / MANIFEST) if r["index"] < job.config.per_class]
    return all(r["id"] in done or r.get("status") == "done" for r in wanted)


def write_plan(plan: Plan) -> None:
    study = plan.study
    root = Path(study.folder)
    write_text(root / "study.yaml", to_yaml(study))
    for job in plan.jobs:
        write_text(job_file(study, job), to_yaml(job.config))
    write_json(root / "plan.json", {"name": study.name, "description": study.description,
                                    "jobs": [{"kind": j.kind, "id": j.id, "needs": j.needs, "labels": j.labels,
                                              "out": str(j.out), "done": is_done(j)} for j in plan.jobs]})


# ------------------------------------------------------------------------------------------------------ estimates
DEFAULT_RATES = {  # seconds per unit on one H100-class GPU when nothing was measured yet (rough, ours)
    "generate": 0.3,  # per image: SD v1.5, 512 px, 25 steps, batch 16, fp16
    "style": 0.15,  # per step at batch 4, 512 px
    "resnet18": 1 / 3000, "resnet50": 1 / 1100, "vit_b16": 1 / 700, "vit_l16": 1 / 230,
    "clip_vit_b16_laion": 1 / 700, "finetune": 1 / 1000,  # per training image (forward + backward)
}


def measured_rates(root: Path) -> dict[str, float]:
    """Seconds per unit measured by the study's finished jobs (they override the defaults)."""
    rates: dict[str, float] = {}
    for kind, pattern, units, seconds in (("generate", "gen/*/progress/*.summary.json", "images", "seconds"),
                                          ("style", "styles/*/style.json", "steps", "train_seconds")):
        rows = [read_json(s) for s in root.glob(pattern)]
        if sum(r[units] for r in rows):
            rates[kind] = sum(r[seconds] for r in rows) / sum(r[units] for r in rows)
    per_model: dict[str, list[float]] = {}
    for r in root.glob("runs/*/result.json"):
        d = read_json(r)
        n = sum(s["steps"] * s["batch_size"] for s in d["stages"].values())
        if n:
            per_model.setdefault(d["model"], []).append(d["wall_s"] / n)
    for m, v in per_model.items():
        rates[m] = sum(v) / len(v)
    return rates


def estimate_seconds(job: Job, rates: dict[str, float]) -> float:
    c = job.config
    if job.kind == "style":
        classes = num_classes(c.data.name) or 10
        steps = c.steps_per_class * classes if c.steps_per_class else c.steps
        return steps * rates.get("style", DEFAULT_RATES["style"])
    if job.kind == "generate":
        return c.per_class * (num_classes(c.data.name) or 10) * rates.get("generate", DEFAULT_RATES["generate"])
    d = c.data
    classes = num_classes(d.name) or 10
    real = d.shots * classes if d.shots else TRAIN_SIZES.get(d.name, 10000)
    syn = (c.synthetic.per_class * classes) if c.synthetic.path else 0
    strategy = c.strategy
    images = c.real_stage.epochs * real
    if strategy in ("bridged", "bridged_reinit", "bridged++", "synthetic_only"):
        images = c.synth_stage.epochs * syn + (0 if strategy == "synthetic_only" else images)
    elif strategy == "mixed":
        images = c.real_stage.epochs * (real + syn)
    elif strategy == "vanilla_matched":
        images = c.synth_stage.epochs * syn + images
    rate = rates.get(c.model.name, DEFAULT_RATES.get(c.model.name, DEFAULT_RATES["finetune"]))
    return images * rate


def describe_plan(plan: Plan) -> str:
    rates = {**measured_rates(Path(plan.study.folder))}
    lines = [f"study {plan.study.name!r} -> {plan.study.folder}"]
    total = 0.0
    for stage in STAGES:
        jobs = plan.of(stage)
        todo = [j for j in jobs if not is_done(j)]
        secs = sum(estimate_seconds(j, rates) for j in todo)
        total += secs
        lines.append(f"  {stage:<9} {len(jobs):>5} jobs, {len(jobs) - len(todo):>5} finished, {len(todo):>5} to run, "
                     f"~{secs / 3600:.1f} GPU-hours")
    source = "measured in this study" if rates else "default rates (nothing measured yet)"
    lines.append(f"  total ~{total / 3600:.1f} GPU-hours ({source}; see experiments/runner.py DEFAULT_RATES)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ run
def run_study(study: StudyConfig, dry_run: bool = False) -> dict:
    """Runs (or resumes) every unfinished job; returns counts per stage and the failed job ids."""
    plan = expand(study)
    if is_main():
        write_plan(plan)
        print(describe_plan(plan))
    if dry_run:
        return {"dry_run": True}
    failed: list[str] = []
    submitted: list[str] = []  # Slurm ids of earlier stages (dependencies when launcher.wait=false)
    t0 = time.perf_counter()
    for stage in STAGES:
        jobs = [j for j in plan.of(stage) if not is_done(j)]
        blocked = [j for j in jobs if any(n in failed for n in j.needs)]
        jobs = [j for j in jobs if j not in blocked]
        failed += [j.id for j in blocked]
        if not jobs:
            continue
        if is_main():
            print(f"[synthtl] {stage}: {len(jobs)} job(s)")
        t_stage = time.perf_counter()
        failed += launch(stage, jobs, study, [job_file(study, j) for j in jobs], submitted)
        if is_main():
            print(f"[synthtl] {stage}: done in {time.perf_counter() - t_stage:.0f} s")
    summary = {stage: len(plan.of(stage)) for stage in STAGES}
    summary.update(failed=failed, seconds=time.perf_counter() - t0)
    write_plan(plan)
    if failed:
        raise StudyError(f"{len(failed)} job(s) failed or were blocked by a failed input: {failed[:5]}. Their logs "
                         f"are under {Path(study.folder) / 'logs'}; fix the cause and re-run the same command to "
                         "resume (finished jobs are skipped)")
    return summary
