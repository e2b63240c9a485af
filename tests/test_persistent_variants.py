"""bench/persistent_variants.py, the GPU variant matrix: what runs without a GPU (its cases, statistics
and report), so the first GPU run does not lose its minutes to a mistake in them."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("persistent_variants", ROOT / "bench" / "persistent_variants.py")
variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(variants)


def test_cases_start_with_the_issue_targets():
    cases = variants.cases(quick=False)
    assert cases[0] == ("lstm", 16, 1024, 768, ("bfloat16", "float16"))
    assert ("lstm", 64, 100, 512, ("float32",)) in variants.cases(quick=True)
    assert len(cases) == 4 + 2 * 4 * 4  # targets, then LSTM and GRU over H x B


def test_median_and_interquartile_range():
    # statistics.quantiles' default (exclusive) method: quartiles 1.5 and 4.5
    assert variants.median_and_iqr([4.0, 1.0, 3.0, 2.0, 5.0]) == pytest.approx((3.0, 3.0))
    assert variants.median_and_iqr([2.0]) == (2.0, 0.0)


def test_report_names_every_provider_with_its_ratio(tmp_path):
    rows = [{"provider": "torch", "median_ms": 10.0, "iqr_ms": 0.1, "peak_bytes": 2**20},
            {"provider": "persistent 8 flags", "median_ms": 2.5, "iqr_ms": 0.05, "peak_bytes": 2**21,
             "max_rel_diff_vs_per_step": 1e-3}]
    results = [{"cell": "lstm", "B": 16, "T": 1024, "H": 768, "dtype": "bfloat16", "mode": "training",
                "rows": rows}]
    report = variants.markdown(results)
    assert "| persistent 8 flags | 2.500 | 0.050 | 4.00x | 2.0 | 1.0e-03 |" in report
    assert "| torch | 10.000 | 0.100 | 1.00x | 1.0 |  |" in report
    json.dumps(results)  # what main writes must be JSON
