"""tracker=mlflow|wandb: the config, every metric row and the test numbers reach the tracker; a missing package:
one line."""

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_mlflow_gets_params_metrics_and_test_numbers(tiny_overrides, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local folder, no server
    assert run_cli("finetune", *tiny_overrides, "tracker=mlflow", "real_stage.epochs=2") == 0
    (run,) = mlflow.search_runs(experiment_names=["synthtl"], output_format="list")
    client = mlflow.MlflowClient()
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "vanilla"
    assert run.data.params["data.name"] == "folder" and run.data.params["real_stage.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "real/test_top1")
    assert [m.step for m in history] and len(history) == 2  # one point per epoch row
    assert 0 <= run.data.metrics["test/top1"] <= 100


def test_wandb_offline_gets_config_metrics_and_test_numbers_in_the_users_project(tiny_overrides, tmp_path,
                                                                                  monkeypatch):
    wandb = pytest.importorskip("wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_PROJECT": "my-project"}.items():
        monkeypatch.setenv(k, v)
    seen = {"logs": []}
    real_init = wandb.init

    def init(**kwargs):  # the real run, with its log and finish recorded on the way through
        run = seen["run"] = real_init(**kwargs)
        seen["config"] = kwargs["config"]
        log, finish = run.log, run.finish

        def record_log(values, step=None):
            seen["logs"].append((step, values))
            log(values, step=step)

        def record_finish(exit_code=None):
            seen["summary"], seen["exit"] = dict(run.summary), exit_code
            finish(exit_code=exit_code)

        run.log, run.finish = record_log, record_finish
        return run

    monkeypatch.setattr(wandb, "init", init)
    assert run_cli("finetune", *tiny_overrides, "tracker=wandb", "real_stage.epochs=2") == 0
    assert seen["run"].project == "my-project"  # WANDB_PROJECT, as the key's help says; synthtl only by default
    assert seen["config"]["strategy"] == "vanilla" and seen["config"]["real_stage.epochs"] == 2
    assert [step for step, _ in seen["logs"]] == sorted(step for step, _ in seen["logs"]) and len(seen["logs"]) == 2
    assert all("real/test_top1" in values and "real/epoch" not in values for _, values in seen["logs"])
    assert 0 <= seen["summary"]["test/top1"] <= 100 and seen["exit"] == 0
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # written offline, nothing sent


def test_a_missing_tracker_package_is_one_line_before_any_work(tiny_overrides, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.setattr("importlib.import_module", lambda name: no_wandb(name))
    assert run_cli("finetune", *tiny_overrides, "tracker=wandb") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("tracker=wandb needs the wandb package: pip install wandb, or set tracker=''")
    assert len(err.splitlines()) == 1


def test_a_wandb_too_old_for_string_reinit_is_one_line_before_any_work(tiny_overrides, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setattr("synthtl.training.tracker.version", lambda name: "0.19.1")
    assert run_cli("finetune", *tiny_overrides, "tracker=wandb") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("tracker=wandb needs wandb >= 0.20 (this one is 0.19.1): pip install -U wandb, or set "
                        "tracker=''") and len(err.splitlines()) == 1
