"""The cuda backend (csrc/cuda: cuBLAS GEMMs + fused pointwise kernels) on CUDA tensors, against torch.nn:
parity forward and backward for every cell type in float64 and float32, packed sequences, odd sizes,
cells, gradcheck, float16/bfloat16 error bounded by torch.nn's own, torch.compile and opcheck.

Runs only where the extension was built with CUDA and a GPU is visible; everywhere else the module is
skipped (the kernels are still compiled by `make cuda-check`, and the extension by .ci/cuda-build).
"""

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastcells
from fastcells import dispatch
from fastcells.backends import cuda as cuda_backend
from conftest import (CELL_KINDS, LAYER_KINDS, assert_packed_unsorted_matches_torch,
                      assert_same_results, float64_results, forward_backward, low_precision_errors,
                      make_cell_twins, make_layer_twins, opcheck_lstm_layer_fwd, random_cell_states,
                      random_layer_states)
from op_args import B, H, layer_bwd_args, layer_fwd_args

if "cuda" not in fastcells.available_backends("cuda"):
    pytest.skip(f"the cuda backend is not usable here: {fastcells.backends.unusable_reason('cuda', 'cuda')}",
                allow_module_level=True)

DEVICE = "cuda"


def _to_device(hx):
    return tuple(h.to(DEVICE) for h in hx) if isinstance(hx, tuple) else hx.to(DEVICE)


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bidirectional_two_layers(kind, dtype):
    ref, fast = make_layer_twins(kind, 5, 7, 2, bidirectional=True, dtype=dtype, backend="cuda",
                                 device=DEVICE)
    x = torch.randn(4, 3, 5, dtype=dtype, device=DEVICE)
    hx = _to_device(random_layer_states(ref, 3, dtype))
    assert_same_results(forward_backward(fast, x, hx), float64_results(ref, x, hx), dtype)


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("lengths", [(4, 1, 3), (1,), (2, 2)])
def test_packed_unsorted(kind, lengths):
    assert_packed_unsorted_matches_torch(kind, lengths, "cuda", DEVICE)


@pytest.mark.parametrize("hidden", [1, 17, 300])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_odd_hidden_sizes_and_single_steps(kind, hidden):
    dtype = torch.float32
    ref, fast = make_layer_twins(kind, 3, hidden, 1, dtype=dtype, backend="cuda", device=DEVICE)
    for steps, batch in ((1, 1), (5, 2)):
        x = torch.randn(steps, batch, 3, dtype=dtype, device=DEVICE)
        assert_same_results(forward_backward(fast, x), forward_backward(ref, x), dtype,
                            atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("grad", [False, True])
def test_cells(kind, grad):
    dtype = torch.float64
    ref, fast = make_cell_twins(kind, 4, 6, dtype=dtype, backend="cuda", device=DEVICE)
    x = torch.randn(3, 4, dtype=dtype, device=DEVICE)
    hx = _to_device(random_cell_states(ref, 3, dtype))
    with torch.set_grad_enabled(grad):
        assert_same_results(forward_backward(fast, x, hx, backward=grad),
                            forward_backward(ref, x, hx, backward=grad), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_fused_cell_step(kind, dtype):
    """The fused inference step kernel (cell_step.cu) at odd sizes and over several 8-row batch tiles
    (70 rows: 9 tiles, the last partial), against torch.nn: float64 and float32 to rounding, bfloat16
    with its error against float64 bounded by torch.nn's own."""
    for batch, inputs, hidden in ((1, 5, 17), (9, 33, 100), (70, 8, 256)):
        ref, fast = make_cell_twins(kind, inputs, hidden, dtype=dtype, backend="cuda", device=DEVICE)
        x = torch.randn(batch, inputs, dtype=dtype, device=DEVICE)
        hx = _to_device(random_cell_states(ref, batch, dtype))
        with torch.no_grad():
            got, low = fast(x, hx), ref(x, hx)
            exact = copy.deepcopy(ref).double()(x.double(), tuple(h.double() for h in hx)
                                                if isinstance(hx, tuple) else hx.double())
        flat = lambda out: list(out) if isinstance(out, tuple) else [out]  # noqa: E731
        for a, b, c in zip(flat(got), flat(low), flat(exact)):
            if dtype == torch.bfloat16:
                error = lambda t: ((t.double() - c).abs().max() / c.abs().max()).item()  # noqa: E731
                assert error(a) <= max(4 * error(b), 4 * torch.finfo(dtype).eps), (batch, hidden)
            else:
                torch.testing.assert_close(a.double(), c, atol=1e-5 if dtype == torch.float32 else 1e-12,
                                           rtol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_gradcheck(kind):
    layer = make_layer_twins(kind, 3, 4, 2, bidirectional=True, backend="cuda", device=DEVICE)[1]
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_low_precision_error_bounded_by_torch_own(kind, dtype):
    fast_error, torch_error = low_precision_errors(kind, dtype, "cuda", DEVICE)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(dtype).eps), (fast_error, torch_error)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_compile_fullgraph(kind):
    dtype = torch.float32
    ref, fast = make_layer_twins(kind, 4, 6, 2, bidirectional=True, dtype=dtype, backend="cuda",
                                 device=DEVICE)
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(3, 2, 4, dtype=dtype, device=DEVICE)
    got = forward_backward(compiled, x)
    got["grad_params"] = {name.removeprefix("_orig_mod."): grad
                          for name, grad in got["grad_params"].items()}
    assert_same_results(got, forward_backward(ref, x), dtype, atol=1e-4, rtol=1e-4)


def _persistent_eps(dtype):
    """The unit roundoff the persistent kernels compute in: tf32's (2^-10) for float32, as torch.nn's
    cuDNN does by default (its own error can be smaller where cuDNN picks a non-tensor-core algorithm),
    else the dtype's."""
    return 2.0 ** -10 if dtype == torch.float32 else torch.finfo(dtype).eps


def _flat_outputs(result):
    """output, then the final states, of a layer's (output, hn) or (output, (hn, cn))."""
    out, states = result
    return [out, *(states if isinstance(states, tuple) else (states,))]


# (H, B): a partial block and batch tile, two batch tiles, warps with two k tiles, the benchmark's
# shape, the largest batch and hidden size the kernel takes, and 4, 8 or 16 whole blocks with a partial
# batch tile (clusters of 4 and 8 split the grid at H=64 (8 units a block), 128, 768 and 1024). H=128 is
# for float32's 16-unit LSTM and GRU kernels in clusters of 8: they do not fit at H=768 and 1024, and
# without H=128 they never ran in clusters on the H200 (2026-11-30; not yet rerun with it).
PERSISTENT_SHAPES = [(17, 3), (40, 9), (130, 2), (768, 16), (1024, 64), (64, 5), (128, 7)]


@pytest.mark.parametrize("sync", ["flags", "grid", "cluster4", "cluster8"])
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_persistent_layers(kind, dtype, units, sync, request):
    """The persistent tensor-core kernels (backends.cuda.use_persistent) in both directions, forward and
    backward, training and inference: error against float64 bounded by torch.nn's own in the same dtype
    (float32: on tf32 tensor cores, as torch.nn's cuDNN by default), as for the per-step path. The
    cluster variants run both kernels in thread-block clusters where the blocks split into them."""
    cuda_backend.use_persistent(True, *dispatch.persistent_variant(f"persistent {units} {sync}"))
    request.addfinalizer(lambda: cuda_backend.use_persistent(None))
    if dtype == torch.float32:  # the float32 kernel runs only where cuDNN may use tf32 (conftest: off)
        torch.backends.cudnn.allow_tf32 = True
        request.addfinalizer(lambda: setattr(torch.backends.cudnn, "allow_tf32", False))
    launches = fastcells._extension.C.cuda_persistent_launches()
    clustered = fastcells._extension.C.cuda_persistent_cluster_launches()
    for hidden, batch in PERSISTENT_SHAPES:
        fast_error, torch_error = low_precision_errors(kind, dtype, "cuda", DEVICE, hidden=hidden,
                                                       batch=batch, bidirectional=True)
        assert fast_error <= max(4 * torch_error, 4 * _persistent_eps(dtype)), (hidden, batch)
        ref, fast = make_layer_twins(kind, 8, hidden, 1, bidirectional=True, dtype=dtype,
                                     backend="cuda", device=DEVICE)
        x = torch.randn(6, batch, 8, dtype=dtype, device=DEVICE)
        with torch.no_grad():
            got, torch_low = fast(x), ref(x)
            exact = copy.deepcopy(ref).double()(x.double())
        for a, b, c in zip(_flat_outputs(got), _flat_outputs(torch_low), _flat_outputs(exact)):
            error = lambda t: ((t.double() - c).abs().max() / c.abs().max()).item()  # noqa: E731
            assert error(a) <= max(4 * error(b), 4 * _persistent_eps(dtype)), (hidden, batch)
    assert fastcells._extension.C.cuda_persistent_launches() > launches, "the kernel never ran"
    if sync.startswith("cluster"):
        assert fastcells._extension.C.cuda_persistent_cluster_launches() > clustered, "never in clusters"


@pytest.mark.parametrize("sync", ["flags", "grid", "cluster8"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_persistent_layers_packed(kind, sync, request):
    """The persistent kernels on packed sequences (per-step batch sizes; late starters in the reverse
    direction), forward and gradients, error against float64 bounded by torch.nn's own in bfloat16
    (in clusters: H=64, 8 blocks)."""
    cuda_backend.use_persistent(True, *dispatch.persistent_variant(f"persistent 8 {sync}"))
    request.addfinalizer(lambda: cuda_backend.use_persistent(None))
    dtype, launches = torch.bfloat16, fastcells._extension.C.cuda_persistent_launches()
    hidden = 64 if sync.startswith("cluster") else 40
    ref, fast = make_layer_twins(kind, 8, hidden, 1, bidirectional=True, dtype=dtype, backend="cuda",
                                 device=DEVICE)
    exact = copy.deepcopy(ref).double()
    seqs = [torch.randn(n, 8, device=DEVICE) for n in (6, 4, 4, 1)]
    results = []
    for module, cast in ((fast, dtype), (ref, dtype), (exact, torch.float64)):
        leaves = [s.to(cast).requires_grad_() for s in seqs]
        out, _ = module(pack_sequence(leaves))
        weights = torch.linspace(-1, 1, out.data.numel(), device=DEVICE).view_as(out.data)
        (out.data.float() * weights).sum().backward()
        results.append([out.data.double(), *(leaf.grad.double() for leaf in leaves)])
    for got, low, want in zip(*results):
        error = lambda t: ((t - want).abs().max() / want.abs().max()).item()  # noqa: E731
        assert error(got) <= max(4 * error(low), 4 * _persistent_eps(dtype))
    assert fastcells._extension.C.cuda_persistent_launches() >= launches + 4  # 2 directions, fwd and bwd


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_auto_runs_torch_where_the_table_has_it_faster(kind):
    """Under backend "auto", a layer on CUDA tensors takes torch's own path where the dispatch table
    (fastcells/dispatch.py) measured torch.nn faster, or has no entry: then it computes exactly what
    torch.nn computes, and no fastcells kernel runs."""
    ref, fast = make_layer_twins(kind, 8, 48, 1, dtype=torch.bfloat16, device=DEVICE)  # backend "auto"
    x = torch.randn(5, 3, 8, dtype=torch.bfloat16, device=DEVICE)
    launches = fastcells._extension.C.cuda_persistent_launches()
    with torch.no_grad():
        got, expected = fast(x), ref(x)
    torch.testing.assert_close(_flat_outputs(got), _flat_outputs(expected), atol=0, rtol=0)
    assert fastcells._extension.C.cuda_persistent_launches() == launches


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_auto_cells_run_torch_where_the_table_has_no_faster_step(kind):
    """The same for cells: without a measured faster fused step, a cell on CUDA tensors under "auto"
    runs torch.nn's own forward, and equals torch.nn exactly."""
    ref, fast = make_cell_twins(kind, 6, 40, dtype=torch.bfloat16, device=DEVICE)
    x = torch.randn(3, 6, dtype=torch.bfloat16, device=DEVICE)
    with torch.no_grad():
        got, expected = fast(x), ref(x)
    flat = lambda out: list(out) if isinstance(out, tuple) else [out]  # noqa: E731
    torch.testing.assert_close(flat(got), flat(expected), atol=0, rtol=0)


def test_ops_pass_opcheck():
    opcheck_lstm_layer_fwd(torch.ops.fastcells.lstm_layer_fwd, DEVICE)


def test_bad_arguments_raise_instead_of_crashing():
    h = torch.randn(2, 4, device=DEVICE)
    ints = lambda *shape: torch.ones(*shape, dtype=torch.int32, device=DEVICE)  # noqa: E731
    with pytest.raises(RuntimeError, match="must be float32, float64, float16 or bfloat16"):
        torch.ops.fastcells.rnn_layer_fwd(ints(6, 3), ints(4, 3), None, None, h.int(), ints(4, 4),
                                          torch.full((3,), 2), False, False, False)
    with pytest.raises(RuntimeError, match="w_hh must be on"):
        torch.ops.fastcells.rnn_layer_fwd(torch.randn(6, 3, device=DEVICE),
                                          torch.randn(4, 3, device=DEVICE), None, None, h,
                                          torch.randn(4, 4), torch.full((3,), 2), False, False, False)


def _to_device_except(args, cpu_index):
    """``args`` with every tensor moved to the GPU but the one at ``cpu_index`` (batch_sizes)."""
    return tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) and i != cpu_index else a
                 for i, a in enumerate(args))


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_shape_errors_raise_instead_of_crashing(family):
    """A wrong shape is a RuntimeError naming the argument, as on the CPU. On an H200 the backward op
    given the empty saved of a training=False forward crashed the process instead (see
    bench/results/nvidia-h200/README.md)."""
    lstm = family == "lstm"
    op, args = layer_bwd_args(family, torch.float64, reverse=False)
    saved_index, sizes_index = (3, 10) if lstm else (2, 8)  # argument positions: csrc/ops.cpp
    args = _to_device_except(args, sizes_index)
    empty = torch.empty(0, dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="saved must have shape"):
        op(*args[:saved_index], empty, *args[saved_index + 1:])
    op, args = layer_fwd_args(family, torch.float64, reverse=False, training=False)
    args = _to_device_except(args, 8 if lstm else 6)  # batch_sizes stays on the CPU
    wide_h0 = torch.randn(B, H + 1, dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="must have shape"):
        op(*args[:4], wide_h0, *args[5:])  # h0 is argument 4
