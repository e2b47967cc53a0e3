"""The report's figures say what they show: distinct titles per setting, no legend entry without a bar."""

import math
from pathlib import Path

from synthtl.reporting.collect import Run
from synthtl.reporting.plots import convergence_figure, leep_figure
from synthtl.reporting.render import Table


def _run(strategy: str) -> Run:
    rows = [{"stage": "real", "epoch": e, "test_top1": 50.0 + e, "train_top1": 60.0 + e} for e in (1, 2)]
    return Run(strategy, Path("."), {"dataset": "pets", "strategy": strategy}, {"test": {"top1": 52.0}}, {}, rows)


def test_convergence_titles_name_the_setting():
    runs = [_run("vanilla"), _run("bridged++")]
    a = convergence_figure(runs, "pets", "resnet18, full, 500/class, guidance 2, dsi")
    b = convergence_figure(runs, "pets", "resnet18, full, 1000/class, guidance 2, dsi")
    assert a.axes[0].get_title() != b.axes[0].get_title() and "500/class" in a.axes[0].get_title()


def test_leep_legend_lists_only_the_bars_drawn():
    row = {"dataset": "pets", "setting": "s", "strategy": "vanilla", "leep_pretrained": -3.0,
           "leep_pretrained_std": 0.1, "leep_stage1": math.nan, "leep_stage1_std": math.nan}
    fig = leep_figure(Table("leep", "LEEP", [], [row]))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["pretrained"]
    assert all(t.get_fontsize() >= 8 for t in fig.axes[0].get_yticklabels())  # readable axis labels
