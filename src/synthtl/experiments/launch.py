"""Launchers: local (in this process, or one subprocess per GPU) and Slurm through submitit (job arrays, requeue).

A job is a resolved YAML file run by the ordinary CLI (`synthtl <command> -c job.yaml`); every job resumes from its
own checkpoints, so a requeued or re-launched job continues where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from synthtl.config import StudyConfig
from synthtl.runtime import is_main

COMMANDS = {"style": "learn-style", "generate": "generate", "finetune": "finetune"}


def job_argv(stage: str, job_yaml: Path, shard: str = "") -> list[str]:
    return [COMMANDS[stage], "-c", str(job_yaml), *([f"shard={shard}"] if shard else [])]


class JobRunner:
    """Runs one job in the current process; picklable for submitit, which requeues it on preemption."""

    def __call__(self, argv: list[str]) -> int:
        from synthtl import cli

        code = cli.main(list(argv))
        if code != 0:
            raise RuntimeError(f"synthtl {' '.join(argv)} exited with {code}")
        return code

    def checkpoint(self, argv: list[str]):
        """submitit calls this on preemption/timeout: resubmit the same job (it resumes from its checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, argv)


def _expand_shards(stage: str, jobs: list, files: list[Path], shards: int) -> list[tuple[str, list[str]]]:
    out = []
    for job, f in zip(jobs, files, strict=True):
        if stage == "generate" and shards > 1:
            out += [(job.id, job_argv(stage, f, f"{i}/{shards}")) for i in range(shards)]
        else:
            out.append((job.id, job_argv(stage, f)))
    return out


def launch(stage: str, jobs: list, study: StudyConfig, files: list[Path],
           submitted: list[str] | None = None) -> list[str]:
    """Runs a stage's jobs with the configured launcher; returns the ids of failed jobs.

    `submitted` collects the Slurm job ids of earlier stages: with launcher.wait=false a stage depends on them.
    """
    lc = study.launcher
    tasks = _expand_shards(stage, jobs, files, lc.gen_shards)
    if lc.kind == "slurm":
        return _slurm(stage, tasks, study, submitted if submitted is not None else [])
    parallel = lc.parallel
    if parallel == 0:
        import torch

        parallel = max(1, torch.cuda.device_count())
    if parallel == 1:
        return _in_process(tasks, study)
    return _subprocesses(tasks, study, parallel)


def _in_process(tasks: list[tuple[str, list[str]]], study: StudyConfig) -> list[str]:
    failed = []
    for jid, argv in tasks:
        try:
            JobRunner()(argv)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one failed job must not stop the others
            failed.append(jid)
            log = Path(study.folder) / "logs" / f"{jid}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(traceback.format_exception(e)))
            if is_main():
                print(f"[synthtl] job {jid} failed: {e} (log: {log})")
    return sorted(set(failed))


def _subprocesses(tasks: list[tuple[str, list[str]]], study: StudyConfig, parallel: int) -> list[str]:
    """One job per GPU slot at a time (CUDA_VISIBLE_DEVICES), logs under <study>/logs/."""
    queue = list(tasks)
    running: dict[int, tuple[subprocess.Popen, str, object]] = {}
    failed = []
    logs = Path(study.folder) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while queue or running:
        for slot in range(parallel):
            if slot not in running and queue:
                jid, argv = queue.pop(0)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(slot)}
                fh = open(logs / f"{jid}.{slot}.log", "a")  # noqa: SIM115 - closed when the process ends
                proc = subprocess.Popen([sys.executable, "-m", "synthtl", *argv], env=env, stdout=fh,
                                        stderr=subprocess.STDOUT)
                running[slot] = (proc, jid, fh)
        for slot, (proc, jid, fh) in list(running.items()):
            if proc.poll() is not None:
                fh.close()
                if proc.returncode != 0:
                    failed.append(jid)
                    print(f"[synthtl] job {jid} failed (exit {proc.returncode}); log: {fh.name}")
                del running[slot]
        time.sleep(0.5)
    return sorted(set(failed))


def slurm_dependency(earlier: list[str]) -> dict:
    """Without waiting, a stage starts only after every job of the earlier stages succeeded (afterok)."""
    return {"slurm_additional_parameters": {"dependency": "afterok:" + ":".join(earlier)}} if earlier else {}


def _slurm(stage: str, tasks: list[tuple[str, list[str]]], study: StudyConfig, earlier: list[str]) -> list[str]:
    try:
        import submitit
    except ImportError as e:
        raise RuntimeError("launcher.kind=slurm needs submitit: pip install 'synthtl[slurm]'") from e
    lc = study.launcher
    folder = Path(lc.folder or Path(study.folder) / "slurm") / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=lc.cluster or None)
    params = {"timeout_min": lc.time_min, "gpus_per_node": lc.gpus_per_task, "cpus_per_task": lc.cpus_per_task,
              "mem_gb": lc.mem_gb, "name": f"synthtl-{study.name}-{stage}",
              "slurm_array_parallelism": lc.array_parallelism}
    for key, value in (("slurm_partition", lc.partition), ("slurm_account", lc.account), ("slurm_qos", lc.qos)):
        if value:
            params[key] = value
    if not lc.wait and executor.cluster == "slurm":
        params.update(slurm_dependency(earlier))
    executor.update_parameters(**params)
    jobs = executor.map_array(JobRunner(), [argv for _, argv in tasks])
    if is_main():
        print(f"[synthtl] submitted {len(jobs)} {stage} task(s): {jobs[0].job_id.split('_')[0] if jobs else ''}")
    if not lc.wait:
        earlier += sorted({j.job_id.split("_")[0] for j in jobs})  # array ids: the next stage waits for them
        return []
    failed = []
    for (jid, _), job in zip(tasks, jobs, strict=True):
        try:
            job.result()
        except Exception as e:  # submitit raises UncompletedJobError / FailedJobError with the remote traceback
            failed.append(jid)
            print(f"[synthtl] job {jid} failed: {str(e).splitlines()[0]} (logs: {job.paths.stderr})")
    return sorted(set(failed))
