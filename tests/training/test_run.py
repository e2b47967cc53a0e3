"""Run folders tell the truth and survive faults: stage records, effective settings, claims, refusals, locks."""

import json
from pathlib import Path

import pytest
import yaml

from synthtl.files import exclusive
from synthtl.training.checkpoint import ResumeRecord
from tests.conftest import run_cli
from tests.training.test_strategies import out_of, result, run_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def base(tiny_overrides, synthetic_folder, tiny_weights):
    return [*tiny_overrides, "model.pretrained=true", f"model.weights={tiny_weights}",
            f"synthetic.path={synthetic_folder}"]


def test_kill_between_stage_file_and_last_checkpoint_keeps_the_stage_record(base, tmp_path, monkeypatch):
    steps = ["synth_stage.epochs=2", "real_stage.epochs=1", "strategy=bridged"]
    whole = [*base, *steps, f"out_dir={tmp_path / 'whole'}"]
    assert run_cli("finetune", *whole) == 0
    killed = [*base, *steps, f"out_dir={tmp_path / 'killed'}"]
    real = ResumeRecord.save_progress

    def die_after_stage_file(self, state):
        if state.get("finished") and state["stage"] == "synthetic":  # stage-synthetic.pt is on disk, last.pt is not
            raise KeyboardInterrupt
        return real(self, state)

    monkeypatch.setattr(ResumeRecord, "save_progress", die_after_stage_file)
    assert run_cli("finetune", *killed) == 130
    folder = run_dir(out_of(killed), "bridged")
    assert (folder / "checkpoints" / "stage-synthetic.pt").is_file()
    monkeypatch.setattr(ResumeRecord, "save_progress", real)
    assert run_cli("finetune", *killed) == 0
    got, want = result(out_of(killed), "bridged"), result(out_of(whole), "bridged")
    assert got["total_steps"] == want["total_steps"] and list(got["stages"]) == ["synthetic", "real"]
    assert got["stages"]["synthetic"]["steps"] == want["stages"]["synthetic"]["steps"]
    # The compute-matched control paired with the resumed run takes the full count.
    assert run_cli("finetune", *base, *steps[:2], "strategy=vanilla_matched", f"matched.pair_run={folder}",
                   f"out_dir={tmp_path / 'killed'}") == 0
    assert result(out_of(killed), "vanilla_matched")["total_steps"] == want["total_steps"]


@pytest.mark.parametrize("strategy, stage, key", [("bridged++", "synthetic", "synth_stage"),
                                                  ("vanilla_mixup", "real", "real_stage")])
def test_run_folder_shows_the_settings_that_ran(base, strategy, stage, key):
    assert run_cli("finetune", *base, f"strategy={strategy}") == 0
    folder = run_dir(out_of(base), strategy)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved[key]["mixup"] is True
    res = result(out_of(base), strategy)
    assert res["stages"][stage]["settings"]["mixup"] is True
    assert res["stages"][stage]["settings"]["epochs"] == saved[key]["epochs"]
    assert run_cli("finetune", *base, f"strategy={strategy}") == 0  # the saved effective config is the same run


def test_refusal_names_the_keys_and_ignores_speed_and_paths(base, tmp_path, capsys):
    assert run_cli("finetune", *base) == 0
    capsys.readouterr()
    left = run_dir(out_of(base), "vanilla") / "checkpoints" / "last.pt"
    left.write_bytes(b"resume state a kill left after result.json")
    assert run_cli("finetune", *base, "data.num_workers=1", f"data.cache_dir={tmp_path / 'other_cache'}",
                   "device=cpu", "model.channels_last=false") == 0
    assert "already finished" in capsys.readouterr().out
    assert not left.exists()  # the finished run's leftover resume state is removed
    assert run_cli("finetune", *base, "real_stage.lr=0.5", "seed=0") == 2
    err = capsys.readouterr().err
    assert "real_stage.lr" in err and "0.5" in err and "num_workers" not in err


def test_a_run_that_fails_before_training_does_not_claim_its_folder(base, capsys):
    bad = [o for o in base if not o.startswith("model.weights=")] + ["model.weights=/nope/w.safetensors",
                                                                      "run_name=claimed"]
    assert run_cli("finetune", *bad) == 2
    assert "/nope/w.safetensors" in capsys.readouterr().err
    folder = Path(out_of(base).split("=", 1)[1]) / "claimed"
    assert not (folder / "config.yaml").exists()
    fixed = [o for o in bad if not o.startswith(("model.weights=", "model.pretrained="))] + ["model.pretrained=false"]
    assert run_cli("finetune", *fixed) == 0  # the fix the error suggests is accepted in the same folder


def test_weights_are_loaded_or_refused_with_the_real_cause(base, tmp_path, capsys):
    assert run_cli("finetune", *base, "model.pretrained=false") == 2
    assert "model.pretrained=false" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    swapped = [o for o in base if not o.startswith("model.weights=")] + [f"model.weights={junk}"]
    assert run_cli("finetune", *swapped) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and str(junk) in err and "hub" not in err
    folder = [o for o in base if not o.startswith("model.weights=")] + [f"model.weights={tmp_path}"]
    assert run_cli("finetune", *folder) == 2
    assert "is a folder: give the file in it" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [(["data.shots=100"], "warning: data.shots=100"),
                                          (["real_stage.warmup_epochs=3"], "warning: real stage: warmup")])
def test_silent_guesses_become_warnings(base, capsys, args, needle):
    assert run_cli("finetune", *base, *args) == 0
    assert needle in capsys.readouterr().out


def test_zero_epochs_is_refused(base, capsys):
    assert run_cli("finetune", *base, "real_stage.epochs=0") == 2
    assert "real_stage.epochs=0" in capsys.readouterr().err


def test_resume_removes_temp_leftovers_and_a_second_writer_is_refused(base, monkeypatch, capsys):
    real = ResumeRecord.save_progress

    def die(self, state):
        real(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResumeRecord, "save_progress", die)
    assert run_cli("finetune", *base, "real_stage.epochs=2") == 130
    monkeypatch.setattr(ResumeRecord, "save_progress", real)
    folder = run_dir(out_of(base), "vanilla")
    leftover = folder / "checkpoints" / ".last.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    with exclusive(folder, "run folder"):  # another process holds it
        assert run_cli("finetune", *base, "real_stage.epochs=2") == 2
        assert "being written by" in capsys.readouterr().err
    assert leftover.exists()
    assert run_cli("finetune", *base, "real_stage.epochs=2") == 0
    assert not leftover.exists() and json.loads((folder / "result.json").read_text())["resumed"] is True


def test_a_moved_half_finished_run_resumes_with_its_inputs_elsewhere(base, tmp_path, monkeypatch, capsys):
    import shutil

    real = ResumeRecord.save_progress

    def die(self, state):
        real(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResumeRecord, "save_progress", die)
    args = [*base, "real_stage.epochs=2", "run_name=moved"]
    assert run_cli("finetune", *args) == 130
    monkeypatch.setattr(ResumeRecord, "save_progress", real)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("elsewhere", ".synthtl.lock*"))
    relocated = [o.replace(str(tmp_path), str(moved)) for o in args]
    assert run_cli("finetune", *relocated) == 0
    assert json.loads((moved / "runs" / "moved" / "result.json").read_text())["resumed"] is True
    # Another set behind the same path is another run: refused, naming the input.
    other = moved / "synthetic" / "red_fox" / "img_000.jpg"
    other.write_bytes(other.read_bytes() + b"\0")
    (moved / "runs" / "moved" / "result.json").unlink()
    assert run_cli("finetune", *relocated) == 2
    assert "synthetic.path ('files:" in capsys.readouterr().err


def test_two_own_image_folders_never_share_a_run(base, tmp_path, capsys):
    """data.name=folder runs are named by the folder's content: another folder (3 classes -> 2) is another run."""
    from tests.conftest import make_folder

    assert run_cli("finetune", *base) == 0
    other = tmp_path / "other"
    make_folder(other / "train", 4, seed=5, classes=["red_fox", "blue_jay"])
    make_folder(other / "test", 2, seed=6, classes=["red_fox", "blue_jay"])
    args = [o for o in base if not o.startswith(("data.root=", "synthetic.path="))] + [f"data.root={other}"]
    assert run_cli("finetune", *args) == 0
    assert "already finished" not in capsys.readouterr().out
    runs = sorted(Path(out_of(base).split("=", 1)[1]).glob("folder-*/test_resnet/vanilla/full/seed0/result.json"))
    assert len(runs) == 2 and sorted(json.loads(r.read_text())["num_classes"] for r in runs) == [2, 3]


def test_tensorboard_without_its_package_is_one_line_before_any_work(base, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert run_cli("finetune", *base, "tensorboard=true") == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'synthtl[tensorboard]'" in err and len(err.splitlines()) == 1
    assert not list(Path(out_of(base).split("=", 1)[1]).rglob("metrics.jsonl"))  # nothing trained


def test_console_lines_name_the_run_and_each_epochs_validation(base, capsys):
    assert run_cli("finetune", *base, "strategy=bridged", "synthetic.per_class=4", "data.val_fraction=0.25") == 0
    out = capsys.readouterr().out
    assert "[synthtl] synthetic epoch 1/1: train loss " in out and "[synthtl] real epoch 1/1: train loss " in out
    assert "val top-1 " in out
    assert "[synthtl] bridged on folder (test_resnet, full, seed 0, synthetic synthetic x4): test top-1 " in out
