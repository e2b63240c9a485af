"""pytest-benchmark suite of the benchmark cases, for regression tracking:

    .venv/bin/python -m pytest bench/ --benchmark-only            # the quick cases
    FASTCELLS_BENCH_FULL=1 .venv/bin/python -m pytest bench/ --benchmark-only

Same cases and providers as ``python -m fastcells bench`` (fastcells/benchmark/), on the CPU and, when
torch sees one, the GPU. Compare runs with pytest-benchmark's --benchmark-autosave and
--benchmark-compare. The side-by-side report with speedup ratios is ``python -m fastcells bench``.
"""

import os

import pytest
import torch

from fastcells.benchmark.cases import make_cases
from fastcells.benchmark.providers import make_runner, providers_for
from fastcells.benchmark.timing import mode_for

QUICK = not os.environ.get("FASTCELLS_BENCH_FULL")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PARAMS = [pytest.param(device, case, provider, id=f"{device}-{case.name}-{provider}")
          for device in DEVICES
          for case in make_cases(device, quick=QUICK)
          for provider in providers_for(case, device)]


@pytest.mark.parametrize("device, case, provider", PARAMS)
def test_case(benchmark, device, case, provider):
    run = make_runner(case, provider, device)
    benchmark.group = f"{device} {case.name}"
    with mode_for(case):
        if device == "cuda":
            def run_synced():
                run()
                torch.cuda.synchronize()
            benchmark(run_synced)
        else:
            benchmark(run)
