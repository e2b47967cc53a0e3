"""The cost table's filter row counts every scoring session of each filter (its cost log, `store.read_cost`)."""

import pytest

from synthtl.reporting.tables import cost_table


def test_filter_cost_counts_every_session():
    resumed = {"sessions": 2, "scored": 15, "seconds": 30.0, "gpu_seconds": 24.0}  # a killed CPU one, then a GPU one
    once = {"sessions": 1, "scored": 9, "seconds": 6.0, "gpu_seconds": 6.0}
    table = cost_table([], [], [], [resumed, once])
    (row,) = [r for r in table.raw if r["stage"].startswith("filtering")]
    assert row["stage"] == "filtering (all sessions)" and row["jobs"] == 2
    assert row["wall_hours"] == pytest.approx(36.0 / 3600) and row["gpu_hours"] == pytest.approx(30.0 / 3600)
    (shown,) = [r for r in table.rows if r[0] == row["stage"]]
    assert shown[-1] == f"{24 / 36.0:.1f} images/s"
    assert not [r for r in cost_table([], [], [], []).raw if r["stage"].startswith("filtering")]
