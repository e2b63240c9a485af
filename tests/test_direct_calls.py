"""Inference calls of the cpu backend go to fastcells._C straight, past the dispatcher (layers and cell
steps; backends/cpu.py), and only where nothing records or transforms op calls: under an op recorder
(a dispatch mode), torch.jit.trace or with gradients they go through torch.ops. Results are the same
either way."""

import types

import pytest
import torch

import fastcells
from fastcells import _extension
from conftest import OpRecorder

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)


class _CountingC(types.SimpleNamespace):
    """fastcells._C with its layer forward ops (and the whole-stack call) counted."""

    def __init__(self, real):
        super().__init__(calls=[])
        self._real = real

    def __getattr__(self, name):
        function = getattr(self._real, name)
        if not name.endswith("_layer_fwd") and name != "stack_inference":
            return function

        def counted(*args):
            self.calls.append(name)
            return function(*args)
        return counted


@pytest.fixture
def counting_c(monkeypatch):
    counting = _CountingC(_extension.C)
    monkeypatch.setattr(_extension, "C", counting)
    return counting


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_inference_layers_call_the_extension_directly_with_the_same_result(name, counting_c):
    """On the full path (here a packed sequence's) each layer op goes to fastcells._C straight."""
    torch.manual_seed(0)
    layer = getattr(fastcells, name)(4, 5, 2, backend="cpu")
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 2]))
    with torch.no_grad():
        direct = layer(x)[0]
    assert counting_c.calls == [f"{name.lower()}_layer_fwd"] * 2  # one per layer
    with torch.no_grad(), OpRecorder() as ops:  # a dispatch mode: calls must go where it sees them
        recorded = layer(x)[0]
    assert ops.names == [f"{name.lower()}_layer_fwd"] * 2 and len(counting_c.calls) == 2
    torch.testing.assert_close(direct.data, recorded.data, rtol=0, atol=0)


def test_training_calls_go_through_the_autograd_ops(counting_c):
    layer = fastcells.GRU(4, 5, backend="cpu")
    out, _ = layer(torch.randn(3, 2, 4))
    out.sum().backward()
    assert counting_c.calls == [] and layer.weight_hh_l0.grad is not None


def _full_path_ran(*args):
    raise AssertionError("the call took the full path")


def _states(name, layers, batch, hidden, dtype):
    h = torch.randn(layers, batch, hidden, dtype=dtype)
    return (h, torch.randn(layers, batch, hidden, dtype=dtype)) if name == "LSTM" else h


def _flat(out):
    return [out[0], *(out[1] if isinstance(out[1], tuple) else (out[1],))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_first,bidirectional", [(False, False), (True, True)])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("steps,with_states", [(1, True), (3, True), (3, False)])
def test_inference_calls_take_the_direct_path_with_the_full_paths_results(name, batch_first, bidirectional,
                                                                          dtype, steps, with_states,
                                                                          counting_c):
    """An inference call of a plain tensor (a generation loop's, with its states; a whole sequence's,
    often without: they start at zeros) runs the whole stack in one call of fastcells._C from the
    module's forward: bitwise the outputs and states of the full path (here under an op recorder, which
    sends it through torch.ops)."""
    torch.manual_seed(0)
    layer = getattr(fastcells, name)(4, 5, 2, batch_first=batch_first, bidirectional=bidirectional,
                                     backend="cpu").to(dtype).eval()
    x = torch.randn((2, steps, 4) if batch_first else (steps, 2, 4), dtype=dtype)
    hx = _states(name, 4 if bidirectional else 2, 2, 5, dtype) if with_states else None
    with torch.no_grad(), pytest.MonkeyPatch.context() as monkeypatch:
        # the full path's Python must not run
        monkeypatch.setattr(fastcells.modules._FusedRNNBase, "_initial_states", _full_path_ran)
        direct = layer(x, hx)
    assert counting_c.calls == ["stack_inference"]  # the whole stack in one call
    with torch.no_grad(), OpRecorder() as ops:
        full = layer(x, hx)
    assert ops.names == [f"{name.lower()}_layer_fwd"] * (4 if bidirectional else 2)
    for a, b in zip(_flat(direct), _flat(full), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("state", ["negative_view", "zero_tensor"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_states_whose_values_are_not_their_bytes(name, state):
    """Initial states given as a negative view (a neg bit over positive bytes) or a ZeroTensor (no
    storage) are read as their values, as torch.nn reads them: the layer ops copy plain contiguous states
    byte for byte, these through Tensor.to. Float64 against torch.nn, through the direct path and with
    gradients."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5, 2).double()
    fast = getattr(fastcells, name)(4, 5, 2, backend="cpu").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    values = _states(name, 2, 2, 5, torch.float64)
    values = list(values) if isinstance(values, tuple) else [values]
    if state == "negative_view":
        given = [torch._neg_view(-v) for v in values]
        assert all(g.is_neg() for g in given)
    else:
        values = [torch.zeros_like(v) for v in values]
        given = [torch._efficientzerotensor(v.shape, dtype=v.dtype) for v in values]
    as_hx = (lambda states: tuple(states)) if name == "LSTM" else (lambda states: states[0])
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            expected, got = _flat(ref(x, as_hx(values))), _flat(fast(x, as_hx(given)))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hx_shape,message", [
    ((3, 2, 5), r"Expected hidden size \(2, 2, 5\), got \[3, 2, 5\]"),
    ((2, 3, 5), r"Expected hidden size \(2, 2, 5\), got \[2, 3, 5\]"),
])
def test_generation_calls_with_wrong_states_raise_torch_nn_errors(hx_shape, message):
    layer = fastcells.GRU(4, 5, 2, backend="cpu").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=message):
        layer(torch.randn(1, 2, 4), torch.randn(hx_shape))
    with torch.no_grad(), pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        layer(torch.randn(0, 2, 4), torch.randn(2, 2, 5))
    with torch.no_grad(), pytest.raises(RuntimeError, match="hx dtype .* does not match input dtype"):
        layer(torch.randn(1, 2, 4), torch.randn(2, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_generation_calls_hold_no_more_memory_than_torch_nn(name, dtype):
    """A generation loop's call (T=1, B=1, 2 layers, H=200: the benchmark's generate group) holds no more
    than torch.nn's at once. The RNN held one (B, H) buffer more (4.7 against 3.9 KiB): its steps' products
    now accumulate into the input projections' rows (csrc/cpu/rnn_cpu.inc)."""
    from fastcells.benchmark.timing import peak_bytes

    torch.manual_seed(0)
    fast = getattr(fastcells, name)(200, 200, 2, backend="cpu").to(dtype).eval()
    ref = getattr(torch.nn, name)(200, 200, 2).to(dtype).eval()
    x = torch.randn(1, 1, 200, dtype=dtype)
    hx = _states(name, 2, 1, 200, dtype)
    with torch.inference_mode():
        fast(x, hx), ref(x, hx)  # a loop's later calls: what the first call of a shape caches is there
        fast_peak, ref_peak = peak_bytes(lambda: fast(x, hx), "cpu"), peak_bytes(lambda: ref(x, hx), "cpu")
    assert fast_peak <= ref_peak, (fast_peak, ref_peak)
