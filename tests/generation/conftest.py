"""Fixtures shared by the generation tests."""

import pytest

from synthtl.generation import run as gen_run


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
