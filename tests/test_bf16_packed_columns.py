"""The packed bfloat16 products of a range of columns (csrc/cpu/bf16_products.h's gemm_columns: w packed in
panels of 32 columns of pairs, a rounded to bfloat16, float32 sums), which bfloat16 layers of at most 4 rows
a step take over 64 or more rows in all, each thread its units' columns (csrc/cpu/lstm_cpu.inc): against
float64 products of the same bfloat16 operands at 1-9 rows of a (tiles of 1-3 rows over several panels, of
4-8 over one), n and k off the panels' 32 columns and 16 pairs, ranges that start and end inside a panel;
no column outside the range written; each output the same bitwise whatever rows and range it came in; and
the four gates' ranges asked for at once (repeats) the same as one at a time."""

import pytest
import torch

from fastcells import environment

pytestmark = pytest.mark.skipif(not environment.cpu_bf16_products(),
                                reason="the packed products need AVX-512 BF16 (and the avx512 kernels)")


def _columns(w, a, out, c0, c1, accumulate=False, repeats=1, stride=0):
    from fastcells import _extension

    _extension.C.cpu_bf16_packed_columns(w, a, out, c0, c1, accumulate, repeats, stride)


def _operands(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen).bfloat16(), torch.randn(m, k, generator=gen)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("k,n,c0,c1", [(1, 1, 0, 1), (7, 5, 1, 4), (37, 75, 3, 70), (64, 160, 32, 128),
                                       (256, 200, 104, 200), (33, 300, 0, 300)])
def test_packed_columns_match_float64_products(m, k, n, c0, c1, accumulate):
    w, a = _operands(m, k, n, seed=m * 1000 + k + n)
    start = torch.randn(m, n)
    out = start.clone()
    _columns(w, a, out, c0, c1, accumulate)
    products = a.bfloat16().double() @ w.double().t()
    want = start.double().clone()
    want[:, c0:c1] = products[:, c0:c1] + (start.double()[:, c0:c1] if accumulate else 0)
    # float32 sums of k products: each within k unit roundoffs of the sum of the products' magnitudes
    bound = (k + 2) * 2.0 ** -24 * (a.bfloat16().double().abs() @ w.double().abs().t() + start.double().abs())
    assert torch.all((out.double() - want).abs() <= bound)
    assert torch.equal(out[:, :c0], start[:, :c0]) and torch.equal(out[:, c1:], start[:, c1:])


@pytest.mark.parametrize("k,n", [(64, 96), (37, 130), (256, 200)])
def test_each_output_is_summed_alike_in_every_tile_and_range(k, n):
    """Row i of a alone or among 2-9 rows, and the columns in one range or split in two anywhere (two
    threads' units): bitwise the same outputs."""
    w, a = _operands(9, k, n, seed=k + n)
    alone = torch.zeros(9, n)
    for i in range(9):
        _columns(w, a[i:i + 1], alone[i:i + 1], 0, n)
    for m in range(2, 10):
        together = torch.zeros(m, n)
        _columns(w, a[:m], together, 0, n)
        assert torch.equal(together, alone[:m]), m
    for split in (1, 17, 32, 40, n - 5):
        for m in (1, 3, 4, 9):
            halves = torch.zeros(m, n)
            _columns(w, a[:m], halves, 0, split)
            _columns(w, a[:m], halves, split, n)
            assert torch.equal(halves, alone[:m]), (split, m)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("k,hidden,c0,c1",
                         [(72, 72, 40, 72), (200, 200, 0, 104), (128, 128, 64, 128), (37, 50, 8, 40)])
def test_repeated_ranges_are_the_single_ranges(m, k, hidden, c0, c1):
    """The LSTM's unit split asks for a thread's units in all four gates at once (ranges `hidden` apart, a's
    rows rounded once): bitwise what the four ranges give one at a time, and no other column written."""
    w, a = _operands(m, k, 4 * hidden, seed=m + k + hidden + c0)
    start = torch.randn(m, 4 * hidden)
    together, apart = start.clone(), start.clone()
    _columns(w, a, together, c0, c1, repeats=4, stride=hidden)
    for gate in range(4):
        _columns(w, a, apart, c0 + gate * hidden, c1 + gate * hidden)
    assert torch.equal(together, apart)
    outside = torch.ones(4 * hidden, dtype=torch.bool)
    for gate in range(4):
        outside[c0 + gate * hidden:c1 + gate * hidden] = False
    assert torch.equal(together[:, outside], start[:, outside])
    assert not torch.equal(together[:, ~outside], start[:, ~outside])


def test_overlapping_or_out_of_range_repeats_are_refused():
    w, a = _operands(2, 16, 64, seed=3)
    out = torch.zeros(2, 64)
    with pytest.raises(RuntimeError, match="overlap"):
        _columns(w, a, out, 0, 20, repeats=2, stride=16)
    with pytest.raises(RuntimeError, match="of 64"):
        _columns(w, a, out, 0, 16, repeats=5, stride=16)
