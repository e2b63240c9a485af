"""bfloat16 and float16 in the cpu backend (issue 16): 16-bit inputs, weights, outputs and saved
activations, float32 math and states inside (csrc/cpu/register_cpu.cpp). The error against float64 is
bounded by torch.nn's own in the same dtype, as on the GPU; `auto` picks the cpu backend for them."""

import pytest
import torch

import fastcells
from fastcells import backends
from conftest import OpRecorder, low_precision_errors, make_cell_twins

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)

DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_layer_error_bounded_by_torch_own(kind, dtype, bidirectional):
    fast_error, torch_error = low_precision_errors(kind, dtype, "cpu", "cpu", hidden=37, batch=5,
                                                   bidirectional=bidirectional)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(dtype).eps), (fast_error, torch_error)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_cell_steps_error_bounded_by_torch_own(kind, dtype):
    ref, fast = make_cell_twins(kind, 6, 37, dtype=torch.float64, backend="cpu")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype).double())
    fast.load_state_dict(ref.state_dict())
    low = make_cell_twins(kind, 6, 37, dtype=dtype)[0]
    low.load_state_dict(ref.state_dict())
    fast = fast.to(dtype)
    x = torch.randn(5, 6).to(dtype)
    flat = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.no_grad():
        exact = flat(ref(x.double()))
        errors = [(flat(m(x)).double() - exact).abs().max().item() for m in (fast, low)]
    assert errors[0] <= max(4 * errors[1], 4 * torch.finfo(dtype).eps * exact.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_runs_the_cpu_kernels_and_keeps_16_bits(dtype):
    """auto picks the compiled cpu ops (not the reference loop) for 16-bit tensors; outputs, states,
    gradients and the saved activations (half the memory of float32's) are in that dtype."""
    assert backends.select("auto", "cpu", dtype).NAME == "cpu"
    layer = fastcells.LSTM(6, 37, dtype=dtype)
    x = torch.randn(4, 3, 6, dtype=dtype, requires_grad=True)
    with OpRecorder() as ops:
        out, (h, c) = layer(x)
        out.float().sum().backward()
    assert "lstm_layer_fwd" in ops.names and "lstm_layer_bwd" in ops.names
    assert out.dtype == h.dtype == c.dtype == x.grad.dtype == layer.weight_hh_l0.grad.dtype == dtype
    op_args = (x.detach().view(12, 6), layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0,
               torch.zeros(3, 37, dtype=dtype), torch.zeros(3, 37, dtype=dtype), layer.weight_hh_l0, None,
               torch.full((4,), 3), False, True)
    saved = torch.ops.fastcells.lstm_layer_fwd(*op_args)[3]
    assert saved.dtype == dtype


def test_mixed_dtypes_are_refused_with_the_argument_named():
    x = torch.randn(6, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="w_hh must have dtype BFloat16 like x, got Float"):
        torch.ops.fastcells.rnn_layer_fwd(x, torch.randn(5, 4, dtype=torch.bfloat16), None, None,
                                          torch.zeros(3, 5, dtype=torch.bfloat16), torch.randn(5, 5),
                                          torch.full((2,), 3), False, False, False)
