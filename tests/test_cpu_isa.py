"""The cpu backend's kernels are compiled once per instruction set (csrc/cpu/isa.h: baseline x86-64,
AVX2+FMA+F16C, AVX-512) and the best the running CPU has is picked at load time (issue 16): each copy this
CPU can run computes what torch.nn computes, forward and backward, layers and cells; the pick is the
best copy, `FASTCELLS_CPU_ISA` overrides it and bad values are refused; `info` names it."""

import os
import subprocess
import sys
import textwrap

import pytest

import fastcells
from fastcells import _extension
from conftest import cpu_kernel_copies

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)


# Layers (stacked, bidirectional, a projection), cells' streaming steps, float64 and float32, batch
# sizes of the mat-vec (1), the packed GEMM with few rows (5) and row groups (13), odd hidden sizes; and
# bfloat16 and float16 layers and cells of a few rows, and layers of 6 (the packed GEMM: float16 panels
# widened as each copy loads them, bfloat16 ones without the bfloat16 products packed widened).
PARITY = textwrap.dedent("""
    import torch, fastcells
    from fastcells import _extension
    torch.manual_seed(0)
    cases = 0
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        for name, kwargs in (("LSTM", {}), ("LSTM", {"proj_size": 5}), ("GRU", {}),
                             ("RNN", {"nonlinearity": "relu"})):
            for B in (1, 5, 13):
                for H in (7, 37):
                    ref = getattr(torch.nn, name)(6, H, 2, bidirectional=True, dtype=dtype, **kwargs)
                    fast = getattr(fastcells, name)(6, H, 2, bidirectional=True, dtype=dtype,
                                                    backend="cpu", **kwargs)
                    fast.load_state_dict(ref.state_dict())
                    x = torch.randn(4, B, 6, dtype=dtype)
                    results = []
                    for module in (fast, ref):
                        leaf = x.clone().requires_grad_()
                        out, _ = module(leaf)
                        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
                        results.append([out, leaf.grad, *(p.grad for p in module.parameters())])
                    for a, b in zip(*results):
                        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max()), (name, kwargs, B, H, dtype)
                    cases += 1
        for name in ("LSTMCell", "GRUCell", "RNNCell"):
            ref = getattr(torch.nn, name)(6, 37, dtype=dtype)
            fast = getattr(fastcells, name)(6, 37, dtype=dtype, backend="cpu")
            fast.load_state_dict(ref.state_dict())
            for B in (1, 5):
                x = torch.randn(B, 6, dtype=dtype)
                with torch.no_grad():
                    a, b = fast(x), ref(x)
                for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                    assert (u - v).abs().max() <= tol, (name, B, dtype)
                cases += 1
    # bfloat16 and float16 with at most 4 rows: the mat-vecs read 16-bit weights as they are (bfloat16 16 at
    # a time where the copy has vectors: csrc/cpu/matmul_cpu.h's widen16; float16 cell steps through F16C
    # in the AVX2 and AVX-512 copies) and compute in float32: the float32 kernels' results for the same
    # (16-bit) values, up to the 16-bit rounding of what they return. Layers of 6 rows take the packed GEMM.
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        for name in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"):
            cell = name.endswith("Cell")
            for B in (1, 3) if cell else (1, 3, 6):
                for H in (37, 40):
                    fast = getattr(fastcells, name)(24, H, *(() if cell else (2,)), backend="cpu").to(dtype)
                    exact = getattr(fastcells, name)(24, H, *(() if cell else (2,)), backend="cpu")
                    exact.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
                    x = torch.randn(*((B,) if cell else (5, B)), 24).to(dtype)
                    with torch.no_grad():
                        a, b = fast(x), exact(x.float())
                    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
                    assert a.dtype == dtype
                    assert (a.float() - b).abs().max() <= tol * max(1.0, b.abs().max()), (name, B, H, dtype)
                    cases += 1
    print(_extension.C.cpu_isa(), cases)
""")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_each_copy_matches_torch_nn(isa):
    if isa not in cpu_kernel_copies():
        pytest.skip(f"this CPU cannot run the {isa} copy")
    env = {**os.environ, "FASTCELLS_CPU_ISA": isa}
    run = subprocess.run([sys.executable, "-c", PARITY], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == [isa, "120"]


def test_the_best_copy_is_picked():
    if os.environ.get("FASTCELLS_CPU_ISA"):
        pytest.skip("FASTCELLS_CPU_ISA forces a copy in this run")
    assert _extension.C.cpu_isa() == cpu_kernel_copies()[0]


@pytest.mark.parametrize("value,message", [("avx3", "must be avx512, avx2 or baseline"),
                                           ("avx512", "this CPU does not have it")])
def test_bad_override_is_refused(value, message):
    if value in cpu_kernel_copies():
        pytest.skip(f"this CPU runs {value}")
    code = "import torch, fastcells; fastcells.GRU(3, 4, backend='cpu')(torch.randn(2, 1, 3))"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTCELLS_CPU_ISA": value},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and message in run.stderr


def test_info_names_the_copy():
    from fastcells import info

    assert any(f"kernels for {_extension.C.cpu_isa()}" in line for line in info.describe(["cpu"]))


def test_info_names_the_capped_copies_of_fastcells_and_torch():
    """With fastcells' copy and ATen's kernels both capped at AVX2 (an AVX-512 machine measuring as an
    AVX2 one: environment.ISA_VARIABLES), `info` names both caps."""
    if "avx2" not in cpu_kernel_copies():
        pytest.skip("this CPU cannot run the avx2 copy")
    env = {**os.environ, "FASTCELLS_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2"}
    run = subprocess.run([sys.executable, "-m", "fastcells", "info", "--device", "cpu"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "avx2 kernels, torch AVX2)" in run.stdout and "kernels for avx2" in run.stdout
