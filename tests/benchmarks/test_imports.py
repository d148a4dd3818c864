"""Every benchmark `make bench` runs imports against the current code (they run on demand only,
so a renamed function would otherwise surface at the next measurement)."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.run_all import BENCHMARKS


@pytest.mark.parametrize("name", [*BENCHMARKS, "gpu_profile"])
def test_benchmark_imports_and_has_a_main(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main)
