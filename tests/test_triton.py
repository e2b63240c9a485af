"""The triton backend's own concerns: both of its modes (persistent sequence kernels and alternating
GEMM + fused step kernel) against torch.nn, low-precision parity bounded by torch.nn's own error, and
torch.compile. The shared parity suites (test_parity_*, test_packed, test_gradcheck, ...) run it too.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1), so shapes stay small.
"""

import pytest
import torch

import fastcells
from conftest import (assert_packed_unsorted_matches_torch, assert_same_results, float64_results,
                      forward_backward, low_precision_errors, make_layer_twins,
                      opcheck_lstm_layer_fwd, random_layer_states)

if "triton" not in fastcells.available_backends("cuda" if torch.cuda.is_available() else "cpu"):
    pytest.skip("the triton backend is not usable here", allow_module_level=True)

from fastcells.kernels import launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ["persistent", "alternating"]


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
    """Forces one of the two modes (alternating: no layer counts as small enough to be persistent)."""
    if request.param == "alternating":
        monkeypatch.setattr(launch, "MAX_HIDDEN", {})
    else:
        monkeypatch.setattr(launch, "MAX_HIDDEN", {dtype: 64 for dtype in launch.MAX_HIDDEN})
    return request.param


def test_mode_choice_by_size_and_projection():
    assert launch.persistent(torch.float32, 32, projected=False)
    assert not launch.persistent(torch.float32, 33, projected=False)
    assert launch.persistent(torch.bfloat16, 64, projected=False)
    assert not launch.persistent(torch.float32, 8, projected=True)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bidirectional_two_layers(kind, dtype, mode):
    ref, fast = make_layer_twins(kind, 5, 7, 2, bidirectional=True, dtype=dtype, backend="triton",
                                 device=DEVICE)
    x = torch.randn(4, 3, 5, dtype=dtype, device=DEVICE)
    hx = random_layer_states(ref, 3, dtype)
    hx = tuple(h.to(DEVICE) for h in hx) if isinstance(hx, tuple) else hx.to(DEVICE)
    assert_same_results(forward_backward(fast, x, hx), float64_results(ref, x, hx), dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths", [(4, 1, 3), (1,), (2, 2)])
def test_packed_unsorted(kind, lengths, mode):
    assert_packed_unsorted_matches_torch(kind, lengths, "triton", DEVICE)


@pytest.mark.parametrize("hidden", [1, 17, 40])
def test_odd_and_large_hidden_sizes(hidden):
    """H=40 exceeds MAX_HIDDEN[float32]: the layer falls back to alternating mode by itself."""
    dtype = torch.float32
    ref, fast = make_layer_twins("lstm", 3, hidden, 1, dtype=dtype, backend="triton", device=DEVICE)
    x = torch.randn(3, 2, 3, dtype=dtype, device=DEVICE)
    assert_same_results(forward_backward(fast, x), forward_backward(ref, x), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_low_precision_error_bounded_by_torch_own(kind, dtype, mode):
    """In bf16/fp16 fastcells may be at most a small multiple of torch.nn's own error in that dtype,
    both measured against torch.nn in float64 on the same (rounded) weights and input."""
    if dtype == torch.float16 and DEVICE == "cpu":
        pytest.skip("torch.nn's float16 RNNs do not run on CPU")
    fast_error, torch_error = low_precision_errors(kind, dtype, "triton", DEVICE)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(dtype).eps), (fast_error, torch_error)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_compile_fullgraph(kind):
    dtype = torch.float32
    ref, fast = make_layer_twins(kind, 4, 6, 2, bidirectional=True, dtype=dtype, backend="triton",
                                 device=DEVICE)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 4, dtype=dtype, device=DEVICE)
    got = forward_backward(compiled, x)
    got["grad_params"] = {name.removeprefix("_orig_mod."): grad
                          for name, grad in got["grad_params"].items()}
    assert_same_results(got, forward_backward(ref, x), dtype)


def test_ops_pass_opcheck():
    opcheck_lstm_layer_fwd(torch.ops.fastcells.triton_lstm_layer_fwd, DEVICE,
                           test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
