"""bench/cuda_resources.py, which `make cuda-check` runs: it reads ptxas's resource report and fails
where a persistent kernel uses local memory (spills or a stack frame)."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("cuda_resources", ROOT / "bench" / "cuda_resources.py")
cuda_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_resources)


def _log(stack, stores, loads, registers=40):
    return (f"ptxas info    : Compiling entry function '_Z6kernelv' for 'sm_90'\n"
            f"ptxas info    : Function properties for _Z6kernelv\n"
            f"    {stack} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads\n"
            f"ptxas info    : Used {registers} registers, used 1 barriers\n")


def test_parse_reads_every_field():
    (kernel,) = cuda_resources.parse(_log(16, 8, 4, registers=255))
    assert (kernel.name, kernel.arch, kernel.registers) == ("_Z6kernelv", "sm_90", 255)
    assert (kernel.stack, kernel.spill_stores, kernel.spill_loads) == (16, 8, 4)


@pytest.mark.parametrize("stack,stores,loads", [(8, 0, 0), (0, 4, 0), (0, 0, 4)])
def test_local_memory_in_a_persistent_kernel_is_a_violation(stack, stores, loads):
    kernels = cuda_resources.parse(_log(stack, stores, loads))
    assert len(cuda_resources.violations("csrc/cuda/persistent.cu", kernels)) == 1
    assert cuda_resources.violations("csrc/cuda/pointwise.cu", kernels) == []  # reported only
    assert cuda_resources.violations("csrc/cuda/persistent.cu", cuda_resources.parse(_log(0, 0, 0))) == []


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_a_real_stack_frame_fails_the_check(tmp_path):
    """A kernel that indexes a local array at run time gets a stack frame in local memory: in a file
    named persistent.cu the check must fail, with ptxas's own report as its input."""
    source = tmp_path / "persistent.cu"
    source.write_text("__global__ void kernel(float* out, int k) {\n"
                      "  float scratch[1024];\n"
                      "  for (int i = 0; i < 1024; ++i) scratch[(i * k) & 1023] = out[i];\n"
                      "  out[threadIdx.x] = scratch[(threadIdx.x * k) & 1023];\n"
                      "}\n")
    command = [sys.executable, str(ROOT / "bench" / "cuda_resources.py"), "nvcc",
               "-gencode", "arch=compute_90,code=sm_90", "--", str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uses local memory" in result.stderr
