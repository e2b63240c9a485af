"""Results that do not depend on the number of threads (issue 16): a CI machine with another core count
must reproduce a user's numbers exactly, as torch.nn's CPU layers do. The cpu backend splits the batch
into row groups (one per thread) and the weight rows of small products between threads; every output
element must still be summed the same way. Checked with 1, 2 and 3 threads at batch and hidden sizes on
both sides of each threshold of that split (csrc/cpu/row_groups.h, step_input.h, gemm_cpu.h,
matmul_cpu.h): outputs and final states bitwise, gradients at least as close as torch.nn's own."""

import copy

import pytest
import torch

import fastcells
from conftest import make_layer_twins
from fastcells import environment

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)

# (hidden, batch). Thresholds: more than 4 rows take the packed GEMM (kSmallRows); row groups of at
# least 4 rows where W_hh takes at most 128 KiB (LSTM H <= 90), else 6; no groups above 2 MiB (LSTM
# H > 362); more than 4 rows project their input per step, a chunk of steps at a time, at most 4 up
# front (step_input.h); odd hidden sizes leave partial blocks of 8 weight rows in the mat-vec split; an
# LSTM of at most 4 rows splits its units between two threads where H is a multiple of 8, a step has
# at least 2^14 multiply-adds and the call 2^18 (unit_split.h: at the tests' 16 steps, H=40, B=4 splits
# 24 + 16 units, and H=64, B=1 is the least work split).
STEPS = 16
SHAPES = [(37, 1), (37, 4), (37, 5), (64, 7), (64, 8), (64, 9), (90, 8), (91, 8), (200, 11), (200, 12),
          (200, 13), (200, 20), (64, 31), (64, 32), (362, 12), (363, 12), (64, 1), (128, 2), (40, 4)]
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def _results(module, x, threads, training):
    """Outputs, final states and (training) gradients of one call on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(training)
        with torch.set_grad_enabled(training):
            out, states = module(leaf)
        flat = [out, *(states if isinstance(states, tuple) else (states,))]
        if training:
            weights = torch.linspace(-1, 1, out.numel()).view_as(out)
            (out * weights).sum().backward()
            flat += [leaf.grad, *(p.grad for p in module.parameters())]
        return [t.detach() for t in flat]
    finally:
        torch.set_num_threads(before)


def _spread(results, threads):
    """Per result, the largest difference between 1 thread's and ``threads`` threads' values."""
    return [(a - b).abs().max().item() for a, b in zip(results[1], results[threads])]


@pytest.mark.parametrize("hidden,batch", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_inference_is_bitwise_the_same_with_1_2_and_3_threads(kind, hidden, batch):
    torch.manual_seed(0)
    _, fast = make_layer_twins(kind, 7, hidden, 2, dtype=torch.float32, backend="cpu")
    x = torch.randn(STEPS, batch, 7)
    results = {threads: _results(fast, x, threads, False) for threads in (1, 2, 3)}  # inference
    for threads in (2, 3):
        assert _spread(results, threads) == [0.0] * len(results[1]), threads


@pytest.mark.parametrize("hidden,batch", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_vary_with_threads_no_more_than_torch_nn_own(kind, hidden, batch):
    """Training: outputs and final states bitwise; gradients as close as torch.nn's own between thread
    counts (its weight and input gradients are GEMMs whose result depends on the thread count; so are
    ours where they are at::mm's: FASTCELLS_CPU_FLOAT_GEMM), or within a few float32 roundings of their
    size, more for longer sums: MKL on Intel CPUs splits a long sum between threads where the product is
    small (dx = dG @ W_ih sums 3H = 1086 terms at GRU H=362; 1 and 2 threads differed by 10 roundings of
    the largest dx there, torch.nn's by 7)."""
    torch.manual_seed(0)
    ref, fast = make_layer_twins(kind, 7, hidden, 2, dtype=torch.float32, backend="cpu")
    x = torch.randn(STEPS, batch, 7)
    ours = {threads: _results(fast, x, threads, True) for threads in (1, 2, 3)}
    theirs = {threads: _results(ref, x, threads, True) for threads in (1, 2, 3)}
    states = 3 if kind == "lstm" else 2
    longest_sum = max({"lstm": 4, "gru": 3}.get(kind, 1) * hidden, 5 * batch)  # dx's or the weights'
    roundings = 8 * max(1.0, (longest_sum / 512) ** 0.5)
    for threads in (2, 3):
        assert _spread(ours, threads)[:states] == [0.0] * states
        scale = [t.abs().max().item() for t in ours[1]]
        for name, (mine, torch_own, size) in enumerate(zip(_spread(ours, threads), _spread(theirs, threads),
                                                           scale)):
            assert mine <= max(torch_own, roundings * torch.finfo(torch.float32).eps * size), (name, threads)


@pytest.mark.skipif(environment.cpu_float_gemm() != "packed",
                    reason="the float32 GEMMs over all rows are at::mm's here (FASTCELLS_CPU_FLOAT_GEMM=packed: ours)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden,batch", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_bitwise_the_same_on_our_float_gemm(kind, hidden, batch, dtype):
    """Where the backward's GEMMs over all rows (weight gradients, dx) and the input projections up front
    are ours (csrc/cpu/float_gemm.h, summed alike for any split of its rows between threads), the whole
    training call is bitwise the same with 1, 2 and 3 threads: gradients too, as torch.nn's are not. So is
    a float16 layer's, whose backward's operands that GEMM widens."""
    if dtype == torch.float16 and environment.cpu_f16_backward_gemm() != "packed":
        pytest.skip("float16 layers' backward GEMMs on at::mm here (FASTCELLS_CPU_BF16_GEMM=aten)")
    torch.manual_seed(0)
    _, fast = make_layer_twins(kind, 7, hidden, 2, dtype=torch.float32, backend="cpu")
    fast = fast.to(dtype)
    x = torch.randn(STEPS, batch, 7).to(dtype)
    results = {threads: _results(fast, x, threads, True) for threads in (1, 2, 3)}
    for threads in (2, 3):
        assert _spread(results, threads) == [0.0] * len(results[1]), threads


# (hidden, batch, steps): layers of 3-4 rows a step and at least 64 rows in all, whose float32 W_hh is
# packed for the GEMM with AVX2 or AVX-512 (gemm_cpu.h's packs_small_batch); the LSTM's two threads then
# each multiply their units' columns of it, cutting a panel of 32 columns at H=200 (units 0-103 and
# 104-199) and H=72 (0-39, 40-71). At 1 or 2 rows a step the mat-vecs stay (B=2, T=32 and B=1, T=70).
PACKED_SMALL = [(200, 3, 24), (72, 4, 20), (64, 3, 22), (256, 4, 16), (64, 2, 32), (64, 1, 70)]


@pytest.mark.parametrize("hidden,batch,steps", PACKED_SMALL)
@pytest.mark.parametrize("kind", KINDS)
def test_packed_small_batches_are_bitwise_the_same_with_1_2_and_3_threads(kind, hidden, batch, steps):
    """Outputs and final states bitwise for any thread count, in inference and in training's forward, which
    are also bitwise each other's; and as close to float64 as torch.nn's float32 layer is."""
    torch.manual_seed(0)
    ref, fast = make_layer_twins(kind, 24, hidden, 1, dtype=torch.float32, backend="cpu")
    x = torch.randn(steps, batch, 24)
    states = 3 if kind == "lstm" else 2
    inference = {threads: _results(fast, x, threads, False) for threads in (1, 2, 3)}
    training = {threads: _results(fast, x, threads, True)[:states] for threads in (1, 2)}
    for threads in (2, 3):
        assert _spread(inference, threads) == [0.0] * states, threads
    assert all(torch.equal(a, b) for a, b in zip(inference[1], training[1]))
    assert all(torch.equal(a, b) for a, b in zip(training[1], training[2]))
    with torch.no_grad():
        exact = copy.deepcopy(ref).double()(x.double())
        theirs = ref(x)
    exact = [exact[0], *(exact[1] if isinstance(exact[1], tuple) else (exact[1],))]
    theirs = [theirs[0], *(theirs[1] if isinstance(theirs[1], tuple) else (theirs[1],))]
    for mine, torch_own, truth in zip(inference[1], theirs, exact):
        bound = max(4 * (torch_own.double() - truth).abs().max().item(), 1e-6)
        assert (mine.double() - truth).abs().max().item() <= bound


def test_large_layers_are_bitwise_the_same_with_1_and_2_threads():
    """Large input projections go to at::mm (csrc/cpu/step_input.h): its results, too, must not depend
    on the number of threads; GRU training keeps the up-front projection at any batch."""
    torch.manual_seed(0)
    for kind in ("gru", "lstm"):
        _, fast = make_layer_twins(kind, 64, 90, 1, dtype=torch.float32, backend="cpu")
        x = torch.randn(40, 33, 64)  # 1320 rows x 64 x 270 or 360 multiply-adds: above the threshold
        results = {threads: _results(fast, x, threads, True) for threads in (1, 2)}
        assert _spread(results, 2)[:2] == [0.0, 0.0], kind


def test_packed_batch_is_bitwise_the_same_with_1_and_2_threads():
    """A packed batch shrinks step by step, so row groups run steps with few rows left."""
    torch.manual_seed(0)
    _, fast = make_layer_twins("lstm", 7, 64, 1, dtype=torch.float32, backend="cpu")
    seqs = [torch.randn(n, 7) for n in (9, 9, 8, 7, 7, 5, 4, 3, 3, 2, 1, 1)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs)
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outputs.append(fast(packed)[0].data)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("training", [False, True])
def test_small_packed_batch_split_by_units_is_bitwise_the_same_with_1_and_2_threads(training):
    """An LSTM of at most 4 rows runs its units on two threads (csrc/cpu/unit_split.h) with h in two
    buffers: sequences that end early (forward) or start late (reverse) must keep their state in both,
    so the final states of all rows, and the outputs, are those of one thread's loop. Its backward
    splits the units too: the gradients of the initial states come out of that recurrence alone."""
    torch.manual_seed(0)
    ref, fast = make_layer_twins("lstm", 7, 64, 1, dtype=torch.float32, backend="cpu", bidirectional=True)
    seqs = [torch.randn(n, 7) for n in (17, 12, 5, 1)]  # 35 rows: enough work to split (unit_split.h)
    packed = torch.nn.utils.rnn.pack_sequence(seqs)
    states = tuple(torch.randn(2, 4, 64) for _ in range(2))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = tuple(s.clone().requires_grad_(training) for s in states)
            with torch.set_grad_enabled(training):
                out, (h, c) = fast(packed, leaves)
            results.append([out.data.detach(), h.detach(), c.detach()])
            if training:
                weights = torch.linspace(-1, 1, out.data.numel()).view_as(out.data)
                ((out.data * weights).sum() + h.sum() - c.sum()).backward()
                results[-1] += [leaf.grad for leaf in leaves]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    with torch.no_grad():
        expected, (h, c) = ref(packed, states)
    torch.testing.assert_close(results[1][:3], [expected.data, h, c], rtol=1e-5, atol=1e-5)
