"""torch.autocast: fastcells computes in, and returns, the dtypes torch.nn would (CPU bfloat16 here; CUDA
float16/bfloat16 on a GPU), its low-precision error bounded by a small multiple of the autocast dtype's
rounding, against float64; gradients reach the float32 parameters; autocast stays as the caller set it.

The expected dtypes come from torch.nn itself, run under the same autocast in the same test; where
torch.nn cannot run (oneDNN's bfloat16 LSTM needs AVX-512 bf16 on the CPU), from the dtypes torch.nn was
measured to return (TORCH_NN_DTYPES, checked against torch.nn wherever it runs), never from
fastcells.autocast.
"""

import logging

import pytest
import torch

import fastcells
from fastcells import autocast as fc_autocast

from conftest import make_cell_twins, make_layer_twins

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}
CELLS = {"lstm": "LSTMCell", "gru": "GRUCell", "rnn_tanh": "RNNCell"}


# The dtype torch.nn returns under autocast, as measured: "autocast" is the autocast dtype, otherwise a
# fixed dtype. CPU: torch 2.13 (oneDNN's LSTM layer and RNN's and RNNCell's products are on autocast's
# list; GRU, LSTMCell and GRUCell mix those products with float32 states and return float32). CUDA:
# torch 2.11 on an H200 (cuDNN's layers cast to float16 whatever the autocast dtype; the cells' ops are
# on autocast's lower-precision list).
TORCH_NN_DTYPES = {
    "cpu": {"LSTM": "autocast", "GRU": torch.float32, "RNN_TANH": "autocast", "RNN_RELU": "autocast",
            "LSTMCell": torch.float32, "GRUCell": torch.float32, "RNNCell": "autocast"},
    "cuda": {"LSTM": torch.float16, "GRU": torch.float16, "RNN_TANH": torch.float16,
             "RNN_RELU": torch.float16, "LSTMCell": "autocast", "GRUCell": "autocast", "RNNCell": "autocast"},
}


def _measured_dtype(torch_kind, device, autocast_dtype):
    dtype = TORCH_NN_DTYPES[device][torch_kind]
    return autocast_dtype if dtype == "autocast" else dtype


def _autocast_dtypes(device):
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


def _outputs(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for value in result for t in _outputs(value)]


@pytest.fixture(autouse=True)
def _quiet_fallback(caplog):
    """The cpu backend has no bfloat16 kernels: auto logs its fallback to reference once."""
    caplog.set_level(logging.ERROR, logger="fastcells")


def _case(family, kind, device):
    twins = (make_layer_twins(kind, 4, 6, 2, dtype=torch.float32, device=device) if family == "layer"
             else make_cell_twins(kind, 4, 6, dtype=torch.float32, device=device))
    x = torch.randn((5, 3, 4) if family == "layer" else (3, 4), device=device)
    expected_kind = LAYERS[kind] if family == "layer" else CELLS[kind]
    return twins, x, expected_kind


PARAMS = [("layer", kind) for kind in LAYERS] + [("cell", kind) for kind in CELLS]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,kind", PARAMS)
def test_output_dtypes_and_error(family, kind, device):
    (ref, fast), x, torch_kind = _case(family, kind, device)
    for dtype in _autocast_dtypes(device):
        with torch.autocast(device, dtype=dtype):
            outs = _outputs(fast(x))
            assert torch.is_autocast_enabled(device), "autocast must stay on for the caller"
        measured = _measured_dtype(torch_kind, device, dtype)
        torch_outs = None
        try:  # torch.nn itself, where it runs (oneDNN's bf16 LSTM needs AVX-512 bf16 on the CPU)
            with torch.autocast(device, dtype=dtype):
                torch_outs = _outputs(ref(x))
        except RuntimeError:
            pass
        if torch_outs is not None:
            expected = [o.dtype for o in torch_outs]
            # the table stays true where torch.nn runs
            assert expected == [measured] * len(expected), (torch_kind, dtype, expected, measured)
        else:
            expected = [measured] * len(outs)
        assert [o.dtype for o in outs] == expected, (torch_kind, dtype)
        reference = _outputs(ref.double()(x.double()))
        ref.float()
        error = lambda results: max((a.double() - b).abs().max().item()  # noqa: E731
                                    for a, b in zip(results, reference, strict=True))
        # Bounded by a small multiple of torch.nn's own error, or where torch.nn does not run, by a few
        # dozen ulps of the dtype (inputs and weights rounded to it, rounding at every step).
        eps = torch.finfo(measured).eps
        bound = 4 * error(torch_outs) if torch_outs is not None else 32 * eps
        bound = max(bound, 4 * eps)
        assert error(outs) <= bound, (torch_kind, measured, error(outs), bound)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,kind", [("layer", "lstm"), ("layer", "rnn_tanh"), ("cell", "gru")])
def test_gradients_reach_float32_parameters(family, kind, device):
    (_, fast), x, _ = _case(family, kind, device)
    with torch.autocast(device, dtype=_autocast_dtypes(device)[0]):
        loss = sum(o.float().sum() for o in _outputs(fast(x)))
    loss.backward()
    for name, p in fast.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


def test_packed_sequence_under_autocast():
    from torch.nn.utils.rnn import pack_padded_sequence

    ref, fast = make_layer_twins("rnn_tanh", 4, 6, dtype=torch.float32)
    x = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 2, 4]), enforce_sorted=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = fast(x)
        torch_out, torch_h = ref(x)
    assert out.data.dtype == torch_out.data.dtype == torch.bfloat16
    assert h.dtype == torch_h.dtype == torch.bfloat16
    assert torch.equal(out.batch_sizes, torch_out.batch_sizes)
    torch.testing.assert_close(out.data.float(), torch_out.data.float(), atol=0.05, rtol=0.05)


def test_without_autocast_nothing_is_cast():
    layer = fastcells.GRU(4, 6)
    out, h = layer(torch.randn(5, 3, 4))
    assert out.dtype == h.dtype == torch.float32


def test_cuda_rule_follows_what_torch_nn_returns_on_cuda(monkeypatch):
    """The CUDA rule, checkable without a GPU, against the dtypes measured with torch.nn on an H200:
    under autocast cuDNN's layers return float16 whatever the autocast dtype, the cells the autocast
    dtype."""
    monkeypatch.setattr(fc_autocast, "is_enabled", lambda device_type: True)
    for autocast_dtype in (torch.bfloat16, torch.float16):
        monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: autocast_dtype)
        for kind in list(LAYERS.values()) + list(CELLS.values()):
            assert (fc_autocast.compute_dtype(kind, "cuda", torch.float32)
                    == _measured_dtype(kind, "cuda", autocast_dtype)), (kind, autocast_dtype)
