"""The benchmark harness (python -m fastcells bench): cases, providers, measurement, reports.

Speed itself is not tested here (timed tests are flaky by nature); these tests check that the harness
measures what it says (interleaved rounds, medians, inference mode, every provider on the same weights
and inputs), that every row records device, versions, dtype, shapes and git revision, that ratios are
torch.nn's time (or the naive loop's) over the provider's, and that the files hold what the report
claims. Most of them run on planted timings: torch.nn's own runner is never timed here (it proves
nothing about fastcells); only our providers run, on tiny shapes.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastcells
from fastcells import cli, environment
from fastcells.benchmark import cases as cases_mod
from fastcells.benchmark import providers, report, run, stability, timing

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

GIT = "feedbee"  # planted through FASTCELLS_GIT_REVISION: every row must carry it
# Planted seconds per call: torch.nn 3 ms, the naive loop 12 ms, each fused backend 1 ms.
FAKE_TIME = {providers.TORCH: 3e-3, providers.NAIVE: 12e-3}
FUSED_TIME = 1e-3
FAKE_PEAK = 3 * 2**20  # 3 MiB


def _fake_time(provider):
    return FAKE_TIME.get(provider, FUSED_TIME)


def _plant_timings(monkeypatch, failing=()):
    """No module is built or run and nothing is timed: every provider's runner does nothing and
    ``measure`` returns the planted times. Providers named in ``failing`` fail to build."""
    def make_runner(case, provider, device):
        if provider in failing:
            raise RuntimeError("planted failure")
        return lambda: None

    def measure(case, runners, device, rounds, budget_s, warmup=3, on_round=None):
        return {name: {"time_s": _fake_time(name), "rounds_s": [_fake_time(name)] * rounds,
                       "peak_bytes": FAKE_PEAK} for name in runners}

    monkeypatch.setattr(providers, "make_runner", make_runner)
    monkeypatch.setattr(run, "measure", measure)
    monkeypatch.setenv("FASTCELLS_GIT_REVISION", GIT)


CELLS, GROUPS = ["rnn"], ["step", "batch"]
TINY = ["bench", "--device", "cpu", "--cells", *CELLS, "--groups", *GROUPS, "--dtype", "float32", "--quick",
        "--rounds", "2", "--budget", "0.001", "--no-progress"]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """``python -m fastcells bench`` end to end (arguments, cases, meta, rows, files) on planted
    timings."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _plant_timings(monkeypatch)
        assert cli.main(TINY + ["--out", str(out)]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def _expected_cases():
    return [case for case in cases_mod.make_cases("cpu", quick=True, cells=CELLS, dtypes=["float32"])
            if case.group in GROUPS]


def _report_tables(text):
    """{section title: [{column: cell}]} for every Markdown table of the report."""
    tables, section, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:], None
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None:
                header = cells
                tables[section] = []
            else:
                tables[section].append(dict(zip(header, cells, strict=True)))
    return tables


def test_json_meta_records_device_versions_git_and_the_run(planted_run):
    _, data = planted_run
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["device_name"] == environment.device_name("cpu")
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["fastcells"] == fastcells.__version__
    assert meta["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["git"] == GIT
    assert meta["rounds"] == 2 and meta["budget_s"] == 0.001 and meta["quick"] is True
    assert meta["threads"] == torch.get_num_threads() and meta["date"][:2] == "20"


def test_a_run_under_instruction_set_caps_records_and_reports_them(monkeypatch, tmp_path):
    """A report measured with the instruction sets capped below the CPU's (an AVX-512 machine measuring
    as an AVX2 one) says so in its JSON and under its title; one without caps says nothing of them."""
    _plant_timings(monkeypatch)
    for name in environment.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(TINY + ["--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["meta"]["isa_settings"] == {}
    assert "capped" not in (tmp_path / "plain" / "report.md").read_text()

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert cli.main(TINY + ["--out", str(tmp_path / "capped")]) == 0
    meta = json.loads((tmp_path / "capped" / "results.json").read_text())["meta"]
    assert meta["isa_settings"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    lines = (tmp_path / "capped" / "report.md").read_text().splitlines()
    assert lines[4] == ("Instruction sets capped for this run by environment variables: ONEDNN_MAX_CPU_ISA=AVX2, "
                        "MKL_ENABLE_INSTRUCTIONS=AVX2 (the title names what fastcells' kernels and torch's ran).")


def test_cpu_name_says_which_instruction_sets_fastcells_and_torch_run():
    name = environment.device_name("cpu")
    assert f"{torch.get_num_threads()} threads" in name
    assert f"torch {torch.backends.cpu.get_cpu_capability()})" in name
    if environment.cpu_kernels_isa():
        assert f"{environment.cpu_kernels_isa()}" in name


def test_json_has_one_row_per_case_and_provider_with_its_dtype_and_shapes(planted_run):
    _, data = planted_run
    rows = data["results"]
    expected = _expected_cases()
    assert len(expected) == 2 + 2 * 2  # step: 2 hidden sizes; batch: 2 modes x 2 batch sizes
    assert [row["case"] for row in rows] == [case.name for case in expected
                                            for _ in providers.providers_for(case, "cpu")]
    for case in expected:
        case_rows = [row for row in rows if row["case"] == case.name]
        assert [row["provider"] for row in case_rows] == providers.providers_for(case, "cpu")
        for row in case_rows:
            assert {key: row[key] for key in case.as_dict()} == case.as_dict()
            assert row["time_s"] == _fake_time(row["provider"])
            assert row["rounds_s"] == [_fake_time(row["provider"])] * 2
            assert row["peak_bytes"] == FAKE_PEAK


def test_speedups_are_torch_time_over_ours(planted_run):
    _, data = planted_run
    for row in data["results"]:
        mine = _fake_time(row["provider"])
        assert row["x_vs_torch"] == pytest.approx(3e-3 / mine)  # > 1: faster than torch.nn
        assert row["x_vs_naive"] == pytest.approx(12e-3 / mine)
    fused = [row for row in data["results"] if row["provider"] not in (providers.TORCH, providers.NAIVE)]
    assert all(row["x_vs_torch"] == pytest.approx(3.0) for row in fused)


def test_speedups_of_a_failed_provider_or_a_missing_baseline_are_none():
    rows = [{"case": "a", "provider": providers.TORCH, "time_s": 2.0},
            {"case": "a", "provider": "cpu", "time_s": 0.5},
            {"case": "a", "provider": providers.NAIVE, "time_s": None},
            {"case": "b", "provider": "cpu", "time_s": 4.0}]
    run.speedups(rows)
    assert [row["x_vs_torch"] for row in rows] == [1.0, 4.0, None, None]
    assert [row["x_vs_naive"] for row in rows] == [None, None, None, None]


def test_every_csv_row_records_device_versions_git_dtype_and_shapes(planted_run):
    out, data = planted_run
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(data["results"])
    versions = data["meta"]["versions"]
    for line, row in zip(table, data["results"]):
        assert line["device_name"] == environment.device_name("cpu")
        assert line["date"] == data["meta"]["date"] and line["git"] == GIT
        assert line["torch"] == torch.__version__ and line["fastcells"] == fastcells.__version__
        assert line["triton"] == (versions["triton"] or "")
        for key in ("group", "cell", "mode", "dtype", "provider"):
            assert line[key] == row[key], key
        for key in ("steps", "batch", "input_size", "hidden"):
            assert int(line[key]) == row[key], key
        assert float(line["time_ms"]) == pytest.approx(_fake_time(row["provider"]) * 1e3)
        assert float(line["peak_mib"]) == pytest.approx(3.0)
        assert float(line["x_vs_torch"]) == pytest.approx(3e-3 / _fake_time(row["provider"]))
        assert float(line["x_vs_naive"]) == pytest.approx(12e-3 / _fake_time(row["provider"]))


def test_markdown_report_says_how_and_holds_every_time_and_ratio(planted_run):
    out, data = planted_run
    text = (out / "report.md").read_text()
    meta = data["meta"]
    assert text.startswith(f"# fastcells benchmark: {meta['device_name']}\n")
    assert f"fastcells {fastcells.__version__} (git {GIT})" in text
    assert f"torch {torch.__version__}" in text and "Medians of 2 interleaved rounds" in text
    tables = _report_tables(text)
    assert list(tables) == ["step", "batch", "Peak memory of one call", "Spread of the rounds"]
    assert "0 of " in text and "rows are marked unstable" in text  # planted rounds do not spread
    names = providers.providers_for(_expected_cases()[0], "cpu")
    fused = [p for p in names if p not in (providers.TORCH, providers.NAIVE)]
    for group in GROUPS:
        cases = [case for case in _expected_cases() if case.group == group]
        assert len(tables[group]) == len(cases)
        for line, case in zip(tables[group], cases):
            kind = "RNNCell" if case.steps == 0 else f"RNN T={case.steps}"
            assert line["case"] == f"{kind} B={case.batch} H={case.hidden} {case.mode} float32"
            assert line[providers.TORCH] == "3.00 ms" and line[providers.NAIVE] == "12.00 ms"
            assert line[f"x torch.nn ({providers.NAIVE})"] == "0.25x"
            for name in fused:
                assert line[name] == "1.00 ms"
                assert line[f"x torch.nn ({name})"] == "3.00x"
                assert line[f"x naive ({name})"] == "12.00x"
    memory = tables["Peak memory of one call"]
    assert len(memory) == len(_expected_cases())
    assert all(line[name] == "3.00 MiB" for line in memory for name in names)
    assert all(line[name] == "0%" for line in tables["Spread of the rounds"] for name in names)
    assert "could not run" not in text


def test_plots_are_the_pngs_of_the_groups_that_ran(planted_run):
    out, data = planted_run
    fused = {row["provider"] for row in data["results"]} - {providers.TORCH, providers.NAIVE}
    plots = {"batch.png"} | ({"speedup.png"} if fused else set())  # no "hidden" rows: no hidden.png
    assert {path.name for path in out.iterdir()} == {"results.json", "results.csv", "report.md"} | plots
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_write_all_returns_the_files_it_wrote(tmp_path):
    case = cases_mod.Case("hidden", "gru", "training", "float32", hidden=8, batch=2, steps=3,
                          input_size=4)
    rows = run.speedups([{"case": case.name, **case.as_dict(), "provider": name, "time_s": time_s,
                          "rounds_s": [time_s], "peak_bytes": 100}
                         for name, time_s in ((providers.TORCH, 2e-3), ("cpu", 1e-3),
                                              (providers.NAIVE, 4e-3))])
    meta = {"device": "cpu", "device_name": "a CPU", "versions": environment.versions(), "git": GIT,
            "date": "2025-01-02T03:04:05+00:00", "quick": False, "rounds": 1, "budget_s": 0.1,
            "threads": 1, "providers": "all usable"}
    paths = report.write_all(str(tmp_path / "out"), meta, rows)
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["results.json", "results.csv", "report.md", "hidden.png", "speedup.png"])
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)
    with open(tmp_path / "out" / "results.json") as f:
        assert json.load(f) == {"meta": meta, "results": rows}
    tables = _report_tables((tmp_path / "out" / "report.md").read_text())
    assert tables["hidden"] == [{"case": "GRU T=3 B=2 H=8 training float32", providers.TORCH: "2.00 ms",
                                 "cpu": "1.00 ms", providers.NAIVE: "4.00 ms",
                                 "x torch.nn (cpu)": "2.00x", f"x torch.nn ({providers.NAIVE})": "0.50x",
                                 "x naive (cpu)": "4.00x"}]


@pytest.mark.parametrize("cell", cases_mod.CELLS)
def test_generate_cases_call_a_stacked_model_with_its_state(cell):
    """A generation loop's call: x (1, 1, I) into a 2-layer model with the state (L, B, H) it returned,
    the same state for every provider, and the report's label says how many layers."""
    case = cases_mod.Case("generate", cell, "inference", "float32", hidden=8, batch=1, steps=1, input_size=8,
                          layers=2)
    x, hx = providers.make_inputs(case, "cpu")
    states = hx if isinstance(hx, tuple) else (hx,)
    assert x.shape == (1, 1, 8) and all(h.shape == (2, 1, 8) for h in states)
    assert len(states) == (2 if cell == "lstm" else 1)
    module = providers.build_torch_module(case, "cpu")
    assert module.num_layers == 2
    expected = module(x, hx)[0]
    assert torch.equal(providers.make_inputs(case, "cpu")[0], x)
    for provider in providers.providers_for(case, "cpu")[1:]:
        got = providers.build_module(case, provider, "cpu")(x, hx)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert "L=2" in case.name
    row = {**case.as_dict(), "provider": providers.TORCH}
    assert report._case_label(row) == f"{cell.upper()} T=1 L=2 B=1 H=8 inference float32"


def test_a_failing_provider_is_reported_not_fatal(monkeypatch, tmp_path):
    _plant_timings(monkeypatch, failing={providers.NAIVE})
    case = cases_mod.Case("step", "gru", "inference", "float32", hidden=8, batch=1, steps=0,
                          input_size=8)
    rows = run.run_cases([case], "cpu", rounds=1, budget_s=0.001, progress=False)
    failed = [row for row in rows if row["provider"] == providers.NAIVE]
    assert failed[0]["time_s"] is None and failed[0]["error"] == "RuntimeError: planted failure"
    assert failed[0]["rounds_s"] == [] and failed[0]["peak_bytes"] is None
    assert all(row["time_s"] == _fake_time(row["provider"]) for row in rows if row is not failed[0])
    assert all(row["x_vs_naive"] is None for row in rows)
    text = report.markdown({"device_name": "x", "date": "d", "git": GIT, "versions": environment.versions(),
                            "rounds": 1, "budget_s": 0.001, "quick": True}, rows)
    assert f"- {providers.NAIVE} on {case.name}: RuntimeError: planted failure" in text
    assert _report_tables(text)["step"][0][providers.NAIVE] == "failed"


def test_providers_option_keeps_only_the_named_providers(monkeypatch, tmp_path):
    _plant_timings(monkeypatch)
    args = ["bench", "--device", "cpu", "--cells", "gru", "--groups", "step", "--quick", "--rounds", "1",
            "--no-progress", "--providers", providers.TORCH, providers.NAIVE, "--out", str(tmp_path)]
    assert cli.main(args) == 0
    with open(tmp_path / "results.json") as f:
        data = json.load(f)
    # 2 hidden sizes x 2 dtypes (the default: float32 and bfloat16)
    assert [row["dtype"] for row in data["results"]][::2] == ["float32"] * 2 + ["bfloat16"] * 2
    assert [row["provider"] for row in data["results"]] == [providers.TORCH, providers.NAIVE] * 4
    assert data["meta"]["providers"] == [providers.TORCH, providers.NAIVE]


def test_measure_interleaves_rounds_in_the_cases_autograd_mode():
    """Warm-ups, one peak-memory call each, then round r times provider a, b, ... before round r + 1."""
    calls = []

    def runner(name):
        return lambda: calls.append((name, torch.is_inference_mode_enabled()))

    for mode in cases_mod.MODES:
        calls.clear()
        case = cases_mod.Case("batch", "gru", mode, "float32", hidden=4, batch=1, steps=2, input_size=4)
        result = timing.measure(case, {"a": runner("a"), "b": runner("b")}, "cpu", rounds=3, budget_s=0.0,
                                warmup=2)
        assert all(inference == (mode == "inference") for _, inference in calls)
        # a zero budget: each round times one calibration call and one measured call
        assert [name for name, _ in calls] == ["a"] * 2 + ["b"] * 2 + ["a", "b"] + ["a", "a", "b", "b"] * 3
        for name in "ab":
            assert len(result[name]["rounds_s"]) == 3 and result[name]["peak_bytes"] >= 0
            assert result[name]["time_s"] > 0


def test_measure_reports_the_median_round(monkeypatch):
    planted = {"a": iter([5.0, 1.0, 3.0]), "b": iter([2.0, 9.0, 4.0])}
    runners = {"a": lambda: None, "b": lambda: None}
    monkeypatch.setattr(timing, "time_round", lambda run_once, device, budget_s: next(
        planted[next(name for name, r in runners.items() if r is run_once)]))
    case = cases_mod.Case("step", "rnn", "inference", "float32", hidden=4, batch=1, steps=0, input_size=4)
    result = timing.measure(case, runners, "cpu", rounds=3, budget_s=0.0, warmup=0)
    assert result["a"]["rounds_s"] == [5.0, 1.0, 3.0] and result["a"]["time_s"] == 3.0
    assert result["b"]["time_s"] == 4.0


def _fused_names(case):
    return [name for name in providers.providers_for(case, "cpu") if name != providers.TORCH]


@pytest.mark.parametrize("mode", cases_mod.MODES)
def test_every_provider_runs_the_case_on_the_same_weights_and_inputs(mode, monkeypatch):
    case = cases_mod.Case("batch", "lstm", mode, "float32", hidden=5, batch=2, steps=3, input_size=4)
    reference = providers.build_torch_module(case, "cpu")
    assert type(reference) is nn.LSTM and reference.weight_ih_l0.shape == (4 * 5, 4)
    assert type(providers.build_module(case, providers.TORCH, "cpu")) is nn.LSTM
    x, hx = providers.make_inputs(case, "cpu")
    assert x.shape == (3, 2, 4) and hx is None and x.requires_grad == (mode == "training")
    assert torch.equal(x, providers.make_inputs(case, "cpu")[0])
    built, real_build = {}, providers.build_module
    monkeypatch.setattr(providers, "build_module",
                        lambda c, name, device: built.setdefault(name, real_build(c, name, device)))
    for name in _fused_names(case):  # torch.nn's runner is not run: it proves nothing about fastcells
        run_once = providers.make_runner(case, name, "cpu")
        module = built[name]
        assert isinstance(module, fastcells.LSTM) and module.backend == name
        for key, value in reference.state_dict().items():
            assert torch.equal(module.state_dict()[key], value), (name, key)
        with timing.mode_for(case):
            run_once()
        grads = [p.grad for p in module.parameters()]
        if mode == "training":  # forward and backward
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads) and module.training is False, name


def test_cell_step_cases_get_a_random_state():
    case = cases_mod.Case("step", "lstm", "inference", "float64", hidden=6, batch=1, steps=0, input_size=3)
    x, (h, c) = providers.make_inputs(case, "cpu")
    assert x.shape == (1, 3) and h.shape == c.shape == (1, 6)
    assert x.dtype == h.dtype == torch.float64 and h.abs().sum() > 0
    assert type(providers.build_module(case, providers.NAIVE, "cpu")) is fastcells.LSTMCell
    case = cases_mod.Case("step", "gru", "inference", "float32", hidden=6, batch=1, steps=0, input_size=3)
    assert providers.make_inputs(case, "cpu")[1].shape == (1, 6)


def test_real_measurement_of_our_providers_on_a_tiny_case():
    case = cases_mod.Case("batch", "gru", "training", "float32", hidden=4, batch=2, steps=2, input_size=3)
    names = _fused_names(case)
    rows = run.run_cases([case], "cpu", rounds=2, budget_s=1e-4, progress=False, only=names)
    assert [row["provider"] for row in rows] == names
    times = {row["provider"]: row["time_s"] for row in rows}
    for row in rows:
        assert row["time_s"] > 0 and len(row["rounds_s"]) == 2 and row["peak_bytes"] > 0
        assert row["x_vs_torch"] is None  # torch.nn was not measured
        assert row["x_vs_naive"] == pytest.approx(times[providers.NAIVE] / row["time_s"])


def test_quick_cases_cover_every_cell_and_group_except_long_ones():
    quick = cases_mod.make_cases("cpu", quick=True)
    assert {case.cell for case in quick} == set(cases_mod.CELLS)
    assert {case.group for case in quick} == {"step", "generate", "fastrnns", "hidden", "batch"}
    full = cases_mod.make_cases("cpu")
    assert {case.group for case in full} == {"step", "generate", "fastrnns", "flashrnn", "hidden", "batch"}
    flash = [c for c in full if c.group == "flashrnn"]
    assert all((c.batch, c.steps, c.hidden, c.input_size) == (16, 1024, 768, 768) for c in flash)
    fastrnns = [c for c in full if c.group == "fastrnns"]
    assert all((c.batch, c.steps, c.hidden, c.input_size) == (64, 100, 512, 512) for c in fastrnns)
    assert all(c.batch == 1 and c.steps == 0 for c in full if c.group == "step")
    generate = [c for c in full if c.group == "generate"]
    assert all((c.steps, c.batch, c.hidden, c.layers, c.mode) == (1, 1, 200, 2, "inference") for c in generate)
    assert [c.dtype for c in cases_mod.make_cases("cuda") if c.group == "flashrnn"].count("bfloat16") > 0


def test_git_revision_prefers_the_variable(monkeypatch):
    """A copy of the tree on a rented GPU machine may carry a stale .git: the variable wins."""
    monkeypatch.setenv("FASTCELLS_GIT_REVISION", "abc1234")
    assert environment.git_revision() == "abc1234"
    monkeypatch.delenv("FASTCELLS_GIT_REVISION")
    here = os.path.dirname(os.path.abspath(environment.__file__))
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    got = environment.git_revision()
    if done.returncode != 0:  # a copy of the tree without .git
        assert got is None
    else:
        assert got in (done.stdout.strip(), done.stdout.strip() + "+dirty")


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


# ------------------------------------------------------------------------------------------------
# Stability: spreads, unstable rows, the machine's load


def test_spread_and_ratio_range_come_from_the_quartiles():
    assert stability.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert stability.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert stability.spread([2.0]) == 0.0
    low, high = stability.ratio_range([2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.0, 1.0, 2.0, 2.0])
    assert (low, high) == (pytest.approx(3.0 / 2.0), pytest.approx(5.0 / 1.0))


def _rows(torch_rounds, fused_rounds):
    rows = [{"case": "c", "provider": providers.TORCH, "rounds_s": torch_rounds},
            {"case": "c", "provider": "cpu", "rounds_s": fused_rounds},
            {"case": "c", "provider": "broken", "rounds_s": []}]
    for row in rows:
        row["time_s"] = sorted(row["rounds_s"])[len(row["rounds_s"]) // 2] if row["rounds_s"] else None
    return run.speedups(rows)


def test_rows_whose_rounds_spread_too_much_are_unstable():
    steady = _rows([3.0, 3.1, 2.9], [1.0, 1.02, 0.98])
    assert stability.mark(steady, providers.TORCH) == 0
    assert [row["unstable"] for row in steady] == [False, False, False]
    assert steady[1]["x_vs_torch_range"] == [pytest.approx(2.95 / 1.01), pytest.approx(3.05 / 0.99)]
    assert steady[2]["spread"] is None and steady[2]["x_vs_torch_range"] is None

    # A scheduling hiccup in two of five rounds of the fused provider: its ratio could be 1.5x or 6x.
    noisy = _rows([3.0, 3.0, 3.0, 3.0, 3.0], [0.5, 0.5, 1.0, 2.0, 2.0])
    assert stability.mark(noisy, providers.TORCH) == 1
    assert noisy[1]["unstable"] and not noisy[0]["unstable"]

    # Rounds on both sides of 1x while the medians say 1.15x: unstable, though the range is narrow.
    straddling = _rows([1.0, 1.15, 1.15], [0.8, 1.0, 1.2])
    assert stability.mark(straddling, providers.TORCH) == 1 and straddling[1]["unstable"]

    # torch.nn's own rounds 4x apart: its row is unstable (and so is every ratio against it).
    wild = _rows([1.0, 4.0, 4.0], [1.0, 1.0, 1.0])
    assert stability.mark(wild, providers.TORCH) == 2 and wild[0]["unstable"]


def test_report_and_csv_mark_unstable_rows(tmp_path):
    rows = _rows([3.0, 3.0, 3.0, 3.0, 3.0], [0.5, 0.5, 1.0, 2.0, 2.0])[:2]
    case = cases_mod.make_cases("cpu", quick=True, cells=["rnn"], dtypes=["float32"])[0]
    for row in rows:
        row.update(case.as_dict(), peak_bytes=1, x_vs_naive=None)
    stability.mark(rows, providers.TORCH)
    meta = {"device": "cpu", "device_name": "planted", "versions": environment.versions(), "git": GIT,
            "date": "2026-11-28", "quick": True, "rounds": 5, "budget_s": 0.1, "machine_busy": 0.6}
    report.write_all(str(tmp_path), meta, rows)
    text = (tmp_path / "report.md").read_text()
    assert "1 of 2 rows are marked unstable" in text and "kept 60% of the cores busy" in text
    table = _report_tables(text)[case.group]
    assert table[0]["x torch.nn (cpu)"] == "3.00x (unstable)"
    with open(tmp_path / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert [line["unstable"] for line in lines] == ["False", "True"]
    assert float(lines[1]["x_vs_torch_low"]) == pytest.approx(1.5) and float(lines[1]["x_vs_torch_high"]) == 6.0


def test_machine_busy_is_a_share_of_the_cores_and_warns_when_high(monkeypatch, capsys, tmp_path):
    busy = stability.machine_busy(0.05)
    assert busy is None or 0.0 <= busy <= 1.0
    assert stability.busy_warning(0.1) is None and "90%" in stability.busy_warning(0.9)
    _plant_timings(monkeypatch)
    monkeypatch.setattr(stability, "machine_busy", lambda: 0.9)
    assert cli.main(TINY + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "warning: other processes kept 90% of this machine's cores busy" in out
    assert "0 of" in out and "rows unstable" in out
    with open(tmp_path / "results.json") as f:
        meta = json.load(f)["meta"]
    assert meta["machine_busy"] == 0.9 and meta["unstable_rows"] == 0
