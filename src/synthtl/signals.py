"""Stop signals, handled as Ctrl-C: a command ends with one line, its temp files gone and its finished work kept, and
the same command resumes. Under Slurm, SIGUSR2 also requeues the job."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator


class Stopped(KeyboardInterrupt):
    """A stop signal, handled as Ctrl-C: SIGTERM (Slurm preemption, `kill`, a container stop) or SIGUSR2 (what an
    sbatch script's `--signal=B:USR2@90` sends before the time limit)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGUSR2 stop it as Ctrl-C does: temp files go, finished work stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM, *([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])]
    before = {s: signal.signal(s, _raise_stopped) for s in wanted}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def requeue_slurm(signum: int, env: dict | None = None) -> str:
    """Under Slurm, SIGUSR2 (sent before the time limit) requeues the job so it resumes; returns what was done ("" if
    nothing). Never SIGTERM: `scancel` sends it too (Slurm requeues preempted jobs itself where configured)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if signum != getattr(signal, "SIGUSR2", None) or not job or shutil.which("scontrol") is None:
        return ""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    return f"; Slurm job {job} requeued: it resumes by itself" if done.returncode == 0 else \
        f"; `scontrol requeue {job}` failed ({done.stderr.strip() or done.returncode}): re-submit it"
