"""A filter's cost sums every scoring session (a killed one included) from its score log, where each row carries its
share, and a finished re-run adds nothing."""

import time

import pytest

from synthtl.config import FilterConfig, load_config
from synthtl.files import read_jsonl
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


def sessions(gen) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in read_jsonl(gen / "filters" / "clip" / store.SCORES):
        s = out.setdefault(r["session"], {"scored": 0, "seconds": 0.0})
        s["scored"] += 1
        s["seconds"] += r["seconds"]
    return out


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
    log = read_jsonl(gen / "filters" / "clip" / store.SCORES)
    assert len(log) == 8 and len({r["session"] for r in log}) == 1
    first = sum(r["seconds"] for r in log)
    assert first_busy <= first <= first_wall  # the killed session counts up to its last logged batch

    batches[0], busy[0] = -10, 0.0  # the resumed session is not killed
    timed(lambda: run_filter(cfg(tiny_set, gen)))
    second = [s for s in sessions(gen).values() if s["scored"] == ROWS - 8]
    assert len(second) == 1 and busy[0] <= second[0]["seconds"] <= timed.wall
    cost = store.read_cost(gen / "filters" / "clip")
    assert cost["sessions"] == 2 and cost["scored"] == ROWS and cost["gpu_seconds"] == 0.0  # scored on the CPU
    assert cost["seconds"] == pytest.approx(first + second[0]["seconds"], rel=1e-9)


def test_a_finished_rerun_adds_nothing_and_an_extension_adds_its_session(tiny_set, gen):
    first = run_filter(cfg(tiny_set, gen))
    log = gen / "filters" / "clip" / store.SCORES
    before = log.read_bytes()
    assert run_filter(cfg(tiny_set, gen)) == first and log.read_bytes() == before
    generate(tiny_set["real"], gen, PER_CLASS + 1)  # 3 more images: a second session scores them
    run_filter(cfg(tiny_set, gen))
    cost = store.read_cost(gen / "filters" / "clip")
    assert cost["sessions"] == 2 and cost["scored"] == ROWS + 3
    assert sorted(s["scored"] for s in sessions(gen).values()) == [3, ROWS]


def test_a_full_disk_loses_only_the_batch_in_flight_and_the_rerun_counts_every_image(tiny_set, gen, monkeypatch):
    from synthtl.files import DiskFullError, append_jsonl

    calls = [0]

    def full_on_third(path, rows, fsync=True):
        calls[0] += 1
        if calls[0] == 3:
            raise DiskFullError("no space left on the device (test)")
        append_jsonl(path, rows, fsync)

    monkeypatch.setattr(filter_run, "append_jsonl", full_on_third)
    with pytest.raises(DiskFullError):
        run_filter(cfg(tiny_set, gen))
    assert store.read_cost(gen / "filters" / "clip")["scored"] == 8  # the two batches on disk, with their cost
    monkeypatch.undo()
    run_filter(cfg(tiny_set, gen))
    cost = store.read_cost(gen / "filters" / "clip")
    assert cost["sessions"] == 2 and cost["scored"] == ROWS  # every image scored once, every scoring counted
