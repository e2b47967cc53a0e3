"""Tiny studies end to end (in-process, and through submitit's local executor)."""

import csv
import io

import pytest

from synthtl.config import StudyConfig, load_config
from synthtl.experiments import launch as launch_mod
from synthtl.experiments.runner import StudyError, run_study
from synthtl.reporting.report import build_report
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def tiny_study(tmp_path, folder_data, name="s", *extra) -> StudyConfig:
    return load_config(StudyConfig, None, [
        f"name={name}", f"out_dir={tmp_path / name}", f"data_root={folder_data}", f"cache_dir={tmp_path / 'cache'}",
        "finetune_preset=finetune/tiny_cpu",
        "finetune=[real_stage.epochs=1,synth_stage.epochs=1,real_stage.batch_size=8,synth_stage.batch_size=8]",
        "generate_preset=generate/tiny", "generate=[generator.steps=2]", "style_presets.dsi=style/tiny",
        "style_presets.per_class=style/tiny_per_class",
        "style=[steps=2,images_per_class=2]",
        "grid.datasets=[folder]", "grid.models=[test_resnet]", "grid.strategies=[vanilla,bridged++]",
        "grid.seeds=[0,1]", "grid.volumes=[4]", "grid.prompts=[single]",
        "report.features=test_resnet", "report.features_fallback=test_resnet", "report.features_pretrained=false",
        "report.max_images=40", "report.kid_subsets=3", "report.kid_subset_size=10", "report.bootstrap=200", *extra])


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
    real = launch_mod.JobRunner.__call__

    def flaky(self, argv):
        if "s1_" in argv[2]:
            raise RuntimeError("simulated crash")
        return real(self, argv)

    monkeypatch.setattr(launch_mod.JobRunner, "__call__", flaky)
    with pytest.raises(StudyError, match="2 job"):
        run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 2
    assert len(list((tmp_path / "f" / "logs").glob("*.log"))) == 2
    monkeypatch.setattr(launch_mod.JobRunner, "__call__", real)
    run_study(cfg)
    assert len(list((tmp_path / "f" / "runs").glob("*/result.json"))) == 4


def test_submitit_local_executor(tmp_path, folder_data):
    pytest.importorskip("submitit")
    cfg = tiny_study(tmp_path, folder_data, "slurm", "grid.strategies=[bridged]", "grid.seeds=[0]",
                     "launcher.kind=slurm", "launcher.cluster=local", "launcher.time_min=10")
    run_study(cfg)
    assert len(list((tmp_path / "slurm" / "runs").glob("*/result.json"))) == 1
    assert list((tmp_path / "slurm" / "slurm").rglob("*_log.out"))  # submitit's logs


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
    assert not (tmp_path / "g" / "runs").exists()


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
