"""Stop signals: SIGINT (Ctrl-C) and SIGTERM (Slurm preemption, `kill`, a container stop) end every long command with
one line and a clean folder, and the same command resumes; SIGUSR2 under Slurm requeues the job."""

import os
import signal
from pathlib import Path

import pytest

from synthtl import cli, faults, signals
from tests.conftest import make_folder, run_cli
from tests.filtering.tiny import TINY_GEN, tiny_clip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("signals")
    real = root / "real"
    make_folder(real / "train", 8, seed=1)
    make_folder(real / "test", 4, seed=2)
    data = ["data.name=folder", f"data.root={real}", f"data.cache_dir={root / 'cache'}", "data.num_workers=0"]
    gen = root / "gen"
    assert run_cli("generate", *TINY_GEN, *data[:2], "per_class=4", f"out_dir={gen}") == 0
    return {"root": root, "data": data, "gen": gen, "clip": tiny_clip(root / "clip")}


def command(kind: str, inputs: dict, out: Path) -> list[str]:
    data = inputs["data"]
    return {
        "finetune": ["finetune", "-c", "finetune/tiny_cpu", *data, "real_stage.epochs=2", "leep.enabled=false",
                     f"out_dir={out}", "run_name=r", "progress=false"],
        "generate": ["generate", *TINY_GEN, *data[:2], "per_class=6", f"out_dir={out}"],
        "learn-style": ["learn-style", "-c", "style/tiny", *data, "steps=3", "checkpoint_every=1", "batch_size=2",
                        "validation_classes=1", "validation_images=1", "validation_steps=1", "images_per_class=2",
                        f"out_dir={out}", "progress=false"],
        "filter": ["filter", str(inputs["gen"]), "-c", "filter/clip", f"clip.model={inputs['clip']}",
                   "keep.top_k=2", "batch_size=2", "workers=1", f"name=f{out.name}", "progress=false"],
    }[kind]


def output_of(kind: str, inputs: dict, out: Path) -> Path:
    return inputs["gen"] / "filters" / f"f{out.name}" if kind == "filter" else out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("kind", ["finetune", "generate", "learn-style", "filter"])
def test_a_stop_signal_ends_a_command_in_one_line_and_the_rerun_resumes(kind, sig, inputs, capsys):
    out = inputs["root"] / f"{kind}-{signal.Signals(sig).name}"
    folder = output_of(kind, inputs, out)
    writes: list[Path] = []

    def stop_on_second_write(path: Path) -> None:  # the work has started: a file of the output is being written
        if folder in Path(path).parents:
            writes.append(path)
            if len(writes) == 2:
                os.kill(os.getpid(), sig)

    with faults.inject("write", stop_on_second_write):
        code = run_cli(*command(kind, inputs, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 128 + sig, err
    assert err[-1] == (f"synthtl {kind}: interrupted ({signal.Signals(sig).name}); re-run the same command to "
                       "resume")
    assert [p for p in folder.rglob("*.tmp")] == []  # nothing half-written is left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only
    if sig == signal.SIGTERM:  # (Ctrl-C's resume is the kill-resume tests' subject)
        assert run_cli(*command(kind, inputs, out)) == 0  # the same command finishes the work


def test_sigusr2_under_slurm_requeues_the_job(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    env = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"}
    assert "requeued" in signals.requeue_slurm(signal.SIGUSR2, env)
    assert calls.read_text().split() == ["requeue", "70_3"]
    assert signals.requeue_slurm(signal.SIGTERM, env) == ""  # also what scancel sends: never requeued
    assert signals.requeue_slurm(signal.SIGUSR2, {}) == ""  # not under Slurm


def test_a_read_only_home_puts_matplotlibs_cache_in_synthtls(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    home = tmp_path / "file" / "home"  # not writable by anyone, root included
    monkeypatch.setenv("SYNTHTL_CACHE", str(tmp_path / "cache"))
    env = {"HOME": str(home)}
    cli.matplotlib_home(env)
    assert env["MPLCONFIGDIR"] == str(tmp_path / "cache" / "matplotlib")
    writable = {"HOME": str(tmp_path)}
    cli.matplotlib_home(writable)
    assert "MPLCONFIGDIR" not in writable


def test_show_config_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m synthtl finetune --show-config | head -1", shell=True,
                          capture_output=True, text=True)
    assert proc.stdout.startswith("strategy:") and proc.stderr == ""
