"""The bfloat16 mat-vecs of layers of up to 4 rows and of the cell steps (csrc/cpu/bf16_products.h's
matvec_rows: w read as bfloat16 rows, a rounded to bfloat16, float32 sums), against float64 products of the
same bfloat16 operands: 1-9 rows of a (every tile shape: rows of a 2 at a time, the last 3 together for an
odd count, a single row alone), rows of w off its 8-row groups, k off its 32-pair steps, accumulation, a
range of w's rows. And each output the same bitwise whichever tile its row of a fell in and however the rows
of w are split (as between threads)."""

import pytest
import torch

from fastcells import environment

pytestmark = pytest.mark.skipif(not environment.cpu_bf16_products(),
                                reason="the mat-vecs need AVX-512 BF16 (and the avx512 kernels)")


def _matvec(w, a, out, begin, end, accumulate):
    from fastcells import _extension

    _extension.C.cpu_bf16_matvec_rows(w, a, out, begin, end, accumulate)


def _operands(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen).bfloat16(), torch.randn(m, k, generator=gen)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("k,n", [(1, 1), (7, 5), (64, 8), (100, 13), (300, 37)])
def test_matvec_matches_float64_products(m, k, n, accumulate):
    w, a = _operands(m, k, n, seed=m * 1000 + k + n)
    begin, end = (1, n - 1) if n > 2 else (0, n)  # a range of w's rows; the columns outside stay as they were
    start = torch.randn(m, n)
    out = start.clone()
    _matvec(w, a, out, begin, end, accumulate)
    products = a.bfloat16().double() @ w.double().t()
    want = start.double().clone()
    want[:, begin:end] = products[:, begin:end] + (start.double()[:, begin:end] if accumulate else 0)
    # float32 sums of k products: each within k unit roundoffs of the sum of the products' magnitudes
    bound = (k + 2) * 2.0 ** -24 * (a.bfloat16().double().abs() @ w.double().abs().t() + start.double().abs())
    assert torch.all((out.double() - want).abs() <= bound)
    assert torch.equal(out[:, :begin], start[:, :begin]) and torch.equal(out[:, end:], start[:, end:])


@pytest.mark.parametrize("k,n", [(64, 16), (100, 37), (300, 13)])
def test_each_output_is_summed_alike_in_every_tile_and_split(k, n):
    """Row i of a alone, or among 2-9 rows (in tiles of 2 and 3 rows), and w's rows in one range or two
    (a thread each): bitwise the same outputs."""
    w, a = _operands(9, k, n, seed=k + n)
    alone = torch.zeros(9, n)
    for i in range(9):
        _matvec(w, a[i:i + 1], alone[i:i + 1], 0, n, False)
    for m in range(2, 10):
        together = torch.zeros(m, n)
        _matvec(w, a[:m], together, 0, n, False)
        assert torch.equal(together, alone[:m]), m
    for split in (1, 5, n - 3):
        halves = torch.zeros(9, n)
        _matvec(w, a, halves, 0, split, False)
        _matvec(w, a, halves, split, n, False)
        assert torch.equal(halves, alone), split


def test_matvec_rejects_what_it_cannot_multiply():
    w, a = _operands(2, 8, 4, seed=0)
    out = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="shapes"):
        _matvec(w, a[:, :7], out, 0, 4, False)
    with pytest.raises(RuntimeError, match="bfloat16"):
        _matvec(w.float(), a, out, 0, 4, False)
    with pytest.raises(RuntimeError, match="rows"):
        _matvec(w, a, out, 2, 5, False)
    with pytest.raises(RuntimeError, match="unit column"):
        _matvec(w, a, torch.zeros(4, 2).t(), 0, 4, False)
