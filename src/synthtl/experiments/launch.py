"""Launchers: local (in this process, or one subprocess per GPU) and Slurm through submitit (job arrays, requeue). A
job is a resolved YAML (`jobs.run_job`) that resumes from its own checkpoints, so a requeued job continues."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from synthtl import faults
from synthtl.config import StudyConfig
from synthtl.errors import ConfigError
from synthtl.files import LockedError, exclusive, read_json, write_json, write_text
from synthtl.jobs import KINDS, is_finished, run_job
from synthtl.runtime import cpu_threads, is_main

SUBMITTED = "submitted.json"  # <study>/slurm/: one row per Slurm task submitted without waiting
# Slurm states (sacct) of a task that will still run, and of one that ended without finishing its work.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING",
          "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"}
ENDED_BADLY = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Task:
    """One process to run: a job, or one shard of a generation job."""

    job: str  # the job's id
    name: str  # the job's id, with ".<i>of<N>" for a shard
    kind: str  # a key of `jobs.KINDS`
    file: Path  # the job's resolved YAML
    lock: Path  # held while it runs, so that a second `synthtl study` never runs it at the same time
    overrides: list[str] = field(default_factory=list)  # e.g. ["shard=1/4"]
    needs: list = field(default_factory=list)  # Jobs that must be finished first (checked before running on Slurm)


@dataclass
class Outcome:  # job ids, once per task (a sharded generation job has several)
    failed: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # running in another process: skipped this pass


def lock_folder(study: StudyConfig, task_name: str) -> Path:
    """A task's lock, outside the job folder: the job's own command locks that folder for itself."""
    return Path(study.folder) / "locks" / task_name


def task_names(study: StudyConfig, job) -> list[str]:
    """A job's tasks: the job, or each of a generation job's launcher.gen_shards shards ("<id>.<i>of<N>")."""
    n = study.launcher.gen_shards if job.kind == "generate" else 1
    return [f"{job.id}.{i}of{n}" for i in range(n)] if n > 1 else [job.id]


def is_locked(folder: Path) -> bool:
    """Whether another process holds the lock (without creating anything when nobody ever took it)."""
    if not folder.is_dir():
        return False
    try:
        with exclusive(folder, "study job"):
            return False
    except LockedError:
        return True


class JobRunner:
    """Runs one job in the current process; picklable for submitit, which requeues it on preemption."""

    def __call__(self, task: Task, distributed: bool = False) -> int:
        if distributed:  # one of the Slurm task's processes: torchrun's environment from submitit's
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        lock = task.lock if not distributed or is_main() else ""  # the lock is rank 0's
        with exclusive(lock, "study job") if lock else contextlib.nullcontext():
            missing = [j.id for j in task.needs if not is_finished(j.kind, j.config)]
            if missing:  # Slurm chains use afterany: a failed input must stop this job, not leave it pending
                raise RuntimeError(f"not started: input job(s) {', '.join(missing)} did not finish (failed or "
                                   "cancelled); see their logs, fix the cause and run the study again")
            faults.point("job", task=task)
            run_job(task.kind, task.file, task.overrides)
        return 0

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption/timeout: resubmit the same call (it resumes from its checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def launch(stage: str, jobs: list, study: StudyConfig, files: list[Path], submitted: list[str],
           needs: dict[str, list]) -> Outcome:
    """Runs a stage's jobs with the configured launcher. `submitted`: earlier stages' Slurm ids (with
    launcher.wait=false a stage depends on them); `needs`: job id -> the Jobs it reads (a Slurm task checks them)."""
    lc = study.launcher
    tasks = []
    for job, f in zip(jobs, files, strict=True):
        names = task_names(study, job)
        for i, name in enumerate(names):
            shard = [f"shard={i}/{len(names)}"] if len(names) > 1 else []
            tasks.append(Task(job.id, name, stage, f, lock_folder(study, name), shard, needs.get(job.id, [])))
    if lc.kind == "slurm":
        return _slurm(stage, tasks, study, submitted)
    parallel = lc.parallel or max(1, len(_visible(os.environ)) // lc.gpus_per_job)
    if parallel == 1 and lc.gpus_per_job == 1:
        return _in_process(tasks, study)
    return _subprocesses(tasks, study, parallel)


def eta(k: int, n: int, elapsed: float) -> str:
    """"job k/N (elapsed, ETA)" of the k-th of n tasks (1-based), the ETA from the mean time of the finished ones."""
    left = f", ETA ~{_hms(elapsed / (k - 1) * (n - k + 1))}" if k > 1 else ""
    return f"{k}/{n} (elapsed {_hms(elapsed)}{left})"


def _hms(s: float) -> str:
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


def _in_process(tasks: list[Task], study: StudyConfig) -> Outcome:
    out, t0 = Outcome(), time.perf_counter()
    for k, t in enumerate(tasks, 1):
        if is_main():
            print(f"[synthtl] {t.kind} job {eta(k, len(tasks), time.perf_counter() - t0)}: {t.name}", flush=True)
        try:
            JobRunner()(t)  # holds the task's lock while it runs
        except LockedError:  # a second `synthtl study` (or a lone command) is running this very job
            out.elsewhere.append(t.job)
        except Exception as e:  # one failed job must not stop the others
            out.failed.append(t.job)
            log = Path(study.folder) / "logs" / f"{t.name}.log"
            write_text(log, "".join(traceback.format_exception(e)))
            if is_main():
                print(f"[synthtl] job {t.name} failed: {e} (log: {log})")
    return out


def _visible(env) -> list[str]:
    """GPUs this process may use: an inherited CUDA_VISIBLE_DEVICES's entries (indices or UUIDs), else 0..n-1."""
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        return [d.strip() for d in mask.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(parallel: int, env: dict[str, str] | None = None, per_job: int = 1) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of `parallel` slots of `per_job` visible GPUs (None: CPU); ConfigError if too few."""
    env = os.environ if env is None else env
    visible = _visible(env)
    if not visible:
        return [None] * parallel
    if parallel * per_job > len(visible):
        mask = env.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={mask}" if mask is not None else f"{len(visible)} GPU(s) on this machine"
        raise ConfigError(f"launcher.parallel={parallel} x launcher.gpus_per_job={per_job} needs "
                          f"{parallel * per_job} GPUs but this process may use {len(visible)} ({seen}); set "
                          f"launcher.parallel={max(1, len(visible) // per_job)} (or 0: as many as fit)")
    return [",".join(visible[i * per_job:(i + 1) * per_job]) for i in range(parallel)]


def process_argv(task: Task, gpus: int) -> list[str]:
    """`python -m synthtl ...`, or torchrun over `gpus` GPUs for fine-tuning and generation (style: one GPU)."""
    argv = ["-m", "synthtl", KINDS[task.kind].command, "-c", str(task.file), *task.overrides]
    if gpus > 1 and task.kind in ("finetune", "generate"):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *argv]
    return [sys.executable, *argv]


def _subprocesses(tasks: list[Task], study: StudyConfig, parallel: int, env: dict[str, str] | None = None) -> Outcome:
    """One job per GPU slot at a time (logs under <study>/logs/); this process holds each task's lock meanwhile."""
    env = dict(os.environ if env is None else env)
    per_job = study.launcher.gpus_per_job
    devices = gpu_slots(parallel, env, per_job)
    queue = list(tasks)
    running: dict[int, tuple[subprocess.Popen, Task, object, contextlib.ExitStack]] = {}
    out, t0, started = Outcome(), time.perf_counter(), 0
    logs = Path(study.folder) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while queue or running:
        for slot in range(parallel):
            while slot not in running and queue:
                t = queue.pop(0)
                held = contextlib.ExitStack()  # the lock and the log, released when the process ends
                try:
                    held.enter_context(exclusive(t.lock, "study job"))
                except LockedError:
                    out.elsewhere.append(t.job)
                    continue
                child_env = ({**env, "CUDA_VISIBLE_DEVICES": devices[slot]} if devices[slot] is not None else
                             {"OMP_NUM_THREADS": str(cpu_threads(parallel)), **env})  # CPU: the cores shared out
                fh = held.enter_context(open(logs / f"{t.name}.{slot}.log", "a"))  # noqa: SIM115 - held
                gpus = per_job if devices[slot] is not None else 1
                proc = subprocess.Popen(process_argv(t, gpus), env=child_env, stdout=fh, stderr=subprocess.STDOUT)
                running[slot], started = (proc, t, fh, held), started + 1
                print(f"[synthtl] {t.kind} job {eta(started, len(tasks), time.perf_counter() - t0)}: {t.name} "
                      f"(slot {slot}; log {fh.name})", flush=True)
        for slot, (proc, t, fh, held) in list(running.items()):
            if proc.poll() is not None:
                held.close()
                if proc.returncode != 0:
                    out.failed.append(t.job)
                    print(f"[synthtl] job {t.name} failed (exit {proc.returncode}); log: {fh.name}")
                del running[slot]
        time.sleep(0.5)
    return out


# ---------------------------------------------------------------------------------------------------------- Slurm
def slurm_dependency(earlier: list[str]) -> dict:
    """Without waiting, a stage starts after every job of the earlier stages ended, however it ended (afterany):
    with afterok a failed shard would leave the later stages pending forever. Each task checks its inputs first."""
    return {"slurm_additional_parameters": {"dependency": "afterany:" + ":".join(earlier)}} if earlier else {}


def submitted_file(study: StudyConfig) -> Path:
    return Path(study.folder) / "slurm" / SUBMITTED


def read_submitted(study: StudyConfig) -> list[dict]:
    f = submitted_file(study)
    return read_json(f) if f.is_file() else []


def slurm_states(ids: list[str]) -> dict[str, str]:
    """Slurm id ("123" or array task "123_4") -> state, from sacct; {} where sacct is not on this machine."""
    if not ids or shutil.which("sacct") is None:
        return {}
    jobs = ",".join(sorted({i.split("_")[0] for i in ids}))
    try:
        res = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", jobs], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.partition("|") for line in res.stdout.splitlines())
    return {jid.strip(): (state.split() or [""])[0] for jid, _, state in rows}  # "CANCELLED by 42" -> CANCELLED


def state_of(states: dict[str, str], slurm_id: str) -> str:
    """A task's state; a pending array shows as one "123_[0-9]" row in sacct until its tasks start."""
    if slurm_id in states:
        return states[slurm_id]
    base = slurm_id.split("_")[0]
    rows = (state for jid, state in states.items() if jid.startswith(f"{base}_[") or jid == base)
    return next(rows, "")  # "": never submitted from here, or purged from the accounting database


def check_submitted(study: StudyConfig, unfinished: set[str]) -> tuple[list[dict], list[dict]]:
    """Earlier no-wait tasks of unfinished jobs: (ended badly and unreported, still queued or running)."""
    rows = [r for r in read_submitted(study) if r["job"] in unfinished and not r.get("reported")]
    states = slurm_states([r["slurm_id"] for r in rows])
    rows = [{**r, "state": state_of(states, r["slurm_id"])} for r in rows]
    return [r for r in rows if r["state"] in ENDED_BADLY], [r for r in rows if r["state"] in ACTIVE]


def mark_reported(study: StudyConfig, tasks: set[str]) -> None:
    """A failure is reported once; the next `synthtl study` submits the job again (it resumes)."""
    write_json(submitted_file(study), [{**r, "reported": r["task"] in tasks or r["reported"]}
                                       for r in read_submitted(study)])


def _slurm(stage: str, tasks: list[Task], study: StudyConfig, earlier: list[str]) -> Outcome:
    try:
        import submitit
    except ImportError as e:
        raise RuntimeError("launcher.kind=slurm needs submitit: pip install 'synthtl[slurm]'") from e
    lc = study.launcher
    busy = [is_locked(t.lock) for t in tasks]  # a task another process is running now is not submitted twice
    out = Outcome(elsewhere=[t.job for t, b in zip(tasks, busy, strict=True) if b])
    tasks = [t for t, b in zip(tasks, busy, strict=True) if not b]
    if not tasks:
        return out
    executor = submitit.AutoExecutor(folder=str(Path(lc.folder or Path(study.folder) / "slurm") / "%j"),
                                     cluster=lc.cluster or None)
    params = {"timeout_min": lc.time_min, "gpus_per_node": lc.gpus_per_task, "cpus_per_task": lc.cpus_per_task,
              "mem_gb": lc.mem_gb, "name": f"synthtl-{study.name}-{stage}",
              "slurm_array_parallelism": lc.array_parallelism}
    params.update({k: v for k, v in (("slurm_partition", lc.partition), ("slurm_account", lc.account),
                                     ("slurm_qos", lc.qos)) if v})
    if not lc.wait and executor.cluster == "slurm":
        params.update(slurm_dependency(earlier))
    ranks = lc.gpus_per_task if stage in ("finetune", "generate") else 1  # style learning: one process
    if ranks > 1:  # one process per GPU, torchrun's environment exported from submitit's in each (JobRunner)
        params["tasks_per_node"] = ranks
    executor.update_parameters(**params)
    jobs = executor.map_array(JobRunner(), tasks, [ranks > 1] * len(tasks))
    if is_main():
        print(f"[synthtl] submitted {len(jobs)} {stage} task(s): {jobs[0].job_id.split('_')[0]}")
    if not lc.wait:  # recorded for the next call; a resubmission supersedes the old row
        names = {t.name for t in tasks}
        rows = [r for r in read_submitted(study) if r["task"] not in names]
        write_json(submitted_file(study), rows + [
            {"job": t.job, "task": t.name, "stage": stage, "slurm_id": str(j.job_id), "log": str(j.paths.stderr),
             "reported": False} for t, j in zip(tasks, jobs, strict=True)])
        earlier += sorted({j.job_id.split("_")[0] for j in jobs})  # array ids: the next stage waits for them
        return out
    for t, job in zip(tasks, jobs, strict=True):
        try:
            job.results()  # every process of the task (one per GPU with gpus_per_task > 1)
        except Exception as e:  # submitit raises UncompletedJobError / FailedJobError with the remote traceback
            out.failed.append(t.job)
            print(f"[synthtl] job {t.name} failed: {str(e).splitlines()[0]} (logs: {job.paths.stderr})")
    return out
