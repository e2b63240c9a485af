"""``python -m fastcells check`` (fastcells/numcheck/): exit status, table, JUnit file, and that it
catches a broken backend."""

import math
import xml.etree.ElementTree as ET

import pytest
import torch

import fastcells
from fastcells import cli, numcheck
from fastcells.backends import cpu


def _check(*argv):
    return cli.main(["check", *argv])


def _testcases(path):
    """(testsuite element, {(classname, name): testcase element}) of a JUnit file."""
    suite = ET.parse(path).getroot().find("testsuite")
    return suite, {(case.get("classname"), case.get("name")): case for case in suite.iter("testcase")}


def _expected_names(cell):
    return {f"{config.name}-{what}" for config in numcheck.configs_for(cell) for what in numcheck.WHATS}


def test_restricted_run_passes_and_writes_junit(tmp_path, capsys):
    junit = tmp_path / "check.xml"
    status = _check("--cells", "gru", "--backend", "cpu", "--junit-xml", str(junit))
    out = capsys.readouterr().out
    assert status == 0, out

    suite, cases = _testcases(junit)
    expected = {(f"fastcells.check.cpu.gru.{dtype}", name)
                for dtype in ("float32", "float64", "float16", "bfloat16") for name in _expected_names("gru")}
    assert set(cases) == expected
    assert len(cases) == len(list(suite.iter("testcase")))  # no duplicate testcase
    assert suite.get("tests") == str(len(expected))
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"
    assert not any(case.find("failure") is not None for case in cases.values())
    assert "packed-backward" in {name for _, name in cases}

    # one table row per check, then the summary
    rows = [line for line in out.splitlines() if line.startswith("cpu ")]
    assert len(rows) == len(expected) and all(row.endswith("PASS") for row in rows)
    assert f"{len(expected)} passed, 0 failed, 0 skipped" in out


def test_float64_errors_are_tiny(capsys):
    """The table reports measured errors: float64 against float64 stays near roundoff."""
    assert _check("--cells", "rnn_tanh", "--backend", "cpu", "--dtype", "float64") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("cpu ")]
    assert rows
    for row in rows:
        max_abs, max_rel, tolerance = (float(value) for value in row[5:8])
        assert max_abs < 1e-12 and max_rel < 1e-12 and tolerance == 1e-9


def test_broken_backend_is_detected(tmp_path, capsys, monkeypatch):
    """A cpu LSTM layer kernel off by 1e-3 relative fails every layer configuration, forward and
    backward, in both dtypes; the cells (which run lstm_step, not patched) still pass."""
    def off_by_a_little(original):
        def layer(*args):
            y, hn, cn = original(*args)
            return y * (1 + 1e-3), hn, cn
        return layer

    functions = cpu.functions()  # what backends.resolve hands the modules
    monkeypatch.setattr(functions, "lstm_layer", off_by_a_little(functions.lstm_layer))
    # Inference calls given their states go straight to the C++ ops, past lstm_layer (modules.py; the
    # same ops, tests/test_direct_calls.py): here every call takes the patched path.
    monkeypatch.setattr(fastcells.modules._FusedRNNBase, "_direct_inference_allowed", lambda self, x: False)
    junit = tmp_path / "broken.xml"
    status = _check("--cells", "lstm", "--backend", "cpu", "--dtype", "float32", "--dtype", "float64",
                    "--junit-xml", str(junit))
    out = capsys.readouterr().out
    assert status == 1

    suite, cases = _testcases(junit)
    failed = {name for (_, name), case in cases.items() if case.find("failure") is not None}
    layer_names = {name for name in _expected_names("lstm") if not name.startswith("cell")}
    assert failed == layer_names
    assert suite.get("failures") == str(2 * len(layer_names))  # float32 and float64
    failure = cases[("fastcells.check.cpu.lstm.float64", "1layer-forward")].find("failure")
    assert "tolerance" in failure.get("message")

    fail_rows = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert len(fail_rows) == 2 * len(layer_names)
    passed = 2 * (len(_expected_names("lstm")) - len(layer_names))
    assert f"{passed} passed, {2 * len(layer_names)} failed, 0 skipped" in out


def test_exception_is_a_failure_not_a_crash(tmp_path, capsys, monkeypatch):
    def boom(*args):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(cpu.functions(), "gru_layer", boom)
    junit = tmp_path / "boom.xml"
    status = _check("--cells", "gru", "--backend", "cpu", "--dtype", "float32", "--quiet",
                    "--junit-xml", str(junit))
    out = capsys.readouterr().out
    assert status == 1
    assert "RuntimeError: kernel exploded" in out
    assert " PASS" not in out  # --quiet: failures and the summary only
    _, cases = _testcases(junit)
    failure = cases[("fastcells.check.cpu.gru.float32", "2layer_bi-backward")].find("failure")
    assert "kernel exploded" in failure.get("message")
    assert "Traceback" in failure.text
    # the cells do not go through gru_layer without autograd: their forward checks still pass
    assert cases[("fastcells.check.cpu.gru.float32", "cell-forward")].find("failure") is None


def test_dtype_a_backend_does_not_compute_is_skipped(tmp_path, capsys, monkeypatch):
    from fastcells.backends import cpu

    monkeypatch.setattr(cpu, "DTYPES", (torch.float32, torch.float64))  # as if it had no 16-bit path
    junit = tmp_path / "skip.xml"
    status = _check("--cells", "rnn_relu", "--backend", "cpu", "--dtype", "bfloat16",
                    "--junit-xml", str(junit))
    out = capsys.readouterr().out
    assert status == 0
    suite, cases = _testcases(junit)
    assert suite.get("skipped") == suite.get("tests") == str(len(cases)) != "0"
    skip = next(iter(cases.values())).find("skipped")
    assert "bfloat16" in skip.get("message")
    assert f"0 passed, 0 failed, {len(cases)} skipped" in out


def test_cpu_backend_passes_in_16_bits(capsys):
    """The cpu backend's bfloat16 and float16 (float32 kernels inside) meet the low-precision rule."""
    assert _check("--cells", "gru", "--backend", "cpu", "--dtype", "bfloat16", "--dtype", "float16") == 0
    assert " 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(8))
def test_relu_cases_pass_in_16_bits_at_any_seed(seed, capsys):
    """ReLU's kink: a pre-activation within rounding of 0 moves the gradients of any 16-bit run by their
    own size (7 of seeds 0-15 failed so); the relu cases draw their inputs as clear of it as they can."""
    assert _check("--cells", "rnn_relu", "--backend", "cpu", "--backend", "reference", "--dtype", "bfloat16",
                  "--dtype", "float16", "--seed", str(seed)) == 0
    assert " 0 failed" in capsys.readouterr().out


def test_low_precision_tolerance_follows_torch_nn(capsys):
    """bfloat16: tolerance = max(4 x torch.nn's own error, floor); the reference backend meets it."""
    assert _check("--cells", "rnn_tanh", "--backend", "reference", "--dtype", "bfloat16") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("reference ")]
    floor = numcheck.TOLERANCES[torch.bfloat16].floor
    assert rows and all(float(row[7]) >= floor * (1 - 1e-2) for row in rows)


def test_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _check("--backend", "no-such-backend")
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-backend'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_exits_2(capsys):
    assert _check("--device", "cuda") == 2
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err and captured.out == ""


def test_measure():
    ref = {"a": torch.tensor([1.0, -4.0], dtype=torch.float64), "z": torch.zeros(2, dtype=torch.float64)}
    got = {"a": torch.tensor([1.5, -4.0]), "z": torch.tensor([0.0, 1e-3])}
    result = numcheck.measure(got, ref)
    assert result.max_abs == 0.5 and result.max_rel == 0.5 / 4 and result.worst == "a"
    assert not result.problems
    # an all-zero reference is judged absolutely; NaN is an infinite error; missing/shape are problems
    assert numcheck.measure({"z": got["z"]}, {"z": ref["z"]}).max_rel == pytest.approx(1e-3)
    assert math.isinf(numcheck.measure({"a": torch.tensor([math.nan, 0.0])}, {"a": ref["a"]}).max_rel)
    problems = numcheck.measure({"a": torch.zeros(3)}, ref).problems
    assert len(problems) == 2 and "shape" in problems[0] and "missing" in problems[1]


def test_tolerance_rules():
    assert numcheck.TOLERANCES[torch.float64].bound() == 1e-9
    rule = numcheck.TOLERANCES[torch.float16]
    assert rule.needs_torch_error
    assert rule.bound(1.0) == 4.0 and rule.bound(0.0) == rule.floor > 0


def test_unusable_backend(monkeypatch, capsys):
    """Without the compiled extension: naming the cpu backend is an error (exit 2), the default run
    says it is not checked and checks the others."""
    from fastcells import _extension

    monkeypatch.setattr(_extension, "load_error", "ImportError: simulated")
    assert _check("--backend", "cpu") == 2
    assert "backend 'cpu' is not usable on cpu" in capsys.readouterr().err

    assert _check("--cells", "rnn_tanh", "--dtype", "float64") == 0
    out = capsys.readouterr().out
    assert "not checked: cpu (" in out and "simulated" in out
    rows = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL", "SKIP"))]
    assert rows and not any(row.startswith("cpu ") for row in rows)


def test_restricted_run_sees_the_same_numbers(capsys):
    """Each cell x config draws from its own seed: adding cells does not change a cell's numbers."""

    def gru_rows(*cells):
        assert _check("--backend", "cpu", "--dtype", "float32", *cells) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("cpu       gru")]

    alone = gru_rows("--cells", "gru")
    assert alone and alone == gru_rows("--cells", "rnn_relu", "--cells", "gru")
