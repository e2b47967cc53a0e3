"""The declared strategy table (`synthtl.strategies`) and the facts derived from it, without training anything."""

import subprocess
import sys

import pytest

from synthtl.config import FinetuneConfig, load_config
from synthtl.errors import ConfigError
from synthtl.experiments.grid import TRAIN_SIZES, Job
from synthtl.experiments.runner import DEFAULT_RATES, estimate_seconds
from synthtl.strategies import STAGES, STRATEGIES, TABLE, Strategy, effective_config, rank, takes_synthetic


def test_every_strategy_is_declared_once_with_known_stages_and_origin():
    names = [s.name for s in TABLE]
    assert len(names) == len(set(names)) == 9 and STRATEGIES.names() == sorted(names)
    assert all(s.stages and set(s.stages) <= set(STAGES) and s.origin in ("paper", "reviewers", "ours") for s in TABLE)
    assert {s.name for s in TABLE if s.origin == "paper"} == {"vanilla", "mixed", "bridged", "bridged++"}
    with pytest.raises(ValueError, match="stages .* must be some of"):
        Strategy("x", "a stage nobody runs", "ours", ("synthetic", "pretraining"))


def test_synthetic_images_are_derived_from_the_stages():
    got = {s.name: s.synthetic for s in TABLE}
    assert got == {"vanilla": "none", "vanilla_matched": "optional", "vanilla_mixup": "none", "from_scratch": "none",
                   "mixed": "required", "synthetic_only": "required", "bridged": "required",
                   "bridged_reinit": "required", "bridged++": "required"}
    # a study gives a generated set to every strategy that reads one, vanilla_matched included (to count steps)
    assert {s.name for s in TABLE if s.takes_synthetic} == {
        "mixed", "synthetic_only", "bridged", "bridged_reinit", "bridged++", "vanilla_matched"}
    assert not takes_synthetic("renamed_since") and takes_synthetic("bridged")


def test_the_table_order_is_the_report_order():
    assert [rank(s.name) for s in TABLE] == list(range(len(TABLE)))
    order = ["vanilla", "mixed", "bridged++", "unknown"]  # a name the table does not know goes last
    assert sorted(reversed(order), key=rank) == order


def test_lookup_fails_loudly_and_settings_are_applied():
    with pytest.raises(ConfigError, match="unknown strategy 'bridgd'. Did you mean bridged"):
        STRATEGIES.get("bridgd")
    cfg = load_config(FinetuneConfig, None, ["strategy=bridged++"])
    assert not cfg.synth_stage.mixup and effective_config(cfg).synth_stage.mixup
    mixup = effective_config(load_config(FinetuneConfig, None, ["strategy=vanilla_mixup"]))
    assert mixup.real_stage.mixup and not mixup.synth_stage.mixup
    assert effective_config(load_config(FinetuneConfig, None, ["strategy=bridged"])) == load_config(
        FinetuneConfig, None, ["strategy=bridged"])


@pytest.mark.parametrize("strategy, images", [
    ("vanilla", 3 * 898), ("vanilla_mixup", 3 * 898), ("from_scratch", 3 * 898),
    ("mixed", 3 * (898 + 50)), ("synthetic_only", 2 * 50), ("bridged", 2 * 50 + 3 * 898),
    ("bridged++", 2 * 50 + 3 * 898), ("bridged_reinit", 2 * 50 + 3 * 898),
    ("vanilla_matched", 2 * 50 + 3 * 898),  # as many steps as the bridged run it matches
])
def test_gpu_hours_follow_the_declared_stages(strategy, images):
    assert TRAIN_SIZES["digits"] == 898
    cfg = load_config(FinetuneConfig, None, [f"strategy={strategy}", "data.name=digits", "model.name=test_resnet",
                                             "synthetic.path=/some/set", "synthetic.per_class=5",
                                             "synth_stage.epochs=2", "real_stage.epochs=3"])
    assert estimate_seconds(Job("finetune", "x", cfg), {}) == pytest.approx(images * DEFAULT_RATES["finetune"])


def test_the_table_loads_no_torch():
    code = "import sys, synthtl.strategies; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
