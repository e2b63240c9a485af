"""The VDPBF16PS GEMM of bfloat16 layers' backward (csrc/cpu/bf16_gemm.h), against float64 products of
the same bfloat16 operands: operands as rows or as transposed views (dg.t()), odd k, k over several of its
k-blocks, sizes off its tiles and blocks, accumulation; and bitwise the same result on 1, 2 and 3
threads."""

import pytest
import torch

from conftest import assert_gemm_within_roundings, gemm_on_each_thread_count
from fastcells import environment

pytestmark = pytest.mark.skipif(not environment.cpu_bf16_products(),
                                reason="the GEMM needs AVX-512 BF16 (and the avx512 kernels)")


def _gemm(a, b, out, accumulate):
    from fastcells import _extension

    _extension.C.cpu_bf16_gemm_matrices(a, b, out, accumulate)


def _operand(rows, cols, transposed, generator):
    """A bfloat16 (rows, cols) matrix: contiguous, or the transpose of a contiguous (cols, rows) one."""
    if transposed:
        return torch.randn(cols, rows, generator=generator).bfloat16().t()
    return torch.randn(rows, cols, generator=generator).bfloat16()


# (m, k, n): one element; sizes below a tile (8 rows), a panel (32 columns) and a k-block (256 rows of
# k); odd k; k over three k-blocks; m over several 64-row blocks with a ragged end.
SHAPES = [(1, 1, 1), (7, 3, 5), (9, 2, 33), (65, 257, 31), (130, 300, 70), (200, 771, 96), (3, 513, 1)]


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("a_transposed,b_transposed", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bf16_gemm_matches_float64_products(m, k, n, a_transposed, b_transposed, accumulate):
    generator = torch.Generator().manual_seed(m * 1000 + k + n)
    a = _operand(m, k, a_transposed, generator)
    b = _operand(k, n, b_transposed, generator)
    # One chain of float32 additions per element: at most k + 1 roundings, each within 2^-24 of the
    # running sum, which the sum of magnitudes bounds.
    assert_gemm_within_roundings(_gemm, a, b, accumulate, generator, k + 1)


@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES + [(70, 600, 300)])
def test_bf16_gemm_rounds_each_sum_once_into_a_bfloat16_result(m, k, n, a_transposed):
    """A bfloat16 out gets each float32 sum rounded once (to nearest even): bitwise the float32 result
    rounded, across the 4-panel groups its sums are kept in (n = 300: three groups, the last ragged)."""
    generator = torch.Generator().manual_seed(m + k + n)
    a = _operand(m, k, a_transposed, generator)
    b = _operand(k, n, False, generator)
    sums = torch.empty(m, n)
    _gemm(a, b, sums, False)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    _gemm(a, b, out, False)
    assert torch.equal(out, sums.bfloat16())
    with pytest.raises(RuntimeError, match="written, not added to"):
        _gemm(a, b, out, True)


def test_bf16_gemm_takes_operands_with_no_unit_stride():
    """Every other column of a larger matrix: copied first, then multiplied as any other operand."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(40, 2 * 70, generator=generator).bfloat16()[:, ::2]
    b = torch.randn(70, 2 * 50, generator=generator).bfloat16()[:, ::2]
    out = torch.empty(40, 50)
    _gemm(a, b, out, False)
    magnitudes = a.double().abs() @ b.double().abs()
    assert ((out.double() - a.double() @ b.double()).abs() <= magnitudes * 71 * 2**-24).all()


def test_bf16_gemm_does_not_depend_on_the_number_of_threads():
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(900, 300, generator=generator).bfloat16().t()  # (300, 900): k over several blocks
    b = torch.randn(900, 100, generator=generator).bfloat16()
    results = gemm_on_each_thread_count(_gemm, a, b)
    assert all(torch.equal(results[0], other) for other in results[1:])


def test_bf16_gemm_rejects_what_it_cannot_multiply():
    a, b = torch.zeros(4, 6, dtype=torch.bfloat16), torch.zeros(6, 5, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="shapes"):
        _gemm(a, b, torch.empty(4, 6), False)
    with pytest.raises(RuntimeError, match="bfloat16 operands and a float32 or bfloat16 result"):
        _gemm(a.float(), b, torch.empty(4, 5), False)
    with pytest.raises(RuntimeError, match="unit column stride"):
        _gemm(a, b, torch.empty(5, 4).t(), False)
