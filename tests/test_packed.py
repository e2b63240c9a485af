"""PackedSequence input: the output PackedSequence (data, batch_sizes, sorted/unsorted indices), final
states and every gradient equal torch.nn's, for sorted and unsorted batches with lengths down to 1."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import (LAYER_KINDS, assert_same_results, forward_backward, make_layer_twins,
                      random_layer_states)

I, H = 3, 5

# name -> (lengths, enforce_sorted)
LENGTHS = {
    "unsorted": ([3, 1, 6, 4], False),
    "unsorted_ties": ([2, 5, 5, 1], False),
    "sorted_enforced": ([6, 4, 4, 1], True),
    "sorted_not_enforced": ([6, 3, 2, 1], False),
    "all_one": ([1, 1, 1], False),
    "single": ([4], True),
}


def _packer(lengths, enforce_sorted, batch_first=False):
    def pack(x):
        return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                    enforce_sorted=enforce_sorted)
    return pack


def _padded(lengths, dtype, batch_first=False, seed=0):
    t, b = max(lengths), len(lengths)
    shape = (b, t, I) if batch_first else (t, b, I)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_packed_metadata_equal(got, expected):
    assert torch.equal(got.batch_sizes, expected.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(got, name), getattr(expected, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


GRID = list(itertools.product(
    LAYER_KINDS, LENGTHS, (1, 2), (False, True), (False, True)))  # kind, lengths, layers, bidir, hx


@pytest.mark.parametrize("kind,lengths,num_layers,bidirectional,with_hx", GRID)
def test_packed_parity(kind, lengths, num_layers, bidirectional, with_hx, backend):
    dtype = torch.float64
    lengths, enforce_sorted = LENGTHS[lengths]
    ref, fast = make_layer_twins(kind, I, H, num_layers, bidirectional=bidirectional, dtype=dtype,
                                 backend=backend)
    x = _padded(lengths, dtype)
    hx = random_layer_states(ref, len(lengths), dtype) if with_hx else None
    pack = _packer(lengths, enforce_sorted)
    expected = forward_backward(ref, x, hx, prepare=pack)
    got = forward_backward(fast, x, hx, prepare=pack)
    assert got["packed"] is not None
    _assert_packed_metadata_equal(got["packed"], expected["packed"])
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_packed_float32_batch_first(kind, backend):
    dtype = torch.float32
    lengths = [2, 6, 1, 5]
    ref, fast = make_layer_twins(kind, I, 16, 2, bidirectional=True, batch_first=True, dtype=dtype,
                                 backend=backend, **({"proj_size": 7} if kind == "lstm_proj" else {}))
    x = _padded(lengths, dtype, batch_first=True)
    hx = random_layer_states(ref, len(lengths), dtype)
    pack = _packer(lengths, False, batch_first=True)
    expected = forward_backward(ref, x, hx, prepare=pack)
    got = forward_backward(fast, x, hx, prepare=pack)
    _assert_packed_metadata_equal(got["packed"], expected["packed"])
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_padded_tail_ignored(kind, backend):
    """Values past each sequence's length must not influence anything (they are not in the pack)."""
    dtype = torch.float64
    lengths = [3, 1, 5]
    _, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    x = _padded(lengths, dtype)
    noisy = x.clone()
    for b, length in enumerate(lengths):
        noisy[length:, b] = torch.randn(noisy[length:, b].shape, dtype=dtype) * 100
    results = []
    for inp in (x, noisy):
        out, state = fast(_packer(lengths, False)(inp))
        padded, out_lengths = pad_packed_sequence(out)
        assert out_lengths.tolist() == lengths
        results.append([padded] + (list(state) if isinstance(state, tuple) else [state]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_matches_per_sequence_runs(kind, backend):
    """Each sequence's final state equals running that sequence alone, unpacked (bidirectional: the
    reverse direction starts at the sequence's own last step)."""
    dtype = torch.float64
    lengths = [4, 2, 6]
    _, fast = make_layer_twins(kind, I, H, 1, bidirectional=True, dtype=dtype, backend=backend)
    x = _padded(lengths, dtype)
    out, state = fast(_packer(lengths, False)(x))
    padded, _ = pad_packed_sequence(out)
    h = state[0] if isinstance(state, tuple) else state
    for b, length in enumerate(lengths):
        alone_out, alone_state = fast(x[:length, b : b + 1])
        alone_h = alone_state[0] if isinstance(alone_state, tuple) else alone_state
        torch.testing.assert_close(padded[:length, b], alone_out[:, 0], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(h[:, b], alone_h[:, 0], atol=1e-12, rtol=1e-10)
