"""Reading runs from any folder: one-off finetune runs, damaged result files, folders that hold no runs."""

import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def runs_folder(tiny_overrides, tmp_path):
    """finetune's out_dir with two one-off runs (no study)."""
    for strategy in ("vanilla", "vanilla_mixup"):
        assert run_cli("finetune", *tiny_overrides, f"strategy={strategy}", "leep.enabled=false") == 0
    return tmp_path / "runs"


@pytest.mark.parametrize("damage", ["", '{"test": {"top1"', "[]", "{}", '{"test": {}}', '{"test": {"top1": "x"}}'])
def test_report_and_runs_leave_out_a_damaged_result_with_one_line(runs_folder, capsys, damage):
    (good,) = runs_folder.rglob("vanilla/full/seed0")
    bad = good.parent / "seed1"
    shutil.copytree(good, bad)
    (bad / "result.json").write_text(damage)
    capsys.readouterr()
    assert run_cli("runs", str(runs_folder)) == 0
    out, err = capsys.readouterr()
    assert "vanilla_mixup" in out and "2 finished run(s)" in out  # the damaged copy is not one of them
    assert f"{bad / 'result.json'} is damaged or not a finished run's result" in err and len(err.splitlines()) == 1
    assert run_cli("report", str(runs_folder), "quality=false") == 0
    assert (runs_folder / "report" / "index.html").is_file()
    assert "vanilla_mixup" in (runs_folder / "report" / "runs.csv").read_text()


def test_a_folder_without_runs_is_one_line(tmp_path, capsys):
    from tests.data.sets import fake_set

    gen = fake_set(tmp_path / "gen", ["a", "b"], 2, set())  # a generated set: plan.json without jobs
    for command in ("report", "runs"):
        assert run_cli(command, str(gen)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no finished runs (no result.json under" in err, err


def test_the_report_explains_its_strategies_and_the_few_seeds(runs_folder):
    assert run_cli("report", str(runs_folder), "quality=false") == 0
    html = (runs_folder / "report" / "index.html").read_text()
    glossary = (runs_folder / "report" / "tables" / "glossary.csv").read_text()
    assert "vanilla_mixup" in glossary and "real" in glossary  # each strategy of the study, with its stages
    assert "With 1 seed(s) per cell a paired t-test has 0 degree(s) of freedom" in html


def test_the_report_names_an_own_dataset_by_its_folder(runs_folder):
    assert run_cli("report", str(runs_folder), "quality=false") == 0
    runs_csv = (runs_folder / "report" / "runs.csv").read_text()
    assert "folder:real" in runs_csv and ",folder," not in runs_csv  # data.root=.../real
