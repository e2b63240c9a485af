"""Runs the ctest of the C++ gate math (tests/cpp/test_gate_math.cpp) through CMakeLists.txt."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_gate_math_ctest(tmp_path):
    build = tmp_path / "build"
    # CMake builds only the gate math and its test (setup.py builds the extension): no torch needed.
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build)],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "test_gate_math"], check=True,
                   capture_output=True)
    result = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
