"""`synthtl study`: expand the grid, skip what is finished, run what is left stage by stage, resume after a crash.
Each job is a resolved YAML under <study>/jobs/, run exactly as `synthtl <cmd> -c job.yaml` would."""

from __future__ import annotations

import time
from pathlib import Path

from synthtl import identity
from synthtl.config import StudyConfig, to_yaml
from synthtl.data.datasets import load_data
from synthtl.data.genset import COMPLETE, PROGRESS_DIR, set_stats
from synthtl.errors import DataError, SynthTLError
from synthtl.experiments import launch as launcher
from synthtl.experiments.grid import TRAIN_SIZES, Job, Plan, expand, num_classes, num_classes_of, style_steps
from synthtl.files import read_json, remove_temps, write_json, write_text
from synthtl.filtering.store import KEPT, SCORES
from synthtl.identity import IDENTITY
from synthtl.jobs import is_finished
from synthtl.runtime import is_main
from synthtl.strategies import STRATEGIES

STAGES = ("style", "generate", "filter", "finetune")


class StudyError(SynthTLError):
    """Some jobs of a study failed."""


def job_file(study: StudyConfig, job: Job) -> Path:
    return Path(study.folder) / "jobs" / f"{job.id}.yaml"


def is_done(job: Job) -> bool:
    """Whether a job is finished (so skipped); ConfigError if its folder holds another job (`identity.check`)."""
    identity.check(job.out, job.kind, job.identity)
    return is_finished(job.kind, job.config)


def progress_of(job: Job) -> str:
    """What an unfinished job's folder shows: "stopped" (started, then failed or killed: it resumes), "extend" (a
    finished set to grow, or a filter with kept lists for smaller volumes) or "" (never started)."""
    out = job.out
    if job.kind == "finetune":
        return "stopped" if (out / IDENTITY).is_file() or any((out / "checkpoints").glob("*.pt")) else ""
    if job.kind == "style":
        return "stopped" if (out / "checkpoint.pt").is_file() or (out / "adapters" / "checkpoint.pt").is_file() else ""
    if job.kind == "filter":
        return "extend" if any((out / KEPT).glob("*.json")) else "stopped" if (out / SCORES).is_file() else ""
    if (out / COMPLETE).is_file():
        return "extend"  # finished at a smaller volume
    return "stopped" if any(f.stat().st_size for f in (out / PROGRESS_DIR).glob("*.jsonl")) else ""


def write_plan(plan: Plan) -> dict[str, bool]:
    """Writes study.yaml, the job files and plan.json; returns job id -> done."""
    study, root = plan.study, Path(plan.study.folder)
    write_text(root / "study.yaml", to_yaml(study))
    # What a killed `synthtl study` left half-written (two studies may write here at once: only old leftovers go).
    remove_temps(root / "jobs", min_age_s=60)
    for job in plan.jobs:  # regenerated from the study on every call: rewritten only when changed, not fsynced
        path, text = job_file(study, job), to_yaml(job.config)
        if not path.is_file() or path.read_text() != text:
            write_text(path, text, fsync=False)
    done = {j.id: is_done(j) for j in plan.jobs}
    write_json(root / "plan.json", {"name": study.name, "description": study.description,
                                    "jobs": [{"kind": j.kind, "id": j.id, "needs": j.needs, "labels": j.labels,
                                              "out": str(j.out), "done": done[j.id]} for j in plan.jobs]})
    return done


# ------------------------------------------------------------------------------------------------------ estimates
DEFAULT_RATES = {  # seconds per unit on one H100-class GPU when nothing was measured yet (rough, ours)
    "generate": 0.3,  # per image: SD v1.5, 512 px, 25 steps, batch 16, fp16
    "filter": 0.002,  # per image: CLIP ViT-B/32 forward in fp32
    "style": 0.15,  # per step at batch 4, 512 px
    "resnet18": 1 / 3000, "resnet50": 1 / 1100, "vit_b16": 1 / 700, "vit_l16": 1 / 230,
    "clip_vit_b16_laion": 1 / 700, "finetune": 1 / 1000,  # per training image (forward + backward)
}


def measured_rates(root: Path) -> dict[str, float]:
    """Seconds per unit measured by the study's finished jobs (they override the defaults)."""
    rates: dict[str, float] = {}
    gens = [set_stats(plan.parent) for plan in root.glob("gen/*/plan.json")]  # every shard's cost rows, added up
    styles = [read_json(f) for f in root.glob("styles/*/style.json")]
    for kind, rows, units, seconds in (("generate", gens, "images", "seconds"),
                                       ("style", styles, "steps", "train_seconds")):
        if sum(r[units] for r in rows):
            rates[kind] = sum(r[seconds] for r in rows) / sum(r[units] for r in rows)
    per_model: dict[str, list[float]] = {}
    for r in root.glob("runs/*/result.json"):
        d = read_json(r)
        n = sum(s["steps"] * s["batch_size"] for s in d["stages"].values())
        if n:
            per_model.setdefault(d["model"], []).append(d["wall_s"] / n)
    return rates | {m: sum(v) / len(v) for m, v in per_model.items()}


def estimate_seconds(job: Job, rates: dict[str, float]) -> float:
    c, rate = job.config, {**DEFAULT_RATES, **rates}  # measured rates override the defaults
    if job.kind == "style":  # the classes are unknown until the data is there: 10
        return (style_steps(job)[0] or c.steps_per_class * 10) * rate["style"]
    if job.kind == "generate":
        return c.per_class * (num_classes(c.data.name) or 10) * rate["generate"]
    if job.kind == "filter":  # one forward pass per image of the set
        return job.labels.get("per_class", 1000) * (num_classes(job.labels["dataset"]) or 10) * rate["filter"]
    d = c.data
    classes = num_classes(d.name) or 10
    real = d.shots * classes if d.shots else TRAIN_SIZES.get(d.name, 10000)
    syn = (c.synthetic.per_class * classes) if c.synthetic.path else 0
    seen = {"synthetic": c.synth_stage.epochs * syn, "real": c.real_stage.epochs * real,
            "mixed": c.real_stage.epochs * (real + syn)}  # training images each kind of stage sees
    images = sum(seen[stage] for stage in STRATEGIES.get(c.strategy).cost_stages)
    return images * rate.get(c.model.name, rate["finetune"])


def describe_style_job(job: Job) -> str:
    """One line: the steps a style job will train (per class for per-class inversion)."""
    steps, per_class = style_steps(job)
    c = job.config
    total = f"{steps:,} steps" if steps is not None else f"{c.steps_per_class:,} steps x the classes (unknown here)"
    what = "LoRA" if c.method == "lora" else "token"
    if c.mode != "class":
        return f"    {job.id}: {total} (one {what} for the dataset)"
    each = f"{per_class:,}" if per_class is not None else "?"
    return f"    {job.id}: {total} ({each} per class x {num_classes_of(c.data) or '?'} classes, one {what} per class)"


def describe_plan(plan: Plan, elsewhere: set[str] | None = None) -> str:
    """The plan: per stage finished, elsewhere and to-run jobs, the GPU-hour estimate and style steps."""
    study, rates = plan.study, measured_rates(Path(plan.study.folder))
    elsewhere = set(elsewhere or ()) | {j.id for j in plan.jobs if any(  # locked by another process
        launcher.is_locked(launcher.lock_folder(study, n)) for n in launcher.task_names(study, j))}
    lines = [f"study {study.name!r} -> {study.folder}"]
    lines += [f"  {why} (its job ids are provisional until it is there)" for why in plan.missing.values()]
    total = 0.0
    for stage in STAGES:
        jobs = plan.of(stage)
        todo = [j for j in jobs if not is_done(j)]
        busy = [j for j in todo if j.id in elsewhere]
        todo = [j for j in todo if j.id not in elsewhere]
        progress = [progress_of(j) for j in todo]
        extend = progress.count("extend")
        shown = f"{progress.count('stopped')} stopped part-way" + (f", {extend} to extend" if extend else "")
        secs = sum(estimate_seconds(j, rates) for j in todo)
        total += secs
        lines.append(f"  {stage:<9} {len(jobs):>5} jobs, {len(jobs) - len(todo) - len(busy):>5} finished, "
                     f"{len(busy):>5} running elsewhere, {len(todo):>5} to run ({shown}), "
                     f"~{secs / 3600:.1f} GPU-hours")
        if stage == "style":
            lines += [describe_style_job(j) for j in jobs]
    source = ("measured in this study" if rates else "rough default rates of an H100-class GPU: nothing measured yet; "
              "the estimate uses this study's own rates once jobs have run")
    lines.append(f"  total ~{total / 3600:.1f} GPU-hours ({source})")
    return "\n".join(lines)


def _earlier_submissions(plan: Plan) -> set[str]:
    """Slurm tasks submitted by an earlier call without waiting: raises if any ended badly (naming the job and its
    log, once; the next call submits it again), returns the ids of jobs still queued or running there."""
    study = plan.study
    if study.launcher.kind != "slurm":
        return set()
    failed, active = launcher.check_submitted(study, {j.id for j in plan.jobs if not is_done(j)})
    if failed:
        launcher.mark_reported(study, {r["task"] for r in failed})
        shown = "; ".join(f"{r['task']} (Slurm {r['slurm_id']}, {r['state']}; log: {r['log']})" for r in failed[:5])
        raise StudyError(f"the study failed: {len(failed)} Slurm task(s) submitted earlier ended without finishing: "
                         f"{shown}. Fix the cause and run the same command again to submit them again (finished "
                         "jobs are skipped)")
    return {r["job"] for r in active}


def fetch_missing(plan: Plan) -> Plan:
    """Downloads missing datasets whose jobs allow it (data.download=true), then expands again; DataError otherwise."""
    fetched = set()
    for job in plan.jobs:
        d = job.config.data
        if d.name in plan.missing and d.download and d.name not in fetched:
            if is_main():
                print(f"[synthtl] fetching dataset {d.name!r} into {d.root or 'the default root'} before planning")
            for split in ("train", "test"):
                load_data(d, split, download=True)
            fetched.add(d.name)
    plan = expand(plan.study)
    if plan.missing:
        name, why = next(iter(plan.missing.items()))
        raise DataError(f"{why} (the study's jobs need {name!r}; nothing was run)")
    if is_main():
        write_plan(plan)
    return plan


def study_status(study: StudyConfig) -> str:
    """What `--status` prints (`describe_plan`); StudyError if Slurm tasks submitted earlier failed."""
    plan = expand(study)
    return describe_plan(plan, _earlier_submissions(plan))


# ------------------------------------------------------------------------------------------------------------ run
def run_study(study: StudyConfig, dry_run: bool = False) -> dict:
    """Runs or resumes every unfinished job; returns counts per stage and job ids: `failed`, `elsewhere`, `waiting` (for
    inputs), `submitted` (Slurm, not waited for), `unfinished` (empty: the study is done). `dry_run` writes nothing."""
    plan = expand(study)
    elsewhere = _earlier_submissions(plan)
    if is_main():
        print(describe_plan(plan, elsewhere))
    if dry_run:  # writes nothing: no study folder, plan or job files
        return {"dry_run": True}
    if is_main():
        write_plan(plan)
    if plan.missing:  # ids hash the data's content: fetch it first (where the jobs may download), then plan again
        plan = fetch_missing(plan)
    failed: list[str] = []
    waiting: list[str] = []  # jobs whose inputs another process is still making
    queued: list[str] = []  # jobs submitted to Slurm without waiting (launcher.wait=false)
    submitted: list[str] = []  # Slurm ids of earlier stages (dependencies when launcher.wait=false)
    by_id = plan.by_id()
    t0 = time.perf_counter()
    for stage in STAGES:
        jobs = [j for j in plan.of(stage) if not is_done(j) and j.id not in elsewhere]
        blocked = [j for j in jobs if any(n in failed for n in j.needs)]
        held = [j for j in jobs if j not in blocked and any(n in elsewhere or n in waiting for n in j.needs)]
        jobs = [j for j in jobs if j not in blocked and j not in held]
        failed += [j.id for j in blocked]
        waiting += [j.id for j in held]
        if not jobs:
            continue
        if is_main():
            print(f"[synthtl] {stage}: {len(jobs)} job(s)")
        t_stage = time.perf_counter()
        out = launcher.launch(stage, jobs, study, [job_file(study, j) for j in jobs], submitted,
                              {j.id: [by_id[n] for n in j.needs] for j in jobs})
        failed += sorted(set(out.failed))
        elsewhere |= set(out.elsewhere)
        if study.launcher.kind == "slurm" and not study.launcher.wait:
            queued += [j.id for j in jobs if j.id not in out.elsewhere and j.id not in out.failed]
        ran = len(jobs) - len(set(out.elsewhere))
        if is_main():
            skipped = f"; {len(set(out.elsewhere))} skipped: another process runs them" if out.elsewhere else ""
            print(f"[synthtl] {stage}: {ran} job(s) done in {time.perf_counter() - t_stage:.0f} s{skipped}"
                  if ran else f"[synthtl] {stage}: nothing run{skipped}")
    summary = {stage: len(plan.of(stage)) for stage in STAGES}
    done = write_plan(plan)
    summary.update(jobs=len(plan.jobs), failed=failed, elsewhere=sorted(elsewhere), waiting=waiting, submitted=queued,
                   unfinished=[j for j, d in done.items() if not d], seconds=time.perf_counter() - t0)
    if elsewhere and is_main():
        shown = ", ".join(sorted(elsewhere)[:5]) + (", ..." if len(elsewhere) > 5 else "")
        print(f"[synthtl] {len(elsewhere)} job(s) are running in another process and were skipped ({shown}); "
              f"{len(waiting)} job(s) wait for them. Run the same command again once they finish")
    if failed:
        raise StudyError(f"{len(failed)} job(s) failed or were blocked by a failed input: {failed[:5]}. Their logs "
                         f"are under {Path(study.folder) / 'logs'}; fix the cause and re-run the same command to "
                         "resume (finished jobs are skipped)")
    return summary
