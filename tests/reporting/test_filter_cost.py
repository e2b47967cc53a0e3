"""The cost table's filter row counts every scoring session of each filter (filter.json "cost"), and still reads a
filter.json written before cumulative cost (only its last "session")."""

import pytest

from synthtl.reporting.tables import cost_table


def test_filter_cost_counts_every_session_and_reads_old_filter_json():
    resumed = {"session": {"scored": 5, "seconds": 10.0, "gpu_seconds": 10.0, "device": "cuda:0"},  # the last one
               "cost": {"sessions": 2, "scored": 15, "seconds": 30.0, "gpu_seconds": 24.0}}  # a CPU one before it
    old = {"session": {"scored": 9, "seconds": 6.0, "images_per_s": 1.5, "device": "cuda"}}  # before "cost"
    cpu_old = {"session": {"scored": 6, "seconds": 4.0, "images_per_s": 1.5, "device": "cpu"}}
    table = cost_table([], [], [], [resumed, old, cpu_old])
    (row,) = [r for r in table.raw if r["stage"].startswith("filtering")]
    assert row["stage"] == "filtering (all sessions)" and row["jobs"] == 3
    assert row["wall_hours"] == pytest.approx((30.0 + 6.0 + 4.0) / 3600)
    assert row["gpu_hours"] == pytest.approx((24.0 + 6.0) / 3600)  # an old session on CUDA: one GPU, all its seconds
    (shown,) = [r for r in table.rows if r[0] == row["stage"]]
    assert shown[-1] == f"{(15 + 9 + 6) / 40.0:.1f} images/s"
    assert not [r for r in cost_table([], [], [], []).raw if r["stage"].startswith("filtering")]
