"""Tiny studies end to end (in-process, and through submitit's local executor)."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthtl.config import StudyConfig, load_config
from synthtl.errors import ConfigError, DataError
from synthtl.experiments import launch as launch_mod
from synthtl.experiments import runner as runner_mod
from synthtl.experiments.grid import expand
from synthtl.experiments.runner import StudyError, run_study
from synthtl.files import write_json
from synthtl.reporting.report import build_report
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def tiny_study(tmp_path, folder_data, name="s", *extra) -> StudyConfig:
    return load_config(StudyConfig, None, [*_overrides(tmp_path, folder_data, name), *extra])


def _overrides(tmp_path, folder_data, name) -> list[str]:
    return [
        f"name={name}", f"out_dir={tmp_path / name}", f"data_root={folder_data}", f"cache_dir={tmp_path / 'cache'}",
        "finetune_preset=finetune/tiny_cpu",
        "finetune=[real_stage.epochs=1,synth_stage.epochs=1,real_stage.batch_size=8,synth_stage.batch_size=8]",
        "generate_preset=generate/tiny", "generate=[generator.steps=2]", "style_presets.dsi=style/tiny",
        "style_presets.per_class=style/tiny_per_class",
        "style=[steps=2,images_per_class=2]",
        "grid.datasets=[folder]", "grid.models=[test_resnet]", "grid.strategies=[vanilla,bridged++]",
        "grid.seeds=[0,1]", "grid.volumes=[4]", "grid.prompts=[single]",
        "report.features=test_resnet", "report.features_fallback=test_resnet", "report.features_pretrained=false",
        "report.max_images=40", "report.kid_subsets=3", "report.kid_subset_size=10", "report.bootstrap=200"]


def count_jobs(monkeypatch) -> list:
    calls = []
    real = launch_mod.JobRunner.__call__

    def counting(self, argv):
        calls.append(argv[0])
        return real(self, argv)

    monkeypatch.setattr(launch_mod.JobRunner, "__call__", counting)
    return calls


def test_study_runs_every_job_once_and_resumes_as_a_noop(tmp_path, folder_data, monkeypatch):
    cfg = tiny_study(tmp_path, folder_data, "s", "grid.prompts=[single,dsi]")
    calls = count_jobs(monkeypatch)
    summary = run_study(cfg)
    assert summary["style"] == 1 and summary["generate"] == 2 and summary["finetune"] == 2 + 4
    assert calls.count("learn-style") == 1 and calls.count("generate") == 2 and calls.count("finetune") == 6
    assert len(list((tmp_path / "s" / "runs").glob("*/result.json"))) == 6
    assert (tmp_path / "s" / "plan.json").is_file() and len(list((tmp_path / "s" / "jobs").glob("*.yaml"))) == 9
    calls.clear()
    run_study(cfg)
    assert calls == []  # finished jobs are skipped


def _strategy_csv(study_dir):
    rows = list(csv.DictReader(io.StringIO((study_dir / "report" / "tables" / "strategies_1.csv").read_text())))
    return [{k: v for k, v in r.items() if k != "setting"} for r in rows]


def test_killed_study_resumed_gives_the_same_report(tmp_path, folder_data, monkeypatch):
    whole = tiny_study(tmp_path, folder_data, "whole")
    run_study(whole)
    build_report(whole.folder, whole.report)
    killed = tiny_study(tmp_path, folder_data, "killed")
    calls = []
    real = launch_mod.JobRunner.__call__

    def dying(self, argv):
        calls.append(argv[0])
        if len(calls) == 3:  # the generation job and one run finished; killed during the second run
            raise KeyboardInterrupt
        return real(self, argv)

    monkeypatch.setattr(launch_mod.JobRunner, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study(killed)
    monkeypatch.setattr(launch_mod.JobRunner, "__call__", real)
    run_study(killed)
    build_report(killed.folder, killed.report)
    assert _strategy_csv(tmp_path / "killed") == _strategy_csv(tmp_path / "whole")


def test_failed_job_is_reported_others_finish_and_rerun_completes(tmp_path, folder_data, monkeypatch):
    cfg = tiny_study(tmp_path, folder_data, "f")
    from synthtl.training import run as run_mod

    real = run_mod._claim

    def flaky(run_dir, run_cfg):
        real(run_dir, run_cfg)
        if "s1_" in run_dir.name:  # crashes once training started (its folder claimed): it resumes, stopped part-way
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(run_mod, "_claim", flaky)
    with pytest.raises(StudyError, match="2 job"):
        run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 2
    assert len(list((tmp_path / "f" / "logs").glob("*.log"))) == 2
    line = next(x for x in runner_mod.study_status(cfg).splitlines() if x.strip().startswith("finetune"))
    assert "2 finished,     0 running elsewhere,     2 to run (2 stopped part-way)" in line, line
    monkeypatch.setattr(run_mod, "_claim", real)
    run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 4


def test_submitit_local_executor(tmp_path, folder_data):
    """Through submitit (its local cluster), with 2 processes per fine-tuning/generation task: data-parallel."""
    pytest.importorskip("submitit")
    cfg = tiny_study(tmp_path, folder_data, "slurm", "grid.strategies=[bridged]", "grid.seeds=[0]",
                     "launcher.kind=slurm", "launcher.cluster=local", "launcher.time_min=10",
                     "launcher.gpus_per_task=2")
    run_study(cfg)
    results = list((tmp_path / "slurm" / "runs").glob("*/result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["world_size"] == 2
    assert list((tmp_path / "slurm" / "slurm").rglob("*_log.out"))  # submitit's logs


def test_local_jobs_on_several_gpus_run_under_torchrun(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "multi", "launcher.gpus_per_job=2", "launcher.parallel=2")
    assert launch_mod.gpu_slots(2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, per_job=2) == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="gpus_per_job=2"):
        launch_mod.gpu_slots(3, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, per_job=2)
    tune = launch_mod.Task("j", "j", ["finetune", "-c", "job.yaml"], tmp_path / "lock")
    style = launch_mod.Task("s", "s", ["learn-style", "-c", "job.yaml"], tmp_path / "lock")
    assert launch_mod.process_argv(tune, 2)[1:5] == ["-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node=2"]
    assert launch_mod.process_argv(style, 2)[1:] == ["-m", "synthtl", "learn-style", "-c", "job.yaml"]
    assert cfg.launcher.gpus_per_job == 2


def test_requeue_resubmits_the_same_job():
    submitit = pytest.importorskip("submitit")
    runner = launch_mod.JobRunner()
    delayed = runner.checkpoint(["finetune", "-c", "job.yaml"])
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.args == (["finetune", "-c", "job.yaml"],)


def test_cli_dry_run_runs_nothing(tmp_path, folder_data, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("# synthtl study --config grid.yaml\nname: g\ngrid:\n  datasets: [folder]\n"
                    "  models: [test_resnet]\n  strategies: [vanilla, bridged++]\n  volumes: [4]\n")
    assert run_cli("study", "--config", str(grid), f"out_dir={tmp_path / 'g'}", f"data_root={folder_data}",
                   "finetune_preset=finetune/tiny_cpu", "generate_preset=generate/tiny", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "2 to run" in out and "GPU-hours" in out
    assert not (tmp_path / "g").exists()  # a dry run writes nothing: no plan, no job files


def test_parallel_local_launcher_runs_one_subprocess_per_slot(tmp_path, folder_data):
    cfg = tiny_study(tmp_path, folder_data, "par", "grid.strategies=[vanilla]", "launcher.parallel=2")
    run_study(cfg)
    assert len(list((tmp_path / "par" / "runs").glob("*/result.json"))) == 2
    logs = sorted(p.name for p in (tmp_path / "par" / "logs").glob("*.log"))
    assert len(logs) == 2 and {name.split(".")[-2] for name in logs} == {"0", "1"}  # one per slot


def test_slurm_stages_chain_by_dependency_without_waiting():
    assert launch_mod.slurm_dependency([]) == {}
    assert launch_mod.slurm_dependency(["101", "102"]) == {"slurm_additional_parameters": {"dependency":
                                                                                          "afterany:101:102"}}


def test_moved_study_and_data_rerun_nothing(tmp_path, folder_data, monkeypatch, capsys):
    first = tiny_study(tmp_path, folder_data, "m", "grid.strategies=[bridged++]", "grid.seeds=[0]",
                       "grid.prompts=[dsi]")
    run_study(first)  # a style, a generated set and a run
    study_dir = shutil.move(tmp_path / "m", tmp_path / "moved" / "m")
    data = shutil.move(folder_data, tmp_path / "moved" / "real")
    moved = load_config(StudyConfig, None, [
        *[o for o in _overrides(tmp_path, folder_data, "m") if not o.startswith(("out_dir", "data_root", "cache_dir"))],
        f"out_dir={study_dir}", f"data_root={data}", f"cache_dir={tmp_path / 'other-cache'}",
        "grid.strategies=[bridged++]", "grid.seeds=[0]", "grid.prompts=[dsi]",
        "generate=[generator.steps=2,generator.batch_size=3,writers=1]"])  # a speed-only setting changed too
    capsys.readouterr()
    run_study(moved, dry_run=True)
    out = capsys.readouterr().out
    for stage in ("style", "generate", "finetune"):
        line = next(x for x in out.splitlines() if x.strip().startswith(stage))
        assert "1 jobs,     1 finished,     0 running elsewhere,     0 to run (0 stopped part-way)" in line, line
    calls = count_jobs(monkeypatch)
    run_study(moved)
    assert calls == []
    assert len(list((Path(study_dir) / "runs").glob("*/result.json"))) == 1  # no duplicate for the report


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

        def fake(self, argv):  # instead of training: who runs, and is our lock visible to another process?
            ran.append(argv[2])
            probe = [sys.executable, "-c", "import sys\nfrom synthtl.experiments.launch import is_locked\n"
                     "from pathlib import Path\nprint(is_locked(Path(sys.argv[1])))", str(free)]
            held_while_running.append(subprocess.run(probe, capture_output=True, text=True).stdout.strip())
            return 0

        monkeypatch.setattr(launch_mod.JobRunner, "__call__", fake)
        summary = run_study(cfg)  # no StudyError: running elsewhere is not a failure
        assert summary["elsewhere"] == [jobs[0].id] and summary["failed"] == []
        assert len(ran) == 1 and jobs[1].id in ran[0] and held_while_running == ["True"]
    finally:
        holder.kill()
        holder.wait()
    assert not launch_mod.is_locked(busy)  # a killed holder releases its lock


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
    tasks = [launch_mod.Task(f"j{i}", f"j{i}", ["finetune", "-c", f"j{i}.yaml"], launch_mod.lock_folder(cfg, f"j{i}"))
             for i in range(4)]
    out = launch_mod._subprocesses(tasks, cfg, 2, env={"CUDA_VISIBLE_DEVICES": "3,5", "PATH": os.environ["PATH"]})
    assert out.failed == [] and len(seen) == 4 and set(seen) == {"3", "5"}  # never 0 or 1: not given to us


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
    monkeypatch.setattr(launch_mod, "_slurm", lambda stage, tasks, study, earlier: submitted.extend(
        t.job for t in tasks) or launch_mod.Outcome())
    with pytest.raises(StudyError, match=rf"failed.*{a.id} \(Slurm 101_0, FAILED; log: {log}\)"):
        run_study(cfg)  # e.g. the next `synthtl study` call after a wait=false submission
    assert submitted == []
    summary = run_study(cfg)  # reported once: this call submits it again; the queued one is not submitted twice
    assert submitted == [a.id] and summary["elsewhere"] == [b.id]


def test_slurm_task_does_not_start_when_an_input_did_not_finish(tmp_path, monkeypatch):
    cfg = load_config(StudyConfig, None, [f"out_dir={tmp_path / 'g'}", "generate_preset=generate/tiny",
                                          "finetune_preset=finetune/tiny_cpu", "grid.strategies=[bridged]"])
    plan = expand(cfg)
    (gen,) = plan.of("generate")
    called = []
    monkeypatch.setattr("synthtl.cli.main", lambda argv: called.append(argv) or 0)
    with pytest.raises(RuntimeError, match=f"input job.*{gen.id} did not finish"):
        launch_mod.JobRunner()(["finetune", "-c", "x.yaml"], str(tmp_path / "lock"), [gen])
    assert called == []
    assert launch_mod.JobRunner()(["finetune", "-c", "x.yaml"], str(tmp_path / "lock"), []) == 0 and called


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
    monkeypatch.setattr(launch_mod.JobRunner, "__call__", lambda self, argv: ran.append(argv[2]) or 0)
    run_study(cfg)
    present = expand(cfg)
    assert fetched == [("folder", "train", True), ("folder", "test", True)] and not present.missing
    assert len(ran) == 1 and present.of("finetune")[0].id in ran[0]  # ran under the id the data will keep
    no_download = tiny_study(tmp_path, folder_data, "nd", "grid.strategies=[vanilla]", "grid.seeds=[0]",
                             f"data_root={tmp_path / 'absent'}")
    with pytest.raises(DataError, match="nothing was run"):
        run_study(no_download)


def test_study_with_a_style_lora_and_a_filtered_set(tmp_path, folder_data, monkeypatch):
    """The peers' methods as grid values (ours): a style LoRA as a prompt style, and a CLIP-filtered set beside the
    unfiltered one; the filter stage runs between generation and fine-tuning, and runs read what it kept."""
    from tests.filtering.tiny import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    cfg = tiny_study(tmp_path, folder_data, "p", "grid.prompts=[lora]", "grid.strategies=[bridged++]",
                     "grid.seeds=[0]", "grid.filters=['',clip2]", "style_presets.lora=style/lora_tiny",
                     "filter_presets.clip2=filter/clip", f"filter=[clip.model={clip},keep.top_k=2,batch_size=4]")
    calls = count_jobs(monkeypatch)
    summary = run_study(cfg)
    assert (summary["style"], summary["generate"], summary["filter"], summary["finetune"]) == (1, 1, 1, 2)
    assert calls == ["learn-style", "generate", "filter", "finetune", "finetune"]
    results = [json.loads(p.read_text()) for p in (tmp_path / "p" / "runs").glob("*/result.json")]
    synthetic = sorted(r["images"]["synthetic"] for r in results)
    assert synthetic == [2 * 3, 4 * 3]  # top-2 of 4 per class, and all 4
    gen = next((tmp_path / "p" / "gen").iterdir())
    assert json.loads((gen / "plan.json").read_text())["identity"]["style_hash"].startswith("lora-")
    calls.clear()
    run_study(cfg)
    assert calls == []
    build_report(cfg.folder, cfg.report)  # the filter's cost is counted beside the other stages
    assert "filtering" in (tmp_path / "p" / "report" / "tables" / "cost.csv").read_text()


def test_img2img_sets_are_made_from_each_runs_own_shots(tmp_path, folder_data, monkeypatch):
    cfg = tiny_study(tmp_path, folder_data, "i2i", "grid.prompts=[img2img]", "grid.strategies=[bridged]",
                     "grid.shots=[2]", "grid.volumes=[2]", "generate=[generator.steps=2,img2img.strength=0.5]")
    summary = run_study(cfg)
    assert summary["generate"] == 2 and summary["finetune"] == 2  # one set per few-shot split (seeds 0 and 1)
    for gen in (tmp_path / "i2i" / "gen").iterdir():
        plan = json.loads((gen / "plan.json").read_text())
        assert plan["identity"]["mode"] == "img2img" and all(len(k["sources"]) == 2 for k in plan["classes"])
    assert len(list((tmp_path / "i2i" / "runs").glob("*/result.json"))) == 2


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


def _kept_prefix(set_dir: Path, name: str, per_class: int) -> dict[int, set[str]]:
    """Per class, the images the whole-set ranking kept among the first `per_class` (the filter's own decisions)."""
    rows = [json.loads(x) for x in (set_dir / "filters" / name / "decisions.jsonl").read_text().splitlines()]
    out: dict[int, set[str]] = {}
    for d in rows:
        if d["index"] < per_class and d["kept"]:
            out.setdefault(d["class_index"], set()).add(d["path"])
    return out


def test_growing_a_filtered_study_refilters_the_new_images_and_keeps_finished_runs(
        tmp_path, folder_data, monkeypatch, capsys):
    """A grown set makes its finished filter stale: the study runs the filter again (scoring only the new images)
    instead of counting it finished. A filtered run's images are its filter's rule applied to its own first k images
    (`filtering.selection`), so the finished volume-4 run keeps its choice and is not trained again, although the
    filter's ranking over the whole grown set keeps other images among the first 4."""
    from synthtl.filtering import identity, selection
    from tests.filtering.tiny import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    args = ["grid.strategies=[bridged++]", "grid.seeds=[0]", "grid.filters=[top4]", "filter_presets.top4=filter/clip",
            f"filter=[clip.model={clip},keep.top_k=4,batch_size=4]"]
    small = tiny_study(tmp_path, folder_data, "g", *args)
    run_study(small)
    set_dir = next((tmp_path / "g" / "gen").iterdir())
    before, chosen = _kept_prefix(set_dir, "top4", 4), selection(set_dir, "top4", 4)
    old_identity = identity(set_dir, "top4")  # what an older synthtl recorded in a filtered run's inputs.json
    grown = tiny_study(tmp_path, folder_data, "g", *args, "grid.volumes=[4,6]")
    status = runner_mod.study_status(grown).splitlines()
    line = {x.split()[0]: x for x in status if x.startswith("  ")}
    assert "1 to run (0 stopped part-way, 1 to extend)" in line["generate"], line["generate"]
    assert "1 to run (0 stopped part-way, 1 to extend)" in line["filter"], line["filter"]  # not "finished"
    gen, filt = expand(grown).of("generate")[0], expand(grown).of("filter")[0]
    runner_mod.write_plan(expand(grown))
    assert run_cli("generate", "-c", str(runner_mod.job_file(grown, gen))) == 0  # the set grows alone
    assert not runner_mod.is_done(filt)  # its filter no longer covers it: not finished
    line = next(x for x in runner_mod.study_status(grown).splitlines() if x.strip().startswith("filter"))
    assert "0 finished" in line and "1 to run (0 stopped part-way, 1 to extend)" in line, line
    assert run_cli("filter", "-c", str(runner_mod.job_file(grown, filt))) == 0  # as the reviewer did by hand
    assert runner_mod.is_done(filt)
    v4 = next(j for j in expand(grown).of("finetune") if j.config.synthetic.per_class == 4)
    assert _kept_prefix(set_dir, "top4", 4) != before  # top-4 of 6 keeps other images of the first 4 than top-4 of 4
    assert selection(set_dir, "top4", 4) == chosen  # but a volume-4 run's images are its first 4's best 4: the same
    assert not runner_mod.stale_run(v4) and runner_mod.is_done(v4)
    calls = count_jobs(monkeypatch)
    summary = run_study(grown)
    assert summary["failed"] == [] and summary["unfinished"] == []
    assert calls == ["finetune"]  # the new volume-6 run only
    cost = [json.loads(x) for x in (set_dir / "filters" / "top4" / "cost.jsonl").read_text().splitlines()]
    assert sum(c["scored"] for c in cost) == 6 * 3  # the 4 first images of each class were not scored again
    assert not (tmp_path / "g" / "stale").exists()
    result = (v4.out / "result.json").read_bytes()
    (v4.out / "result.json").unlink()  # as if killed before its end: it resumes on the same images, not retrains
    assert runner_mod.stale_run(v4) == ""
    (v4.out / "result.json").write_bytes(result)
    # no recorded selection (a job file run by hand, a Slurm task submitted without waiting): the run's inputs.json
    # holds its selection, unchanged: still finished
    record = json.loads((v4.out / "study_job.json").read_text())
    write_json(v4.out / "study_job.json", {k: v for k, v in record.items() if k != "filter_selection"})
    assert runner_mod.stale_run(v4) == "" and runner_mod.is_done(v4)
    # a run of an older synthtl recorded its filter's whole-set identity, which the growth changed: it trained on the
    # old whole-set ranking, so it trains again under today's rule, its old folder kept under stale/
    inputs = json.loads((v4.out / "inputs.json").read_text())
    write_json(v4.out / "inputs.json", {**inputs, "filter": old_identity})
    assert runner_mod.stale_run(v4)
    calls.clear()
    run_study(grown)
    assert calls == ["finetune"] and [p.name for p in (tmp_path / "g" / "stale").iterdir()] == [f"{v4.id}.1"]
    assert runner_mod.is_done(v4) and not runner_mod.stale_run(v4)


def test_a_grown_set_keeps_runs_whose_filtered_images_did_not_change(tmp_path, folder_data, monkeypatch):
    """A threshold keeps each image on its own score (logged once): the first k images keep the same choice when the
    set grows, so finished runs stay finished while the filter is updated."""
    from tests.filtering.tiny import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    args = ["grid.strategies=[bridged++]", "grid.seeds=[0]", "grid.filters=[thr]", "filter_presets.thr=filter/clip",
            f"filter=[clip.model={clip},keep.threshold=0.0,batch_size=4]"]
    run_study(tiny_study(tmp_path, folder_data, "t", *args))
    grown = tiny_study(tmp_path, folder_data, "t", *args, "grid.volumes=[4,6]")
    calls = count_jobs(monkeypatch)
    assert run_study(grown)["unfinished"] == []
    assert calls == ["generate", "filter", "finetune"]  # the new volume-6 run; the volume-4 run is not trained again
    assert not (tmp_path / "t" / "stale").exists()


def test_claimed_jobs_that_never_started_are_not_stopped_part_way(tmp_path, folder_data, monkeypatch):
    """A stage claims all its folders before launching any: a study killed during its first run leaves the others
    claimed but never started, and only a run that really trained counts as stopped part-way."""
    cfg = tiny_study(tmp_path, folder_data, "k", "grid.strategies=[vanilla]")
    real = launch_mod.JobRunner.__call__

    def killed(self, argv):
        real(self, argv)  # the first run trains, then "dies" before its result is kept
        (Path(argv[2]).parent.parent / "runs" / Path(argv[2]).stem / "result.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(launch_mod.JobRunner, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)
    assert len(list((tmp_path / "k" / "runs").glob("*/study_job.json"))) == 2  # both claimed
    line = next(x for x in runner_mod.study_status(cfg).splitlines() if x.strip().startswith("finetune"))
    assert "2 to run (1 stopped part-way)" in line, line


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


def test_study_command_says_unfinished_and_builds_no_report_while_jobs_run_elsewhere(
        tmp_path, folder_data, monkeypatch, capsys):
    """Jobs run by another process: not "study finished"; exit 75 (try again later); --report builds nothing."""
    args = [f"--config={tmp_path / 'x.yaml'}", *_overrides(tmp_path, folder_data, "e"), "grid.strategies=[vanilla]",
            "grid.seeds=[0,1]"]
    (tmp_path / "x.yaml").write_text("name: e\n")
    jobs = expand(tiny_study(tmp_path, folder_data, "e", "grid.strategies=[vanilla]", "grid.seeds=[0,1]")).jobs
    real = launch_mod.JobRunner.__call__

    def busy(self, argv):
        if jobs[0].id in argv[2]:
            raise launch_mod.LockedError("held by another study")  # what exclusive() raises for a held job
        return real(self, argv)

    monkeypatch.setattr(launch_mod.JobRunner, "__call__", busy)
    capsys.readouterr()
    assert run_cli("study", *args, "--report") == 75
    out = capsys.readouterr().out
    assert "study finished" not in out and "the study is not finished: 1 of 2 jobs are unfinished" in out
    assert "1 running in another process" in out and "no report built" in out
    assert not (tmp_path / "e" / "report").exists()
    monkeypatch.setattr(launch_mod.JobRunner, "__call__", real)
    assert run_cli("study", *args) == 0
    assert "study finished; build its report with" in capsys.readouterr().out


def test_filtered_jobs_run_by_hand_count_as_finished(tmp_path, folder_data, monkeypatch):
    """Job files run by hand (as Slurm tasks submitted without waiting are): the study records no selection for the
    filtered run, whose inputs.json holds it; the next `synthtl study` counts the run finished and runs nothing."""
    from tests.filtering.tiny import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    cfg = tiny_study(tmp_path, folder_data, "h", "grid.strategies=[mixed]", "grid.seeds=[0]", "grid.filters=[top2]",
                     "filter_presets.top2=filter/clip", f"filter=[clip.model={clip},keep.top_k=2,batch_size=4]")
    plan = expand(cfg)
    runner_mod.write_plan(plan)
    for kind in ("generate", "filter", "finetune"):
        for job in plan.of(kind):
            assert run_cli(kind, "-c", str(runner_mod.job_file(cfg, job))) == 0
    calls = count_jobs(monkeypatch)
    assert run_study(cfg)["unfinished"] == [] and calls == []
    assert not (tmp_path / "h" / "stale").exists()
