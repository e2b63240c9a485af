"""pytest-benchmark suite of the CPU cases, for regression tracking:

    .venv/bin/python -m pytest bench/ --benchmark-only

Each case is benchmarked for every provider (torch.nn, the fastcells backends, the naive loop); compare
runs with pytest-benchmark's --benchmark-autosave / --benchmark-compare. The side-by-side report with
ratios is bench/compare_cpu.py (``make bench``).
"""

import pytest

import fastcells
from compare_cpu import CASES

PROVIDERS = ["torch.nn"] + fastcells.available_backends()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(benchmark, case, provider):
    run = case.runner(case.build(provider))
    benchmark.group = case.name
    with case.mode():
        benchmark(run)
