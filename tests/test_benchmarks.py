"""The benchmark scripts still fit the package: every synthtl name they import or reach through a module exists.

Running them takes minutes (they are not part of the suite); a renamed function would otherwise surface only on the
GPU machine, where device time is scarce.
"""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def synthtl_references(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(module, attribute, line) for `from synthtl.m import a`, and `alias.a` where alias is a synthtl module."""
    modules: dict[str, str] = {}  # local name -> synthtl module
    refs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "synthtl":
            for a in node.names:
                refs.append((node.module, a.name, node.lineno))
                try:  # `from synthtl.generation import shards as s`: a module under a local name
                    importlib.import_module(f"{node.module}.{a.name}")
                    modules[a.asname or a.name] = f"{node.module}.{a.name}"
                except ImportError:
                    pass
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "synthtl" and a.asname:
                    modules[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            refs.append((modules[node.value.id], node.attr, node.lineno))
    return refs


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_reaches_only_existing_names(script):
    missing = []
    for module, attr, line in synthtl_references(ast.parse(script.read_text(), str(script))):
        if not hasattr(importlib.import_module(module), attr):
            missing.append(f"{script.name}:{line}: {module}.{attr}")
    assert not missing, "benchmark uses names the package no longer has: " + ", ".join(missing)


def test_the_check_catches_a_renamed_function():
    tree = ast.parse("from synthtl.generation import shards\nshards.build_rows()\n")
    refs = synthtl_references(tree)
    assert ("synthtl.generation.shards", "build_rows", 2) in refs
    assert not hasattr(importlib.import_module("synthtl.generation.shards"), "build_rows")
