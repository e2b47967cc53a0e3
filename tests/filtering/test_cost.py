"""A filter's cost in filter.json sums every scoring session (a killed one included), a finished re-run adds nothing,
and a filter.json from before cumulative cost (only "session") still reads and starts the sum."""

import json
import time

import pytest

from synthtl import filtering
from synthtl.config import FilterConfig, load_config
from synthtl.files import read_json, read_jsonl
from synthtl.filtering import run as filter_run
from synthtl.filtering import store
from synthtl.filtering.run import run_filter
from tests.filtering.conftest import PER_CLASS
from tests.filtering.tiny import generate

ROWS = 3 * PER_CLASS


def cfg(tiny_set, gen) -> FilterConfig:
    return load_config(FilterConfig, None, [f"set_dir={gen}", f"clip.model={tiny_set['clip']}", "keep.top_k=2",
                                            "batch_size=4", "workers=1", "progress=false", "device=cpu"])


def timed(run):
    t = time.perf_counter()
    try:
        return run()
    finally:
        timed.wall = time.perf_counter() - t


def test_a_killed_then_resumed_filter_costs_the_sum_of_its_sessions(tiny_set, gen, monkeypatch):
    real, busy, batches = filter_run.score_batch, [0.0], [0]

    def slow(scorer, images, rows, score):  # each batch takes >= 50 ms, so a session's seconds have a lower bound
        if batches[0] == 2:
            raise KeyboardInterrupt  # killed while scoring its third batch
        t = time.perf_counter()
        time.sleep(0.05)
        out = real(scorer, images, rows, score)
        busy[0] += time.perf_counter() - t
        batches[0] += 1
        return out

    monkeypatch.setattr(filter_run, "score_batch", slow)
    with pytest.raises(KeyboardInterrupt):
        timed(lambda: run_filter(cfg(tiny_set, gen)))
    first_wall, first_busy = timed.wall, busy[0]
    log = read_jsonl(gen / "filters" / "clip" / store.COST)
    assert [r["scored"] for r in log] == [4, 4] and len({r["session"] for r in log}) == 1
    first = sum(r["seconds"] for r in log)
    assert first_busy <= first <= first_wall  # the killed session counts up to its last logged batch

    batches[0], busy[0] = -10, 0.0  # the resumed session is not killed
    summary = timed(lambda: run_filter(cfg(tiny_set, gen)))
    second = summary["session"]["seconds"]
    assert busy[0] <= second <= timed.wall and summary["session"]["scored"] == ROWS - 8
    assert summary["cost"]["sessions"] == 2 and summary["cost"]["scored"] == ROWS
    assert summary["cost"]["seconds"] == pytest.approx(first + second, rel=1e-9)
    assert summary["cost"]["gpu_seconds"] == 0.0 == summary["session"]["gpu_seconds"]  # scored on the CPU


def test_a_finished_rerun_adds_nothing_and_an_extension_adds_its_session(tiny_set, gen):
    first = run_filter(cfg(tiny_set, gen))
    log = gen / "filters" / "clip" / store.COST
    before = log.read_bytes()
    assert run_filter(cfg(tiny_set, gen)) == first and log.read_bytes() == before
    assert first["cost"]["sessions"] == 1 and first["cost"]["scored"] == ROWS
    assert first["cost"]["seconds"] == pytest.approx(first["session"]["seconds"], rel=1e-9)
    generate(tiny_set["real"], gen, PER_CLASS + 1)  # 3 more images: a second session scores them
    second = run_filter(cfg(tiny_set, gen))
    assert second["session"]["scored"] == 3 and second["cost"]["sessions"] == 2 and second["cost"]["scored"] == 18
    assert second["cost"]["seconds"] == pytest.approx(first["cost"]["seconds"] + second["session"]["seconds"],
                                                      rel=1e-9)


def test_an_old_filter_json_without_cost_still_reads_and_starts_the_sum(tiny_set, gen):
    run_filter(cfg(tiny_set, gen))
    folder = gen / "filters" / "clip"
    old = read_json(folder / store.SUMMARY)
    del old["cost"], old["session"]["gpu_seconds"]
    old["session"]["seconds"], old["session"]["device"] = 12.5, "cuda:0"  # an old GPU session, as it was written
    (folder / store.SUMMARY).write_text(json.dumps(old))
    (folder / store.COST).unlink()  # old filters have no cost log
    assert filtering.read_filter(gen, "clip")["kept"] == 6 and len(filtering.kept(gen, "clip")) == 6
    assert store.filter_cost(old) == {"sessions": 1, "scored": ROWS, "seconds": 12.5, "gpu_seconds": 12.5}

    generate(tiny_set["real"], gen, PER_CLASS + 1)
    new = run_filter(cfg(tiny_set, gen))
    assert new["cost"]["sessions"] == 2 and new["cost"]["scored"] == ROWS + 3
    assert new["cost"]["seconds"] == pytest.approx(12.5 + new["session"]["seconds"], rel=1e-9)
    assert new["cost"]["gpu_seconds"] == pytest.approx(12.5)  # the old GPU session; the new one ran on the CPU
