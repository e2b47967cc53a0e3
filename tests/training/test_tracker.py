"""tracker=mlflow: the config, every metric row and the test numbers reach the tracker; a missing package: one line."""

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
