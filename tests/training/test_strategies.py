"""Every strategy end to end through `cli.main` on a tiny folder dataset with a tiny ResNet at 32 px."""

import json
from pathlib import Path

import pytest
import torch

from synthtl.training import stage as stage_mod
from synthtl.training import strategies as strategies_mod
from synthtl.training.checkpoint import ResumeRecord
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

STAGES = {"vanilla": ["real"], "vanilla_mixup": ["real"], "from_scratch": ["real"], "vanilla_matched": ["real"],
          "mixed": ["mixed"], "synthetic_only": ["synthetic"], "bridged": ["synthetic", "real"],
          "bridged_reinit": ["synthetic", "real"], "bridged++": ["synthetic", "real"]}
TIMING = {"images_per_s", "train_seconds", "stage_seconds"}


@pytest.fixture
def base(tiny_overrides, synthetic_folder, tiny_weights):
    return [*tiny_overrides, "model.pretrained=true", f"model.weights={tiny_weights}",
            f"synthetic.path={synthetic_folder}"]


def run_dir(out: str, strategy: str, seed: int = 0, shots: str = "full") -> Path:
    """The run folder: an own image folder is named by its content fingerprint ("folder-<8 hex>")."""
    (found,) = Path(out.split("=", 1)[1]).glob(f"folder-*/test_resnet/{strategy}/{shots}/seed{seed}")
    return found


def result(out_override: str, strategy: str, seed: int = 0) -> dict:
    return json.loads((run_dir(out_override, strategy, seed) / "result.json").read_text())


def metrics(out_override: str, strategy: str, seed: int = 0) -> list[dict]:
    rows = (run_dir(out_override, strategy, seed) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(r).items() if k not in TIMING} for r in rows]


def out_of(overrides: list[str]) -> str:
    """The effective out_dir override (the last one wins)."""
    return [o for o in overrides if o.startswith("out_dir=")][-1]


def test_strategy_registry_covers_the_method():
    from synthtl.strategies import TABLE
    from synthtl.training.strategies import STRATEGIES

    assert set(STRATEGIES.names()) == set(STAGES)
    assert {s.name: list(s.stages) for s in TABLE} == STAGES  # the declared stages are the ones that run


def test_a_declared_name_without_a_function_or_a_function_without_a_name_is_refused():
    from synthtl.registry import Registry

    vanilla = strategies_mod.FUNCTIONS.get("vanilla")

    def functions(names):
        out = Registry("training function of strategy")
        for name in names:
            out.add(name, vanilla)
        return out

    names = strategies_mod.FUNCTIONS.names()
    with pytest.raises(RuntimeError, match=r"without a training function: \['mixed'\]"):
        strategies_mod.bind(functions([n for n in names if n != "mixed"]))
    with pytest.raises(RuntimeError, match=r"without a declared strategy: \['mixed2'\]"):
        strategies_mod.bind(functions([*names, "mixed2"]))
    with pytest.raises(ValueError, match="'mixed' is already registered"):
        strategies_mod.FUNCTIONS.register("mixed")(vanilla)
    assert strategies_mod.STRATEGIES.get("bridged").needs_synthetic
    assert not strategies_mod.STRATEGIES.get("vanilla_matched").needs_synthetic  # reads a set only if one is given


@pytest.mark.parametrize("strategy", sorted(STAGES))
def test_every_strategy_end_to_end(base, strategy):
    assert run_cli("finetune", *base, f"strategy={strategy}") == 0
    out = out_of(base)
    res = result(out, strategy)
    folder = run_dir(out, strategy)
    assert list(res["stages"]) == STAGES[strategy]
    assert 0.0 <= res["test"]["top1"] <= 100.0 and "top5" in res["test"] and "mean_class_acc" in res["test"]
    assert res["images"]["train"] == 24 and res["images"]["test"] == 12 and res["seed"] == 0
    assert res["total_steps"] == sum(s["steps"] for s in res["stages"].values()) > 0
    assert res["git_sha"] and res["device"] == "cpu" and res["precision"] == "fp32"
    if strategy == "from_scratch":
        assert "pretrained" not in res["leep"]
    else:
        assert res["leep"]["pretrained"] < 0 and res["leep"]["pretrained_label_space"] == 1000
    assert ("stage1" in res["leep"]) == strategy.startswith("bridged")
    assert (folder / "config.yaml").is_file() and (folder / "splits" / "train.json").is_file()
    assert not (folder / "checkpoints" / "last.pt").exists()  # resumable state removed once finished
    rows = metrics(out, strategy)
    assert list(dict.fromkeys(r["stage"] for r in rows)) == STAGES[strategy]
    assert all("test_top1" in r and "train_loss" in r and "lr" in r for r in rows)


def _spy_stage_entry(monkeypatch):
    """Records the model's weights when each stage starts (before any resume logic)."""
    seen = {}
    real = strategies_mod.run_stage

    def spy(run, name, model, *a, **k):
        seen[name] = {k2: v.clone() for k2, v in model.state_dict().items()}
        return real(run, name, model, *a, **k)

    monkeypatch.setattr(strategies_mod, "run_stage", spy)
    return seen


@pytest.mark.parametrize("strategy, fresh_head", [("bridged", False), ("bridged_reinit", True), ("bridged++", True)])
def test_stage_two_starts_from_stage_one_weights(base, monkeypatch, strategy, fresh_head):
    seen = _spy_stage_entry(monkeypatch)
    assert run_cli("finetune", *base, f"strategy={strategy}") == 0
    stage1 = torch.load(run_dir(out_of(base), strategy) / "checkpoints" / "stage-synthetic.pt")["model"]
    start2 = seen["real"]
    head = {"fc.weight", "fc.bias"}
    assert all(torch.equal(stage1[k], start2[k]) for k in stage1 if k not in head)
    assert all(torch.equal(stage1[k], start2[k]) != fresh_head for k in head)
    # the run's files say so, with the seed (result.json's stage record, config.yaml's header)
    from synthtl.runtime import derive_seed

    res, config = result(out_of(base), strategy), (run_dir(out_of(base), strategy) / "config.yaml").read_text()
    seed = derive_seed(0, "reinit")
    assert res["stages"]["real"].get("head") == ({"reinitialised": True, "seed": seed} if fresh_head else None)
    assert "head" not in res["stages"]["synthetic"]
    assert (f"re-initialised before the real stage with seed {seed}" in config) == fresh_head
    assert config.startswith(f"# strategy {strategy}: ")


def test_mixup_only_in_stage_one_of_bridged_pp(base, monkeypatch):
    calls = []
    real = stage_mod.train_one_epoch

    def spy(model, loader, how, step):
        calls.append((how.desc.split()[0], how.mixup_fn is not None))
        return real(model, loader, how, step)

    monkeypatch.setattr(stage_mod, "train_one_epoch", spy)
    assert run_cli("finetune", *base, "strategy=bridged++") == 0
    assert calls == [("synthetic", True), ("real", False)]
    calls.clear()
    assert run_cli("finetune", *base, "strategy=vanilla_mixup") == 0
    assert calls == [("real", True)]


def test_vanilla_matched_takes_exactly_the_paired_steps(base):
    steps = ["synth_stage.epochs=3", "real_stage.epochs=2"]
    assert run_cli("finetune", *base, *steps, "strategy=bridged") == 0
    out = out_of(base)
    paired = result(out, "bridged")["total_steps"]
    pair_dir = run_dir(out, "bridged")
    assert run_cli("finetune", *base, *steps, "strategy=vanilla_matched", f"matched.pair_run={pair_dir}") == 0
    assert result(out, "vanilla_matched")["total_steps"] == paired
    assert result(out, "vanilla_matched")["total_steps"] > 2 * 3  # longer than plain vanilla (2 epochs x 3 steps)
    # Without a paired run the count is computed from the same config: identical.
    assert run_cli("finetune", *base, *steps, "strategy=vanilla_matched", "run_name=computed") == 0
    computed = json.loads((Path(out.split("=", 1)[1]) / "computed" / "result.json").read_text())
    assert computed["total_steps"] == paired


def test_same_seed_gives_identical_metrics(base, tmp_path):
    a = [*base, f"out_dir={tmp_path / 'a'}", "strategy=bridged++"]
    b = [*base, f"out_dir={tmp_path / 'b'}", "strategy=bridged++"]
    assert run_cli("finetune", *a) == 0 and run_cli("finetune", *b) == 0
    assert metrics(out_of(a), "bridged++") == metrics(out_of(b), "bridged++")
    ra, rb = result(out_of(a), "bridged++"), result(out_of(b), "bridged++")
    assert ra["test"] == rb["test"] and ra["leep"] == rb["leep"]
    c = [*base, f"out_dir={tmp_path / 'c'}", "strategy=bridged++", "seed=1"]
    assert run_cli("finetune", *c) == 0
    assert metrics(out_of(c), "bridged++", seed=1) != metrics(out_of(a), "bridged++")


def test_result_does_not_depend_on_the_number_of_loader_workers(base, tmp_path):
    a = [*base, f"out_dir={tmp_path / 'w0'}", "strategy=mixed", "data.num_workers=0"]
    b = [*base, f"out_dir={tmp_path / 'w2'}", "strategy=mixed", "data.num_workers=2"]
    assert run_cli("finetune", *a) == 0 and run_cli("finetune", *b) == 0
    ra, rb = result(out_of(a), "mixed"), result(out_of(b), "mixed")
    assert ra["test"] == rb["test"] and metrics(out_of(a), "mixed") == metrics(out_of(b), "mixed")


def test_killed_run_resumes_to_the_uninterrupted_result(base, tmp_path, monkeypatch):
    longer = ["synth_stage.epochs=2", "real_stage.epochs=3", "strategy=bridged++"]
    whole = [*base, *longer, f"out_dir={tmp_path / 'whole'}"]
    assert run_cli("finetune", *whole) == 0
    killed = [*base, *longer, f"out_dir={tmp_path / 'killed'}"]
    real = ResumeRecord.save_progress

    def die_after_real_epoch_one(self, state):
        real(self, state)
        if (state["stage"], state["epoch"]) == ("real", 0):
            raise KeyboardInterrupt  # as if the process were killed right after this checkpoint

    monkeypatch.setattr(ResumeRecord, "save_progress", die_after_real_epoch_one)
    assert run_cli("finetune", *killed) == 130
    monkeypatch.setattr(ResumeRecord, "save_progress", real)
    folder = run_dir(out_of(killed), "bridged++")
    assert (folder / "checkpoints" / "last.pt").is_file() and not (folder / "result.json").exists()
    assert run_cli("finetune", *killed) == 0
    assert result(out_of(killed), "bridged++")["resumed"] is True
    assert metrics(out_of(killed), "bridged++") == metrics(out_of(whole), "bridged++")
    assert result(out_of(killed), "bridged++")["test"] == result(out_of(whole), "bridged++")["test"]


def test_finished_run_is_a_noop_and_a_changed_config_is_refused(base, capsys):
    assert run_cli("finetune", *base) == 0
    res_file = run_dir(out_of(base), "vanilla") / "result.json"
    before = res_file.read_text()
    assert run_cli("finetune", *base, "progress=true") == 0  # a display-only change is the same run
    assert "already finished" in capsys.readouterr().out and res_file.read_text() == before
    assert run_cli("finetune", *base, "real_stage.lr=0.5") == 2
    assert "holds a fine-tuning run made with another config" in capsys.readouterr().err


def test_validation_selection_never_uses_test(base):
    assert run_cli("finetune", *base, "data.val_fraction=0.25", "select=val", "real_stage.epochs=2") == 0
    res = result(out_of(base), "vanilla")
    assert res["selected"].startswith("val:epoch") and res["val"]["top1"] >= 0
    assert res["images"] == {"train": 18, "test": 12, "val": 6, "synthetic": 6 * 3}
    folder = run_dir(out_of(base), "vanilla")
    train_ids = set(json.loads((folder / "splits" / "train.json").read_text())["ids"])
    val_ids = set(json.loads((folder / "splits" / "val.json").read_text())["ids"])
    assert len(train_ids) == 18 and len(val_ids) == 6 and not train_ids & val_ids


def test_fewshot_split_file_is_reproducible(base, tmp_path):
    assert run_cli("finetune", *base, "data.shots=2") == 0
    folder = run_dir(out_of(base), "vanilla", shots="2shot")
    split = json.loads((folder / "splits" / "train.json").read_text())
    assert split["count"] == 6 and split["shots"] == 2
    out = tmp_path / "s.json"
    assert run_cli("split", *base, "data.shots=2", "--out", str(out)) == 0
    assert json.loads(out.read_text())["ids"] == split["ids"]
    assert run_cli("finetune", *base, f"data.split_file={out}", "run_name=from_file") == 0


def test_mixed_fraction_and_device_decode(base):
    assert run_cli("finetune", *base, "strategy=mixed", "mixed.synthetic_fraction=0.5", "real_stage.batch_size=12") == 0
    res = result(out_of(base), "mixed")
    assert res["stages"]["mixed"]["steps"] == 4  # 24 real + 24 synthetic per epoch, batches of 12
    assert run_cli("finetune", *base, "data.decode=device", "run_name=device") == 0


def test_bad_images_are_named_or_skipped_and_counted(base, folder_data, capsys):
    bad = folder_data / "train" / "blue_jay" / "img_005.jpg"
    bad.write_bytes(bad.read_bytes()[:120])
    assert run_cli("finetune", *base) == 2
    assert "img_005.jpg" in capsys.readouterr().err
    assert run_cli("finetune", *base, "data.on_bad_image=skip", "run_name=skip") == 0
    res = json.loads((Path(out_of(base).split("=", 1)[1]) / "skip" / "result.json").read_text())
    assert res["skipped_images"]["train"] == 1 and res["images"]["train"] == 23
    assert res["skipped_files"]["train"] == ["blue_jay/img_005.jpg"]


def test_overlap_is_refused_unless_allowed(base, folder_data, capsys):
    src = folder_data / "train" / "red_fox" / "img_000.jpg"
    (folder_data / "test" / "red_fox" / "dup.jpg").write_bytes(src.read_bytes())
    assert run_cli("finetune", *base) == 2
    assert "allow_overlap" in capsys.readouterr().err
    assert run_cli("finetune", *base, "data.allow_overlap=true", "run_name=allowed") == 0
    res = json.loads((Path(out_of(base).split("=", 1)[1]) / "allowed" / "result.json").read_text())
    assert res["train_test_overlap"] == 1


@pytest.mark.parametrize("args, message", [
    (["strategy=bridged", "synthetic.path="], "synthetic.path"),
    (["strategy=bridgd"], "unknown strategy 'bridgd'"),
    (["model.name=resnet81"], "unknown model 'resnet81'"),
    (["data.name=aircraft", "data.root=/nonexistent"], "dataset 'aircraft' not found"),
    (["real_stage.epochz=1"], "real_stage.epochz"),
    (["data.root=/nonexistent"], "does not exist"),
])
def test_bad_input_gets_a_clear_error(base, capsys, args, message):
    assert run_cli("finetune", *base, *args) == 2
    assert message in capsys.readouterr().err


def test_class_mismatch_between_synthetic_and_real(base, synthetic_folder, capsys):
    (synthetic_folder / "purple_cow").mkdir()
    (synthetic_folder / "green_frog" / "img_000.jpg").rename(synthetic_folder / "purple_cow" / "img_000.jpg")
    assert run_cli("finetune", *base, "strategy=bridged") == 2
    assert "purple cow" in capsys.readouterr().err
