"""Using a trained classifier: `synthtl predict`, `synthtl export-model` and `synthtl.predict.load_model`."""

import json
from pathlib import Path

import pytest
import torch

from synthtl.predict import load_model, predict
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    from tests.conftest import make_folder

    root = tmp_path_factory.mktemp("predict")
    real = root / "real"
    make_folder(real / "train", 8, seed=1)
    make_folder(real / "test", 4, seed=2)
    assert run_cli("finetune", "-c", "finetune/tiny_cpu", "data.name=folder", f"data.root={real}",
                   f"data.cache_dir={root / 'cache'}", "real_stage.epochs=2", "leep.enabled=false", "progress=false",
                   "ema.enabled=true", "data.cache=false", f"out_dir={root / 'runs'}", "run_name=r") == 0
    return root / "runs" / "r", real


def test_predict_reproduces_the_runs_test_accuracy(run):
    folder, real = run
    trained = load_model(folder)
    assert trained.classes == ["blue jay", "green frog", "red fox"] and trained.weights == "last"  # sorted folders
    tests = sorted((real / "test").rglob("*.jpg"))
    rows = predict(trained, tests, top_k=3)
    assert [r["path"] for r in rows] == [str(p) for p in tests]
    assert all(abs(sum(p for _, p in r["top"]) - 1) < 1e-4 for r in rows)  # 3 classes: all of them
    hits = sum(r["top"][0][0] == p.parent.name.replace("_", " ") for r, p in zip(rows, tests, strict=True))
    result = json.loads((folder / "result.json").read_text())
    assert 100 * hits / len(tests) == pytest.approx(result["test"]["top1"], abs=1e-4)
    assert load_model(folder, "ema").weights == "ema"


def test_cli_predict_and_an_exported_model_that_timm_loads(run, tmp_path, capsys):
    import timm

    folder, real = run
    image = next((real / "test").rglob("*.jpg"))
    assert run_cli("predict", str(folder), str(image), "--top-k", "2", "--json") == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["path"] == str(image) and len(row["top"]) == 2
    assert run_cli("export-model", str(folder), "--out", str(tmp_path / "m")) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["label_names"] == ["blue jay", "green frog", "red fox"] and config["num_classes"] == 3
    trained = load_model(folder)
    x = trained.transform(__import__("synthtl.data.images", fromlist=["load_rgb"]).load_rgb(image))[None]
    with torch.no_grad():
        assert torch.equal(model(x), trained.model(x))


def test_an_unfinished_run_is_one_line(tmp_path, capsys):
    assert run_cli("predict", str(tmp_path), "x.jpg") == 2
    assert "not a finished fine-tuning run" in capsys.readouterr().err
