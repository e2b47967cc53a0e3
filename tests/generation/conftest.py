"""Fixtures and helpers shared by the generation tests."""

import pytest

from synthtl import faults
from synthtl.generation import run as gen_run
from synthtl.generation.run import run_generate


def generate_until_write(cfg, n: int) -> None:
    """Runs `synthtl generate` and "kills" it (KeyboardInterrupt) as it starts its n-th image write."""
    calls = []

    def kill(row):
        calls.append(row["id"])
        if len(calls) == n:
            raise KeyboardInterrupt

    with faults.inject("generate.write", kill), pytest.raises(KeyboardInterrupt):
        run_generate(cfg)


@pytest.fixture
def one_pipeline(monkeypatch):
    """Runs of one test share one loaded tiny pipeline (no style is loaded into it): faster resumes."""
    cache = {}
    real = gen_run.load_pipeline

    def load(gen, rt=None, **kwargs):
        key = (gen.model, gen.tiny_seed, gen.scheduler, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(gen, rt, **kwargs)
        return cache[key]

    monkeypatch.setattr(gen_run, "load_pipeline", load)
    return load
