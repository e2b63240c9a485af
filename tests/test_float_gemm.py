"""The packed float32 GEMM of layers' products over all rows (csrc/cpu/float_gemm.h: the backward's weight
gradients and dx, small batches' input projections up front, on CPUs where it beats at::mm), against
float64 products of the same operands: operands as rows, as transposed views (dg.t()) or with no unit
stride; sizes off its row tiles and panels; k over several of its blocks; accumulation; float16 operands
(a float16 layer's backward), widened as they are packed; bitwise the same result on 1, 2 and 3 threads.
And the layers' gradient tests again on the GEMM this CPU does not take (FASTCELLS_CPU_FLOAT_GEMM)."""

import copy
import os
import subprocess
import sys

import pytest
import torch

import fastcells
from conftest import (assert_gemm_within_roundings, cpu_kernel_copies, forward_backward, gemm_on_each_thread_count,
                      make_layer_twins, random_layer_states)
from fastcells import environment, info

pytestmark = pytest.mark.skipif("cpu" not in fastcells.available_backends("cpu"),
                                reason="the cpu backend is not built")


def _gemm(a, b, out, accumulate):
    from fastcells import _extension

    _extension.C.cpu_float_gemm_matrices(a, b, out, accumulate)


def _operand(rows, cols, layout, generator, dtype=torch.float32):
    """A (rows, cols) matrix in dtype: contiguous, the transpose of a contiguous (cols, rows) one, or every
    other row and column of a larger one (no unit stride)."""
    if layout == "transposed":
        return torch.randn(cols, rows, generator=generator).to(dtype).t()
    if layout == "strided":
        return torch.randn(2 * rows, 2 * cols, generator=generator).to(dtype)[::2, ::2]
    return torch.randn(rows, cols, generator=generator).to(dtype)


# (m, k, n): one element; below a row tile (6 or 12 rows) and a panel (16 or 32 columns); a tile and a
# row more (merged with the last full tile); n over several panels with a ragged end; k over several
# blocks of k (a block of b takes at most 384 KiB: 307 rows at n = 300, 180 at n = 520); the shapes of
# an LSTM's dW = dG^T @ X and dx = dG @ W_ih.
SHAPES = [(1, 1, 1), (5, 3, 7), (13, 9, 33), (25, 64, 17), (70, 1000, 300), (30, 2000, 520), (3, 700, 1),
          (256, 160, 64), (160, 256, 64)]
LAYOUTS = ["rows", "transposed", "strided"]


def _roundings(k):
    """Each output element is one chain of float32 multiply-adds per block of k, each block's chain added
    to the sums before it: at most k + blocks + 1 roundings, each within 2^-24 of the running sum, which
    the sum of the magnitudes bounds (blocks of at least 64 rows of k)."""
    return k + 2 + (k + 63) // 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("b_layout", LAYOUTS)
@pytest.mark.parametrize("a_layout", LAYOUTS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_float_gemm_matches_float64_products(m, k, n, a_layout, b_layout, accumulate, dtype):
    """float16 operands: their float64 products are exact, so the same bound holds on the float32 sums."""
    generator = torch.Generator().manual_seed(m * 1000 + k + n)
    a = _operand(m, k, a_layout, generator, dtype)
    b = _operand(k, n, b_layout, generator, dtype)
    assert_gemm_within_roundings(_gemm, a, b, accumulate, generator, _roundings(k))


def test_float_gemm_writes_into_rows_of_a_wider_result():
    """out may be a column slice of a wider matrix (rows further apart than their length): only its own
    columns are written."""
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 90, generator=generator), torch.randn(90, 50, generator=generator)
    wide = torch.full((40, 70), float("nan"))

    def into_the_slice(a, b, out, accumulate):  # the check reads the slice's values from out
        _gemm(a, b, wide[:, 10:60], accumulate)
        out.copy_(wide[:, 10:60])

    assert_gemm_within_roundings(into_the_slice, a, b, False, generator, _roundings(90))
    assert torch.isnan(wide[:, :10]).all() and torch.isnan(wide[:, 60:]).all()


def test_float_gemm_of_no_rows_of_k():
    """k = 0: out is zeros, or left as it is when accumulating."""
    a, b = torch.empty(3, 0), torch.empty(0, 4)
    out = torch.ones(3, 4)
    _gemm(a, b, out, True)
    assert torch.equal(out, torch.ones(3, 4))
    _gemm(a, b, out, False)
    assert torch.equal(out, torch.zeros(3, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k,n", [(300, 900, 100), (1024, 400, 64), (37, 2000, 520)])
def test_float_gemm_does_not_depend_on_the_number_of_threads(m, k, n, dtype):
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(k, m, generator=generator).to(dtype).t()  # as dG^T
    b = torch.randn(k, n, generator=generator).to(dtype)
    results = gemm_on_each_thread_count(_gemm, a, b)
    assert all(torch.equal(results[0], other) for other in results[1:])


def test_float_gemm_rejects_what_it_cannot_multiply():
    a, b = torch.zeros(4, 6), torch.zeros(6, 5)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        _gemm(a, b, torch.empty(4, 6), False)
    with pytest.raises(RuntimeError, match=r"float32 \(or float16\) operands and a float32 result"):
        _gemm(a.double(), b, torch.empty(4, 5), False)
    with pytest.raises(RuntimeError, match=r"float32 \(or float16\) operands and a float32 result"):
        _gemm(a.half(), b, torch.empty(4, 5), False)
    with pytest.raises(RuntimeError, match=r"float32 \(or float16\) operands and a float32 result"):
        _gemm(a.half(), b.half(), torch.empty(4, 5).half(), False)
    with pytest.raises(RuntimeError, match="columns must be adjacent"):
        _gemm(a, b, torch.empty(5, 4).t(), False)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_float_gemm_layers_over_several_blocks_match_torch_nn(kind):
    """A float32 layer whose backward's GEMMs cut k into several blocks (800 rows: 3-4 blocks for the weight
    gradients at H = 100, 2 for LSTM's dx over 4H = 400), both directions: every output and gradient within
    twice torch.nn's own float32 error against float64 (or a few roundings of its size), as the
    low-precision parity tests bound theirs. (The parity tests' layers have too few rows for a second block
    of k; sums of 800 rows leave float32 results further apart than their tolerance allows.)"""
    extra = {"proj_size": 50} if kind == "lstm_proj" else {}
    ref, fast = make_layer_twins(kind, 100, 100, 1, bidirectional=True, dtype=torch.float32, backend="cpu",
                                 **extra)
    x = torch.randn(40, 20, 100, generator=torch.Generator().manual_seed(5))
    hx = random_layer_states(ref, 20, torch.float32)
    hx64 = hx.double() if isinstance(hx, torch.Tensor) else tuple(h.double() for h in hx)
    truth = _named_results(forward_backward(copy.deepcopy(ref).double(), x.double(), hx64))
    ours, theirs = _named_results(forward_backward(fast, x, hx)), _named_results(forward_backward(ref, x, hx))
    eps = torch.finfo(torch.float32).eps
    for name, exact in truth.items():
        our_error = (ours[name].double() - exact).abs().max().item()
        torch_error = (theirs[name].double() - exact).abs().max().item()
        assert our_error <= 2 * torch_error + 8 * eps * exact.abs().max().item(), (name, our_error, torch_error)


def _named_results(record):
    """A forward_backward record's tensors by name: outputs and states, the input's, the states' and every
    parameter's gradients."""
    named = {f"out {i}": t for i, t in enumerate(record["out"])}
    named["grad x"] = record["grad_x"]
    named.update({f"grad hx {i}": t for i, t in enumerate(record["grad_hx"])})
    named.update({f"grad {name}": t for name, t in record["grad_params"].items()})
    return named


def _expected_choice():
    """The GEMM this process's float32 backward should take (csrc/cpu/bf16_backward_gemm.h)."""
    asked = os.environ.get("FASTCELLS_CPU_FLOAT_GEMM")
    if asked:
        return asked
    with open("/proc/cpuinfo") as cpuinfo:
        text = cpuinfo.read()
    amd = "AuthenticAMD" in text
    family = next((int(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu family")), 0)
    return "packed" if amd and family >= 0x1A and environment.cpu_kernels_isa() == "avx512" else "aten"


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo to read the CPU from")
def test_info_names_the_float_gemm():
    chosen = environment.cpu_float_gemm()
    assert chosen == _expected_choice()
    line = "float32 layers' GEMMs over all rows on " + info.FLOAT_GEMMS[chosen]
    assert any(line in text for text in info.describe(["cpu"]))


def test_bad_float_gemm_choice_is_refused():
    code = "import torch, fastcells; fastcells.environment.cpu_float_gemm()"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTCELLS_CPU_FLOAT_GEMM": "mkl"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "FASTCELLS_CPU_FLOAT_GEMM must be packed or aten" in run.stderr


# The tests whose gradients go through the backward's float32 GEMMs (weight gradients, dx; float16 layers'
# too, whose operands ours widens, at::mm blocks of them) and whose inputs through the projections up
# front: parity with torch.nn at every layer kind and option, packed sequences, batches split across
# threads; the thread-count tests; peak memory; the 16-bit layers' error bounds and bitwise results across
# threads.
GRADIENT_TESTS = [("test_float_gemm.py", "layers_over_several_blocks"),
                  ("test_parity_layers.py", "cpu and (float32 or split_across)"),
                  ("test_packed.py", "cpu and float32"),
                  ("test_thread_count.py", None),
                  ("test_backward_memory.py", None),
                  ("test_cpu_low_precision.py", "error_bounded or 16bit_outputs or training_holds")]


@pytest.mark.parametrize("gemm", ["packed", "aten"])
def test_gradient_tests_pass_on_either_float_gemm(gemm):
    """The tests above ran the float32 backward on this CPU's choice; these run its gradient tests again
    on the other one (each may be a user's default on another CPU)."""
    if gemm == environment.cpu_float_gemm():
        pytest.skip(f"the tests ran on {gemm}")
    env = {**os.environ, "FASTCELLS_CPU_FLOAT_GEMM": gemm}
    here = os.path.dirname(__file__)
    for file, selection in GRADIENT_TESTS:
        selected = ["-k", selection] if selection else []
        run = subprocess.run([sys.executable, "-m", "pytest", os.path.join(here, file), "-q", "-p",
                              "no:cacheprovider", *selected], env=env, capture_output=True, text=True,
                             cwd=here, timeout=900)
        assert run.returncode == 0, file + "\n" + run.stdout[-3000:] + run.stderr[-2000:]
        assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_each_copy_of_the_float_gemm(isa):
    """Each copy of the kernels (csrc/cpu/isa.h) has its own float_gemm, with its own tile rows and panel
    width: the GEMM's tests above again on each other copy this CPU runs, and that copy's layers with their
    GEMMs over all rows on it (FASTCELLS_CPU_FLOAT_GEMM=packed): parity with torch.nn in float32, and
    training bitwise the same with 1, 2 and 3 threads."""
    if isa not in cpu_kernel_copies():
        pytest.skip(f"this CPU cannot run the {isa} copy")
    if isa == environment.cpu_kernels_isa():
        pytest.skip(f"the tests above ran on the {isa} copy")
    env = {**os.environ, "FASTCELLS_CPU_ISA": isa, "FASTCELLS_CPU_FLOAT_GEMM": "packed"}
    here = os.path.dirname(__file__)
    for file, selection in [("test_float_gemm.py", "test_float_gemm_ and not each_copy"),
                            ("test_parity_layers.py", "cpu and float32"),
                            ("test_thread_count.py", "bitwise_the_same_on_our_float_gemm")]:
        run = subprocess.run([sys.executable, "-m", "pytest", os.path.join(here, file), "-q", "-p",
                              "no:cacheprovider", "-k", selection], env=env, capture_output=True, text=True,
                             cwd=here, timeout=900)
        assert run.returncode == 0, file + "\n" + run.stdout[-3000:] + run.stderr[-2000:]
        assert " passed" in run.stdout.splitlines()[-1] and "skipped" not in run.stdout.splitlines()[-1], \
            run.stdout[-500:]
