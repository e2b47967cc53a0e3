"""`synthtl forecast`: the law fitted to known curves, the band's coverage, each refusal's one line, bad input, the CLI
on a fabricated study, the README's worked example and the pilot preset. No training: studies are fabricated."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from synthtl.forecast.curve import Cost, forecast_curve
from synthtl.forecast.fit import fit
from tests.conftest import run_cli
from tests.forecast.fabricate import EPOCHS, GEN_S, REAL, TRAIN_S, fabricate_study
from tests.forecast.simulate import CHECK, HE_TABLE8, compare_laws, coverage, worked_example

README = Path(__file__).resolve().parents[1] / "README.md"


def power(a: float, g: float, c: float, v0: float):
    return lambda v: a - g * (1 + np.asarray(v, float) / v0) ** -c


@pytest.mark.parametrize("a,g,c,v0", [(84.0, 4.0, 0.8, 600.0), (72.0, 2.0, 1.3, 250.0), (90.0, 6.0, 0.6, 1000.0)])
def test_the_fit_recovers_the_parameters_of_a_known_curve(a, g, c, v0):
    volumes = np.array([0, 125, 250, 500, 1000, 2000, 4000, 8000], float)
    noise = 0.01 * np.random.default_rng(1).standard_normal((len(volumes), 4))
    got = fit("power", volumes, (power(a, g, c, v0)(volumes)[:, None] + noise).mean(1), np.full(8, 4.0), 1e-4).params()
    assert got["a"] == pytest.approx(a, abs=0.2) and got["g"] == pytest.approx(g, abs=0.2)
    assert got["c"] == pytest.approx(c, rel=0.15) and got["v0"] == pytest.approx(v0, rel=0.15)
    exact = fit("power", volumes, power(a, g, c, v0)(volumes), np.full(8, 4.0), 1e-4).params()
    assert [exact[k] for k in ("a", "g", "c", "v0")] == pytest.approx([a, g, c, v0], rel=0.02)
    assert exact["b"] == pytest.approx(exact["g"] * exact["v0"] ** exact["c"])  # the textbook form a - b (V + V0)^-c


def test_the_95_percent_band_covers_the_true_curve_in_200_simulated_pilot_studies():
    cov = coverage(studies=200, n_boot=200)  # benchmarks/forecast_coverage.py measures it with 2000 refits
    assert set(cov) == set(CHECK) and min(cov.values()) >= 0.90, cov


def test_the_power_law_predicts_held_out_volumes_better_than_the_log_linear_law():
    """docs/method.md §10: why the power law (the benchmark measures 200 studies per family of true curves)."""
    rmse = compare_laws(studies=30, families=("power", "exponential"))
    for family in ("power", "exponential"):
        assert rmse[family]["power"] < rmse[family]["loglinear"], rmse


COST = Cost("GPU", gen_s_per_image=0.5, train_s_per_image=2e-3, classes=37, train_images=(REAL * 30, 37 * 10),
            vanilla_train_images=REAL * 30)


def curve_data(truth, volumes=(0, 250, 500, 1000), seeds=2, sd=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return list(volumes), [truth(v) + sd * rng.standard_normal(seeds) for v in volumes]


def refusals(rec: dict) -> list[str]:
    lines = [rec["refusal"], *[p["refusal"] for p in rec.get("predictions", [])]]
    return [x for x in [*lines, (rec.get("plateau") or {}).get("refusal")] if x]


@pytest.mark.parametrize("volumes,seeds,at,expect,next_volume", [
    ((0, 500), 2, [2000], "refused: fewer than 3 volumes (measured: 0/500; vanilla is volume 0 and counts)", 1000),
    ((250, 500, 1000), 2, [2000], "refused: fewer than 3 volumes (measured: 250/500/1000;", 2000),
    ((0, 250, 500, 1000), 1, [2000], "refused: fewer than 2 seeds at volume 0/250/500/1000", 1000),
    ((0, 250, 500, 1000), 2, [5000], "refused: 5000/class is beyond 3x the largest measured volume (1000)", 1700),
], ids=["two volumes", "no vanilla", "one seed", "beyond 3x"])
def test_each_refusal_is_one_line_with_the_next_pilot_volume(volumes, seeds, at, expect, next_volume):
    rec = forecast_curve(*curve_data(power(84, 4, 0.8, 600), volumes, seeds), at, COST)
    hit = next(line for line in refusals(rec) if line.startswith(expect))
    assert "\n" not in hit and hit.endswith(f"; next pilot volume: {next_volume}/class")
    if rec["refusal"] is None:  # a refused prediction gives no number
        p = rec["predictions"][0]
        assert p["top1"] is None and p["gain"] is None and p["next_volume"] == next_volume


def test_a_curve_that_rises_then_falls_is_refused_as_non_monotone():
    peaked = {0: 80.0, 250: 84.0, 500: 82.0, 1000: 79.0}.get
    rec = forecast_curve(*curve_data(peaked, sd=0.2), [2000], COST)
    assert rec["refusal"].startswith("refused: non-monotone: mean top-1 falls from 84.")
    assert "\n" not in rec["refusal"] and rec["next_volume"] == 360  # between the peak (250) and the fall (500)
    assert "predictions" not in rec


def test_an_interval_wider_than_the_effect_is_refused():
    rec = forecast_curve(*curve_data(lambda v: 80.0 + 0.0004 * v, sd=0.5), [2000], COST)  # +0.4 pt at 1000: noise
    assert rec["refusal"] is None
    p = rec["predictions"][0]
    assert p["refusal"].startswith("refused: the 95% interval of the gain at 2000/class (")
    assert re.search(r"\) is wider than the gain \(\+\d\.\d\d pt\); next pilot volume: 2000/class$", p["refusal"])


def test_a_forecast_answers_both_questions_and_prices_them():
    rec = forecast_curve(*curve_data(power(84, 4, 2.0, 200), sd=0.1), [2000, 3000], COST, tol=0.5)
    assert refusals(rec) == []  # the true plateau volume is 366/class: measured around
    p = rec["predictions"][0]
    assert p["top1_lo"] < p["top1"] < p["top1_hi"] and p["gain_lo"] < p["gain"] < p["gain_hi"]
    assert p["gen_hours"] == pytest.approx(2000 * 37 * 0.5 / 3600)  # measured rate x images to generate
    assert p["train_hours"] == pytest.approx((REAL * 30 + 37 * 10 * 2000) * 2e-3 / 3600)
    assert p["extra_hours"] == pytest.approx(p["gen_hours"] + p["train_hours"] - REAL * 30 * 2e-3 / 3600)
    best = rec["best_per_hour"]
    assert best["hours"] == pytest.approx(sum(COST.hours(best["volume"])[:2]))  # the whole run's hours
    assert 250 <= best["volume"] <= 3000 and best["per_hour"] == pytest.approx(best["gain"] / best["hours"])
    law = rec["law"]  # the plateau answer follows from the fitted law: g (1 + V/V0)^-c = tol at that volume
    v = law["v0"] * ((law["g"] / 0.5) ** (1 / law["c"]) - 1)
    assert rec["plateau"]["gain"] == law["g"] and v <= rec["plateau"]["volume"] < 1.01 * v + 10


def test_a_plateau_beyond_3x_is_refused():
    rec = forecast_curve(*curve_data(power(84, 4, 0.8, 600), sd=0.1), [2000], COST)  # true plateau volume: 7470
    assert rec["plateau"]["volume"] is None
    assert re.fullmatch(r"refused: the plateau volume \(\d+/class\) is beyond 3x the largest measured volume \(1000\); "
                        r"next pilot volume: \d+/class", rec["plateau"]["refusal"])


def test_a_curve_that_falls_has_no_volume_to_recommend():
    rec = forecast_curve(*curve_data(lambda v: 80 - 6 * (1 - (1 + v / 300) ** -1.0), sd=0.2), [2000], COST)
    assert rec["refusal"] is None and rec["plateau"]["gain"] < 0 and rec["plateau"]["volume"] is None
    assert rec["plateau"]["note"].startswith("synthetic images lower accuracy here")
    assert rec["best_per_hour"]["volume"] is None


@pytest.fixture
def study(tmp_path):
    return fabricate_study(tmp_path / "study", {"bridged++": power(84, 4, 0.8, 600),
                                                "mixed": lambda v: 80 - 6 * (1 - (1 + v / 300) ** -1.0)})


def test_cli_forecast_writes_json_and_figures_and_prints_a_table(study, capsys):
    assert run_cli("forecast", str(study), "at=[2000,3000,5000]", "bootstrap=300") == 0
    out = capsys.readouterr().out
    assert re.search(r"^pets resnet18 bridged\+\+ +2000 +8\d\.\d\d \[", out, re.M) and "test top-1 % [95%]" in out
    assert "refused: 5000/class is beyond 3x the largest measured volume (1000); next pilot volume: 1700/class" in out
    data = json.loads((study / "forecast" / "forecast.json").read_text())
    assert [r["label"] for r in data["records"]] == ["pets resnet18 mixed", "pets resnet18 bridged++"]
    rec = data["records"][1]
    assert [m["volume"] for m in rec["measured"]] == [0, 250, 500, 1000] and rec["unit"] == "GPU"
    # the cost is the study's own: generation per image from progress/, fine-tuning per image seen from result.json
    assert rec["cost"]["gen_s_per_image"] == pytest.approx(GEN_S)
    assert rec["cost"]["train_s_per_image"] == pytest.approx(TRAIN_S)
    assert rec["cost"]["train_images"][1] == pytest.approx(37 * EPOCHS["synthetic"])
    for r in data["records"]:
        assert (study / "forecast" / r["figure"]).read_bytes()[:4] == b"\x89PNG"
    first = (study / "forecast" / "forecast.json").read_bytes()
    assert run_cli("forecast", str(study), "at=[2000,3000,5000]", "bootstrap=300") == 0
    assert (study / "forecast" / "forecast.json").read_bytes() == first  # a fixed seed: the same forecast


def test_a_study_of_two_volumes_gets_its_refusal(tmp_path, capsys):
    root = fabricate_study(tmp_path / "s", {"bridged++": power(84, 4, 0.8, 600)}, volumes=(20,))
    assert run_cli("forecast", str(root), "bootstrap=100") == 0
    assert "refused: fewer than 3 volumes (measured: 0/20; vanilla is volume 0 and counts); next pilot volume: " \
           "40/class" in capsys.readouterr().out
    rec = json.loads((root / "forecast" / "forecast.json").read_text())["records"][0]
    assert rec["next_volume"] == 40 and rec["figure"] is None


def one_error_line(capsys, *argv) -> str:
    assert run_cli("forecast", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("synthtl forecast: error: "), err
    return err


def test_bad_input_is_one_line(tmp_path, study, capsys):
    (tmp_path / "empty").mkdir()
    assert "is not a study folder: it has no finished runs" in one_error_line(capsys, str(tmp_path / "empty"))
    assert "is not a folder" in one_error_line(capsys, str(tmp_path / "nowhere"))
    assert "unknown strategy 'bridged+++'. Did you mean bridged++" in one_error_line(
        capsys, str(study), "strategies=[bridged+++]")
    assert "vanilla_mixup trains on no synthetic images" in one_error_line(capsys, str(study),
                                                                           "strategies=[vanilla_mixup]")
    assert "has no bridged runs; it has mixed, bridged++" in one_error_line(capsys, str(study), "strategies=[bridged]")
    for summary in (study / "gen").glob("*/progress/cost-shard-*.jsonl"):
        summary.unlink()
    assert "missing cost record: " in one_error_line(capsys, str(study))
    vanilla_only = fabricate_study(tmp_path / "v", {"bridged++": power(84, 4, 0.8, 600)})
    for res in (vanilla_only / "runs").glob("*bridged*"):
        (res / "result.json").unlink()
    assert "has no volume grid" in one_error_line(capsys, str(vanilla_only))


def test_show_config_lists_the_forecast_keys(capsys):
    assert run_cli("forecast", "anywhere", "at=[1500]", "--show-config") == 0
    out = capsys.readouterr().out
    assert "at: [1500]  # " in out and "plateau_tol: 0.5  # " in out and "bootstrap: 2000  # " in out


def test_the_readme_worked_example():
    """README "Forecast": He et al.'s Table 8, the power law fitted on the baseline, 1.2M and 2.4M images."""
    got = worked_example()
    readme = README.read_text()
    assert " / ".join(f"{x:.2f}" for x in HE_TABLE8["without ImageNet-1k"]) + " without ImageNet" in readme
    assert " / ".join(f"{x:.2f}" for x in HE_TABLE8["from ImageNet-1k"]) + " from ImageNet-1k" in readme
    for name, r in got.items():
        line = (f"{name}: predicted {r['predicted']:.2f} % (95 % interval {r['lo']:.2f} to {r['hi']:.2f}), "
                f"published {r['published']:.2f} %: {r['error']:+.2f} pt")
        assert line in readme, line
        assert r["lo"] <= r["published"] <= r["hi"]


def test_the_pilot_preset_loads():
    from synthtl.config import StudyConfig, load_config

    cfg = load_config(StudyConfig, "studies/pilot", [])
    assert cfg.grid.volumes == [250, 500, 1000] and cfg.grid.seeds == [0, 1]
    assert cfg.grid.strategies == ["vanilla", "mixed", "bridged++"]
