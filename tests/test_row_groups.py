"""The cpu backend's layer ops split a batch of at least 4 rows per thread between the threads, each
thread running the whole sequence on its own rows (csrc/cpu/row_groups.h). The other parity tests use
batches of 3-4 rows, which never split; these use batches that do, with uneven group sizes and
packed sequences whose rows end at different steps, at several thread counts, against torch.nn."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import (LAYER_KINDS, assert_same_results, forward_backward, make_layer_twins,
                      random_layer_states)

pytestmark = pytest.mark.skipif("cpu" not in __import__("fastcells").available_backends(),
                                reason="the cpu backend is not built")

I, H = 6, 9
# Lengths of 13 sequences: a few long ones and many short ones, so balancing the work between groups
# gives groups of very different row counts; one length-1 row ends after the first step.
LENGTHS = [11, 10, 10, 7, 6, 6, 5, 4, 3, 3, 2, 2, 1]


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads{n}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _assert_matches_torch(kind, lengths, packed, seed, training=True):
    """A 2-layer bidirectional float64 layer on ``len(lengths)`` sequences of up to ``max(lengths)`` steps
    (packed with those lengths, or padded): outputs, states and (training) gradients against torch.nn."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend="cpu")
    batch = len(lengths)
    x = torch.randn(max(lengths), batch, I, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    hx = random_layer_states(ref, batch, dtype)
    prepare = None
    if packed:
        def prepare(leaf):
            return pack_padded_sequence(leaf, torch.tensor(lengths), enforce_sorted=False)
    with torch.set_grad_enabled(training):
        expected = forward_backward(ref, x, hx, prepare=prepare, backward=training)
        got = forward_backward(fast, x, hx, prepare=prepare, backward=training)
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_split_batch_matches_torch(kind, packed, threads):
    _assert_matches_torch(kind, LENGTHS, packed, seed=7)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_float32_groups_of_gemm_tiles(kind, threads):
    """float32 with 2 x 16 rows: each group's per-step product runs the packed GEMM's row tiles."""
    dtype = torch.float32
    ref, fast = make_layer_twins(kind, 24, 40, 1, dtype=dtype, backend="cpu")
    x = torch.randn(5, 32, 24, generator=torch.Generator().manual_seed(8), dtype=dtype)
    expected = forward_backward(ref, x)
    got = forward_backward(fast, x)
    assert_same_results(got, expected, dtype, atol=2e-5, rtol=2e-5)


# 39 sequences of up to 75 steps: layers of more than 4 rows project their input rows up to 32 steps
# at a time (csrc/cpu/step_input.h: steps_at_once), so each row group runs several chunks of steps,
# the last one partial, with rows ending inside a chunk; packed and reversed, a chunk's rows are not
# adjacent in the input and are gathered first.
LONG_LENGTHS = [75, 70, 70, 64, 40, 33, 32, 31, 20, 5, 2, 2, 1] * 3


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_per_step_projections_in_chunks_of_steps_match_torch(kind, packed, training, threads):
    _assert_matches_torch(kind, LONG_LENGTHS, packed, seed=9, training=training)
