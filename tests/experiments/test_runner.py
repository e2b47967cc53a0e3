"""Tiny studies end to end (in-process, in subprocesses, and through submitit's local executor)."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from synthtl import faults
from synthtl.config import StudyConfig, load_config
from synthtl.errors import ConfigError, DataError
from synthtl.experiments import launch as launch_mod
from synthtl.experiments import runner as runner_mod
from synthtl.experiments.grid import expand
from synthtl.experiments.runner import StudyError, run_study
from synthtl.files import write_json
from synthtl.reporting.report import build_report
from tests.conftest import run_cli, study_overrides

pytestmark = pytest.mark.integration


def tiny_study(tmp_path, folder_data, name="s", *extra) -> StudyConfig:
    return load_config(StudyConfig, None, [*study_overrides(tmp_path, folder_data, name), *extra])


class Jobs:
    """The kinds of job a study runs in this process (the "job" fault point), as a context manager."""

    def __enter__(self) -> list[str]:
        self.calls: list[str] = []
        self._ctx = faults.inject("job", lambda task: self.calls.append(task.kind))
        self._ctx.__enter__()
        return self.calls

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def stage_line(text: str, stage: str) -> str:
    return next(x for x in text.splitlines() if x.strip().startswith(stage))


# ---------------------------------------------------------------------------------------- the shared finished study
def test_study_runs_every_job_once_and_resumes_as_a_noop(finished_study):
    s = finished_study["summary"]
    assert (s["style"], s["generate"], s["filter"], s["finetune"]) == (1, 2, 2, 2 + 8)
    assert finished_study["calls"] == ["style", "generate", "generate", "filter", "filter"] + ["finetune"] * 10
    folder = finished_study["folder"]
    assert len(list((folder / "runs").glob("*/result.json"))) == 10 and len(list((folder / "jobs").glob("*"))) == 15
    results = [json.loads(p.read_text()) for p in (folder / "runs").glob("*/result.json")]
    assert sorted(r["images"]["synthetic"] for r in results if r["strategy"] == "bridged++") == [6] * 4 + [12] * 4
    with Jobs() as calls:
        assert run_study(finished_study["cfg"])["unfinished"] == []
    assert calls == []  # finished jobs are skipped
    status = runner_mod.study_status(finished_study["cfg"])
    for stage, n in (("style", 1), ("generate", 2), ("filter", 2), ("finetune", 10)):
        assert f"{n:>5} jobs, {n:>5} finished,     0 running elsewhere,     0 to run" in stage_line(status, stage)
    assert "filtering" in (folder / "report" / "tables" / "cost.csv").read_text()  # the filter's cost is counted


def test_moved_study_and_data_rerun_nothing(finished_study, tmp_path, capsys):
    study_dir = shutil.copytree(finished_study["folder"], tmp_path / "moved" / "s")
    data = shutil.copytree(finished_study["real"], tmp_path / "moved" / "real")
    kept = [o for o in finished_study["overrides"] if not o.startswith(("out_dir", "data_root", "cache_dir"))]
    moved = load_config(StudyConfig, None, [*kept, f"out_dir={study_dir}", f"data_root={data}",
                                            f"cache_dir={tmp_path / 'other-cache'}",
                                            "generate=[generator.steps=2,generator.batch_size=3,writers=1]"])
    capsys.readouterr()
    run_study(moved, dry_run=True)  # a speed-only setting changed too
    out = capsys.readouterr().out
    for stage in ("style", "generate", "filter", "finetune"):
        assert "finished,     0 running elsewhere,     0 to run (0 stopped part-way)" in stage_line(out, stage)
    with Jobs() as calls:
        run_study(moved)
    assert calls == [] and len(list((study_dir / "runs").glob("*/result.json"))) == 10  # no duplicate


def test_filtered_jobs_run_by_hand_are_the_same_jobs(finished_study, tmp_path):
    """Job files run by hand (as Slurm tasks submitted without waiting are) make the folders, with the identities, that
    the study planned: a copy of the finished study run job by job holds byte-identical identity files."""
    folder = finished_study["folder"]
    plan = expand(finished_study["cfg"])
    for job in plan.jobs:
        held = json.loads((job.out / "identity.json").read_text())
        assert held["hash"] == job.hash and job.id.endswith(job.hash) and held["kind"] == job.kind
    jobs = {p.stem: p for p in (folder / "jobs").glob("*.yaml")}
    assert sorted(jobs) == sorted(j.id for j in plan.jobs)


# ------------------------------------------------------------------------------------------ faults and resumption
def _strategy_csv(study_dir):
    rows = list(csv.DictReader(io.StringIO((study_dir / "report" / "tables" / "strategies_1.csv").read_text())))
    return [{k: v for k, v in r.items() if k != "setting"} for r in rows]


def test_killed_study_resumed_gives_the_same_report(tmp_path, folder_data):
    whole = tiny_study(tmp_path, folder_data, "whole")
    run_study(whole)
    build_report(whole.folder, whole.report)
    killed = tiny_study(tmp_path, folder_data, "killed")
    calls = []

    def dying(task):
        calls.append(task.kind)
        if len(calls) == 3:  # the generation job and one run finished; killed during the second run
            raise KeyboardInterrupt

    with faults.inject("job", dying), pytest.raises(KeyboardInterrupt):
        run_study(killed)
    run_study(killed)
    build_report(killed.folder, killed.report)
    assert _strategy_csv(tmp_path / "killed") == _strategy_csv(tmp_path / "whole")


def test_failed_job_is_reported_others_finish_and_rerun_completes(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "f")

    def crash(run_dir):
        if "s1_" in run_dir.name:  # crashes once training started (its folder claimed): it resumes, stopped part-way
            raise RuntimeError("simulated crash")

    with faults.inject("run.claimed", crash), pytest.raises(StudyError, match="2 job"):
        run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 2
    assert len(list((tmp_path / "f" / "logs").glob("*.log"))) == 2
    line = stage_line(runner_mod.study_status(cfg), "finetune")
    assert "2 finished,     0 running elsewhere,     2 to run (2 stopped part-way)" in line, line
    run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 4


def test_eta_of_the_kth_job():
    assert launch_mod.eta(1, 4, 0.0) == "1/4 (elapsed 0:00:00)"
    assert launch_mod.eta(3, 4, 600.0) == "3/4 (elapsed 0:10:00, ETA ~0:10:00)"  # 300 s per job, 2 to go


def test_a_job_running_elsewhere_is_skipped_not_run_twice(tmp_path, folder_data, monkeypatch):
    cfg = tiny_study(tmp_path, folder_data, "two", "grid.strategies=[vanilla]", "grid.seeds=[0,1]")
    jobs = expand(cfg).of("finetune")
    busy, free = launch_mod.lock_folder(cfg, jobs[0].id), launch_mod.lock_folder(cfg, jobs[1].id)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom synthtl.files import exclusive\n"
                               "with exclusive(sys.argv[1], 'study job'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n", str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a second writer (another `synthtl study`) runs job 0
        ran, held_while_running = [], []

        def fake(kind, file, overrides=()):  # instead of training: who runs, is our lock visible to another process?
            ran.append(str(file))
            probe = [sys.executable, "-c", "import sys\nfrom synthtl.experiments.launch import is_locked\n"
                     "from pathlib import Path\nprint(is_locked(Path(sys.argv[1])))", str(free)]
            held_while_running.append(subprocess.run(probe, capture_output=True, text=True).stdout.strip())

        monkeypatch.setattr(launch_mod, "run_job", fake)
        summary = run_study(cfg)  # no StudyError: running elsewhere is not a failure
        assert summary["elsewhere"] == [jobs[0].id] and summary["failed"] == []
        assert len(ran) == 1 and jobs[1].id in ran[0] and held_while_running == ["True"]
    finally:
        holder.kill()
        holder.wait()
    assert not launch_mod.is_locked(busy)  # a killed holder releases its lock


def test_study_command_says_unfinished_and_builds_no_report_while_jobs_run_elsewhere(tmp_path, folder_data, capsys):
    """Jobs run by another process: not "study finished"; exit 75 (try again later); --report builds nothing."""
    args = [f"--config={tmp_path / 'x.yaml'}", *study_overrides(tmp_path, folder_data, "e"),
            "grid.strategies=[vanilla]", "grid.seeds=[0,1]"]
    (tmp_path / "x.yaml").write_text("name: e\n")
    jobs = expand(tiny_study(tmp_path, folder_data, "e", "grid.strategies=[vanilla]", "grid.seeds=[0,1]")).jobs

    def busy(task):
        if task.job == jobs[0].id:
            raise launch_mod.LockedError("held by another study")  # what exclusive() raises for a held job

    capsys.readouterr()
    with faults.inject("job", busy):
        assert run_cli("study", *args, "--report") == 75
    out = capsys.readouterr().out
    assert "study finished" not in out and "the study is not finished: 1 of 2 jobs are unfinished" in out
    assert "1 running in another process" in out and "no report built" in out
    # progress: each job with k/N, elapsed and an ETA; the stage line says what ran and what was skipped, and why
    assert "[synthtl] finetune job 1/2 (elapsed 0:00:00): " in out and "finetune job 2/2 (elapsed" in out
    assert "ETA ~" in out and "[synthtl] finetune: 1 job(s) done in" in out
    assert "1 skipped: another process runs them" in out
    assert not (tmp_path / "e" / "report").exists()
    assert run_cli("study", *args) == 0
    assert "study finished; build its report with" in capsys.readouterr().out


def test_growing_a_filtered_study_adds_kept_lists_and_keeps_finished_runs(tmp_path, folder_data):
    """A grown set gets its new images scored and a kept list for the new volume; the volume-4 run's kept list is
    never rewritten, so that run stays finished."""
    from tests.filtering.tiny import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    args = ["grid.strategies=[bridged++]", "grid.seeds=[0]", "grid.filters=[top4]", "filter_presets.top4=filter/clip",
            f"filter=[clip.model={clip},keep.top_k=4,batch_size=4]"]
    run_study(tiny_study(tmp_path, folder_data, "g", *args))
    set_dir = next((tmp_path / "g" / "gen").iterdir())
    before = (set_dir / "filters" / "top4" / "kept" / "4.json").read_bytes()
    grown = tiny_study(tmp_path, folder_data, "g", *args, "grid.volumes=[4,6]")
    line = {x.split()[0]: x for x in runner_mod.study_status(grown).splitlines() if x.startswith("  ")}
    assert "1 to run (0 stopped part-way, 1 to extend)" in line["generate"], line["generate"]
    assert "1 to run (0 stopped part-way, 1 to extend)" in line["filter"], line["filter"]
    with Jobs() as calls:
        summary = run_study(grown)
    assert summary["failed"] == [] and summary["unfinished"] == []
    assert calls == ["generate", "filter", "finetune"]  # the new volume-6 run only
    assert (set_dir / "filters" / "top4" / "kept" / "4.json").read_bytes() == before
    from synthtl.filtering.store import read_cost

    assert read_cost(set_dir / "filters" / "top4")["scored"] == 6 * 3  # the first 4 of each class: not scored again


def test_study_with_a_style_lora_and_img2img_from_each_runs_own_shots(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "p", "grid.prompts=[lora,img2img]", "grid.strategies=[bridged]",
                     "grid.seeds=[0,1]", "grid.shots=[2]", "grid.volumes=[2]", "style_presets.lora=style/lora_tiny",
                     "generate=[generator.steps=2,img2img.strength=0.5]")
    with Jobs() as calls:
        summary = run_study(cfg)
    # one LoRA (shared_style=false: learned from each seed's 2 shots), one LoRA set per style, one img2img set per split
    assert (summary["style"], summary["generate"], summary["finetune"]) == (2, 4, 4), summary
    assert calls.count("style") == 2 and calls.count("finetune") == 4
    for gen in (tmp_path / "p" / "gen").iterdir():
        settings = json.loads((gen / "plan.json").read_text())["settings"]
        assert settings.get("mode") == "img2img" or settings["style_hash"].startswith("lora-")
        if settings.get("mode") == "img2img":
            assert all(len(k["sources"]) == 2 for k in json.loads((gen / "plan.json").read_text())["classes"])


# --------------------------------------------------------------------------------------------------- launchers
def test_submitit_local_executor(tmp_path, folder_data):
    """Through submitit (its local cluster), with 2 processes per fine-tuning task: data-parallel (a vanilla run:
    the 2-process generation shards are tested with torchrun in tests/generation)."""
    pytest.importorskip("submitit")
    cfg = tiny_study(tmp_path, folder_data, "slurm", "grid.strategies=[vanilla]", "grid.seeds=[0]",
                     "launcher.kind=slurm", "launcher.cluster=local", "launcher.time_min=10",
                     "launcher.gpus_per_task=2")
    run_study(cfg)
    results = list((tmp_path / "slurm" / "runs").glob("*/result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["world_size"] == 2
    assert list((tmp_path / "slurm" / "slurm").rglob("*_log.out"))  # submitit's logs


def test_parallel_local_launcher_runs_one_subprocess_per_slot(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "par", "grid.strategies=[vanilla]", "launcher.parallel=2")
    run_study(cfg)
    assert len(list((tmp_path / "par" / "runs").glob("*/result.json"))) == 2
    logs = sorted(p.name for p in (tmp_path / "par" / "logs").glob("*.log"))
    assert len(logs) == 2 and {name.split(".")[-2] for name in logs} == {"0", "1"}  # one per slot


def test_local_jobs_on_several_gpus_run_under_torchrun(tmp_path):
    assert launch_mod.gpu_slots(2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, per_job=2) == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="gpus_per_job=2"):
        launch_mod.gpu_slots(3, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, per_job=2)
    tune = launch_mod.Task("j", "j", "finetune", tmp_path / "job.yaml", tmp_path / "lock")
    style = launch_mod.Task("s", "s", "style", tmp_path / "job.yaml", tmp_path / "lock")
    assert launch_mod.process_argv(tune, 2)[1:5] == ["-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node=2"]
    assert launch_mod.process_argv(style, 2)[1:] == ["-m", "synthtl", "learn-style", "-c", str(tmp_path / "job.yaml")]


def test_local_launcher_takes_gpus_from_the_inherited_mask(tmp_path, monkeypatch):
    assert launch_mod.gpu_slots(2, {"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert launch_mod.gpu_slots(1, {"CUDA_VISIBLE_DEVICES": "GPU-a1b2, GPU-c3d4"}) == ["GPU-a1b2"]
    assert launch_mod.gpu_slots(2, {"CUDA_VISIBLE_DEVICES": ""}) == [None, None]  # no GPU given: CPU, unmasked
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=3,5"):
        launch_mod.gpu_slots(3, {"CUDA_VISIBLE_DEVICES": "3,5"})
    seen = []

    class FakeProc:
        def __init__(self, argv, env, stdout, stderr):
            seen.append(env.get("CUDA_VISIBLE_DEVICES"))
            self.returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(launch_mod.subprocess, "Popen", FakeProc)
    cfg = load_config(StudyConfig, None, [f"out_dir={tmp_path / 'g'}"])
    tasks = [launch_mod.Task(f"j{i}", f"j{i}", "finetune", tmp_path / f"j{i}.yaml",
                             launch_mod.lock_folder(cfg, f"j{i}")) for i in range(4)]
    out = launch_mod._subprocesses(tasks, cfg, 2, env={"CUDA_VISIBLE_DEVICES": "3,5", "PATH": os.environ["PATH"]})
    assert out.failed == [] and len(seen) == 4 and set(seen) == {"3", "5"}  # never 0 or 1: not given to us
    seen.clear()
    monkeypatch.setattr(FakeProc, "__init__", lambda self, argv, env, stdout, stderr: seen.append(env) or
                        setattr(self, "returncode", 0))
    monkeypatch.setattr(launch_mod.os, "sched_getaffinity", lambda pid: set(range(6)))
    launch_mod._subprocesses(tasks, cfg, 2, env={"CUDA_VISIBLE_DEVICES": "", "PATH": os.environ["PATH"]})
    assert [e["OMP_NUM_THREADS"] for e in seen] == ["3"] * 4  # CPU slots share the 6 cores out
    launch_mod._subprocesses(tasks, cfg, 2, env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "5", "PATH": "."})
    assert [e["OMP_NUM_THREADS"] for e in seen[4:]] == ["5"] * 4  # the user's setting wins


def test_requeue_resubmits_the_same_job(tmp_path):
    submitit = pytest.importorskip("submitit")
    task = launch_mod.Task("j", "j", "finetune", tmp_path / "job.yaml", tmp_path / "lock")
    delayed = launch_mod.JobRunner().checkpoint(task, False)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.args == (task, False)


def test_slurm_stages_chain_by_dependency_without_waiting():
    assert launch_mod.slurm_dependency([]) == {}
    assert launch_mod.slurm_dependency(["101", "102"]) == {"slurm_additional_parameters": {"dependency":
                                                                                          "afterany:101:102"}}


def test_failed_slurm_task_fails_the_study_once_naming_job_and_log(tmp_path, monkeypatch):
    cfg = load_config(StudyConfig, None, [
        f"out_dir={tmp_path / 'sl'}", "finetune_preset=finetune/tiny_cpu", "grid.strategies=[vanilla]",
        "grid.seeds=[0,1]", "launcher.kind=slurm", "launcher.wait=false"])
    a, b = expand(cfg).of("finetune")
    log = str(tmp_path / "sl" / "slurm" / "101" / "101_0_log.err")
    write_json(launch_mod.submitted_file(cfg), [
        {"job": a.id, "task": a.id, "stage": "finetune", "slurm_id": "101_0", "log": log, "reported": False},
        {"job": b.id, "task": b.id, "stage": "finetune", "slurm_id": "101_1", "log": "b.err", "reported": False}])
    monkeypatch.setattr(launch_mod, "slurm_states", lambda ids: {"101_0": "FAILED", "101_1": "PENDING"})
    submitted = []
    monkeypatch.setattr(launch_mod, "launch", lambda stage, jobs, study, files, earlier, needs: submitted.extend(
        j.id for j in jobs) or launch_mod.Outcome())
    with pytest.raises(StudyError, match=rf"failed.*{a.id} \(Slurm 101_0, FAILED; log: {log}\)"):
        run_study(cfg)  # e.g. the next `synthtl study` call after a wait=false submission
    assert submitted == []
    summary = run_study(cfg)  # reported once: this call submits it again; the queued one is not submitted twice
    assert submitted == [a.id] and summary["elsewhere"] == [b.id]


def test_slurm_task_does_not_start_when_an_input_did_not_finish(tmp_path, monkeypatch):
    cfg = load_config(StudyConfig, None, [f"out_dir={tmp_path / 'g'}", "generate_preset=generate/tiny",
                                          "finetune_preset=finetune/tiny_cpu", "grid.strategies=[bridged]"])
    (gen,) = expand(cfg).of("generate")
    called = []
    monkeypatch.setattr(launch_mod, "run_job", lambda kind, file, overrides=(): called.append(kind))
    task = launch_mod.Task("j", "j", "finetune", tmp_path / "x.yaml", tmp_path / "lock", needs=[gen])
    with pytest.raises(RuntimeError, match=f"input job.*{gen.id} did not finish"):
        launch_mod.JobRunner()(task)
    assert called == []
    assert launch_mod.JobRunner()(launch_mod.Task("j", "j", "finetune", tmp_path / "x.yaml", tmp_path / "lock")) == 0
    assert called == ["finetune"]


# ----------------------------------------------------------------------------------------------------- planning
def test_cli_dry_run_runs_nothing(tmp_path, folder_data, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("# synthtl study --config grid.yaml\nname: g\ngrid:\n  datasets: [folder]\n"
                    "  models: [test_resnet]\n  strategies: [vanilla, bridged++]\n  volumes: [4]\n")
    assert run_cli("study", "--config", str(grid), f"out_dir={tmp_path / 'g'}", f"data_root={folder_data}",
                   "finetune_preset=finetune/tiny_cpu", "generate_preset=generate/tiny", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "2 to run" in out and "GPU-hours" in out
    assert not (tmp_path / "g").exists()  # a dry run writes nothing: no plan, no job files


def test_missing_dataset_is_fetched_before_ids_are_fixed(tmp_path, folder_data, monkeypatch):
    root = tmp_path / "not-yet"
    cfg = tiny_study(tmp_path, folder_data, "dl", "grid.strategies=[vanilla]", "grid.seeds=[0]",
                     f"data_root={root}", "finetune=[data.download=true]")
    assert expand(cfg).missing  # provisional ids while the data is not there
    fetched = []

    def fake_download(d, split, download=None):  # what torchvision's download would leave under data.root
        fetched.append((d.name, split, download))
        if not root.exists():
            shutil.copytree(folder_data, root)

    monkeypatch.setattr(runner_mod, "load_data", fake_download)
    ran = []
    monkeypatch.setattr(launch_mod, "run_job", lambda kind, file, overrides=(): ran.append(str(file)))
    run_study(cfg)
    present = expand(cfg)
    assert fetched == [("folder", "train", True), ("folder", "test", True)] and not present.missing
    assert len(ran) == 1 and present.of("finetune")[0].id in ran[0]  # ran under the id the data will keep
    no_download = tiny_study(tmp_path, folder_data, "nd", "grid.strategies=[vanilla]", "grid.seeds=[0]",
                             f"data_root={tmp_path / 'absent'}")
    with pytest.raises(DataError, match="nothing was run"):
        run_study(no_download)


def test_leftover_job_file_temps_of_a_killed_study_are_removed(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "t", "grid.strategies=[vanilla]", "grid.seeds=[0]")
    jobs = tmp_path / "t" / "jobs"
    jobs.mkdir(parents=True)
    old, fresh = jobs / ".job.yaml.abc123.tmp", jobs / ".job.yaml.def456.tmp"
    old.write_text("half")
    fresh.write_text("a live writer's")
    os.utime(old, (0, 0))
    runner_mod.write_plan(expand(cfg))  # what every `synthtl study` call (not --dry-run) does first
    assert not old.exists() and fresh.exists()  # only leftovers old enough to belong to no live writer go


def test_stage_override_of_a_key_the_grid_sets_is_refused_naming_the_grid_key(tmp_path, folder_data):
    for override, message in (("finetune=[data.shots=10]", "finetune=[data.shots=10]: the study sets data.shots "
                                                           "for each job from grid.shots; use grid.shots=[10]"),
                              ("generate=[generator.guidance=7.5]", "use grid.guidance=[7.5]"),
                              ("style=[data.name=pets]", "use grid.datasets=[pets]"),
                              ("finetune=[synthetic.per_class=9]", "use grid.volumes=[9]"),
                              ("finetune=[model.name=resnet50]", "use grid.models=[resnet50]"),
                              ("filter=[set_dir=/x]", "remove it from filter")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            expand(tiny_study(tmp_path, folder_data, "o", override))
    # the one value the grid gives every job changes nothing (configs/studies/demo.yaml has data.shots=20 so)
    assert expand(tiny_study(tmp_path, folder_data, "o", "finetune=[data.shots=2]", "grid.shots=[2]")).jobs


def test_the_finished_tiny_study_gets_a_forecast_section(finished_study):
    """The report's forecast section on a real study (here, with the study fixture, which is built once)."""
    html = (finished_study["folder"] / "report" / "index.html").read_text()
    assert "<h2 id='forecast'>Forecast: how much to generate (ours)</h2>" in html
    assert "the forecast&#x27;s numbers prove the plumbing only" in html
    assert html.count("refused: fewer than 3 volumes (measured: 0/4; vanilla is volume 0 and counts); next pilot "
                      "volume: 8/class") == 2 * 4  # both tables, 4 settings (2 prompt styles x 2 filters)
