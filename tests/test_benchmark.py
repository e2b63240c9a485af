"""The benchmark harness (python -m fastcells bench): cases, providers, measurement, reports.

Speed itself is not tested here (timed tests are flaky by nature); these tests check that the
harness measures what it says, reports every provider, and writes well-formed outputs.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import fastcells
from fastcells import cli
from fastcells.benchmark import cases as cases_mod
from fastcells.benchmark import providers, run, timing

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

TINY = ["bench", "--device", "cpu", "--cells", "rnn", "--groups", "step", "batch", "--quick",
        "--rounds", "1", "--budget", "0.001", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(TINY + ["--out", str(out)]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_bench_writes_every_output(tiny_run):
    out, _ = tiny_run
    for name in ("results.json", "results.csv", "report.md", "batch.png", "speedup.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("batch.png", "speedup.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_has_meta_and_one_row_per_case_and_provider(tiny_run):
    _, data = tiny_run
    meta, rows = data["meta"], data["results"]
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["fastcells"] == fastcells.__version__
    assert meta["device"] == "cpu" and meta["date"] and meta["rounds"] == 1
    expected = [case for case in cases_mod.make_cases("cpu", quick=True, cells=["rnn"])
                if case.group in ("step", "batch")]
    assert len({row["case"] for row in rows}) == len(expected)
    for case in expected:
        got = {row["provider"] for row in rows if row["case"] == case.name}
        assert got == set(providers.providers_for(case, "cpu"))
    for row in rows:
        assert row["time_s"] > 0 and len(row["rounds_s"]) == 1
        assert row["peak_bytes"] >= 0


def test_speedups_are_ratios_of_the_measured_times(tiny_run):
    _, data = tiny_run
    rows = data["results"]
    for row in rows:
        same_case = {r["provider"]: r["time_s"] for r in rows if r["case"] == row["case"]}
        assert row["x_vs_torch"] == pytest.approx(same_case["torch.nn"] / row["time_s"])
        assert row["x_vs_naive"] == pytest.approx(same_case["reference"] / row["time_s"])


def test_csv_and_markdown_agree_with_json(tiny_run):
    out, data = tiny_run
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(data["results"])
    assert table[0]["torch"] == torch.__version__
    assert float(table[0]["time_ms"]) == pytest.approx(data["results"][0]["time_s"] * 1e3)
    report = (out / "report.md").read_text()
    assert "## step" in report and "## batch" in report and "x torch.nn" in report
    assert data["meta"]["device_name"] in report


def test_quick_cases_cover_every_cell_and_group_except_long_ones():
    quick = cases_mod.make_cases("cpu", quick=True)
    assert {case.cell for case in quick} == set(cases_mod.CELLS)
    assert {case.group for case in quick} == {"step", "fastrnns", "hidden", "batch"}
    full = cases_mod.make_cases("cpu")
    assert {case.group for case in full} == {"step", "fastrnns", "flashrnn", "hidden", "batch"}
    flash = [c for c in full if c.group == "flashrnn"]
    assert all((c.batch, c.steps, c.hidden, c.input_size) == (16, 1024, 768, 768) for c in flash)
    assert [c.dtype for c in cases_mod.make_cases("cuda") if c.group == "flashrnn"].count("bfloat16") > 0


def test_runner_runs_forward_or_forward_and_backward():
    case = cases_mod.Case("batch", "lstm", "training", "float32", hidden=5, batch=2, steps=3,
                          input_size=4)
    module = providers.build_module(case, "cpu" if "cpu" in fastcells.available_backends() else
                                    "reference", "cpu")
    assert isinstance(module, fastcells.LSTM)
    run_once = providers.make_runner(case, "torch.nn", "cpu")
    run_once()  # forward + backward: must not raise


def test_a_failing_provider_is_reported_not_fatal(monkeypatch):
    real = providers.make_runner

    def broken(case, provider, device):
        if provider == "reference":
            raise RuntimeError("planted failure")
        return real(case, provider, device)

    monkeypatch.setattr(providers, "make_runner", broken)
    case = cases_mod.Case("step", "gru", "inference", "float32", hidden=8, batch=1, steps=0,
                          input_size=8)
    rows = run.run_cases([case], "cpu", rounds=1, budget_s=0.001, progress=False)
    failed = [row for row in rows if row["provider"] == "reference"]
    assert failed[0]["time_s"] is None and "planted failure" in failed[0]["error"]
    assert all(row["time_s"] > 0 for row in rows if row["provider"] != "reference")


def test_providers_option_keeps_only_the_named_providers(tmp_path):
    args = ["bench", "--device", "cpu", "--cells", "gru", "--groups", "step", "--quick", "--rounds", "1",
            "--budget", "0.001", "--no-progress", "--providers", "torch.nn", "reference",
            "--out", str(tmp_path)]
    assert cli.main(args) == 0
    with open(tmp_path / "results.json") as f:
        data = json.load(f)
    assert {row["provider"] for row in data["results"]} == {"torch.nn", "reference"}
    assert data["meta"]["providers"] == ["torch.nn", "reference"]


def test_git_revision_prefers_the_variable(monkeypatch):
    """A copy of the tree on a rented GPU machine may carry a stale .git: the variable wins."""
    from fastcells import environment

    monkeypatch.setenv("FASTCELLS_GIT_REVISION", "abc1234")
    assert environment.git_revision() == "abc1234"
    monkeypatch.delenv("FASTCELLS_GIT_REVISION")
    assert environment.git_revision() != "abc1234"


def test_cpu_peak_memory_sees_an_allocation():
    def run_once():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB while a is alive
        del a, b

    peak = timing.peak_bytes(run_once, "cpu")
    assert 6 * 2**20 <= peak < 7 * 2**20


def test_bench_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_script_refuses_a_machine_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: bench/gpu.sh would run for minutes")
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "gpu.sh")
    done = subprocess.run(["bash", script, str(tmp_path / "results")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2
    assert "sees no CUDA GPU" in done.stderr
    assert not (tmp_path / "results").exists()
