"""Module behaviour beyond the math: convert, state_dict, dropout, empty and zero-length inputs, backend
choice (argument, environment variable, auto), repr, and NaN propagation."""

import copy
import logging
import os

import pytest
import torch
from torch import nn

import fastcells
from fastcells import _extension, backends

from conftest import (CELL_KINDS, LAYER_KINDS, copy_weights, make_cell_twins, make_layer_twins,
                      random_cell_states, random_layer_states, record_fastcells_ops)

DT = torch.float64
TWINS = {nn.LSTM: fastcells.LSTM, nn.GRU: fastcells.GRU, nn.RNN: fastcells.RNN,
         nn.LSTMCell: fastcells.LSTMCell, nn.GRUCell: fastcells.GRUCell, nn.RNNCell: fastcells.RNNCell}
needs_cpu_backend = pytest.mark.skipif("cpu" not in fastcells.available_backends(),
                                       reason="the cpu backend is not usable here")


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _tensors(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in _tensors(r)]


def _assert_all_close(got, expected, atol=1e-10, rtol=1e-9):
    got, expected = _tensors(got), _tensors(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------
# convert


class MyLSTM(nn.LSTM):
    """A user's subclass: convert must keep it (its forward may differ from torch's)."""


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 4, batch_first=True, bidirectional=True)
        self.cells = nn.ModuleList([nn.LSTMCell(8, 3), nn.GRUCell(3, 3),
                                    nn.RNNCell(3, 3, nonlinearity="relu")])

    def forward(self, x):
        y, h = self.gru(x)
        last = y[:, -1]
        hc = self.cells[0](last)
        g = self.cells[1](hc[0], hc[1])
        return y, h, hc, g, self.cells[2](g)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.stack = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        self.lstm = nn.LSTM(5, 6, 2, batch_first=True, proj_size=3, dropout=0.0)
        self.rnn = nn.RNN(3, 6, nonlinearity="relu", batch_first=True, bias=False)
        self.inner = Inner()
        self.mine = MyLSTM(6, 2, batch_first=True)

    def forward(self, x):
        y, (h, c) = self.lstm(self.stack(x))
        y2, h2 = self.rnn(y)
        return (y, h, c, y2, h2) + self.inner(y2) + self.mine(y2)


def _modules_by_name(model):
    return dict(model.named_modules())


def _outer_and_snapshot():
    """An Outer model, an input, its output, and its modules and parameters by name, before any swap."""
    torch.manual_seed(0)
    model = Outer().double()
    x = _randn(2, 5, 3)
    return model, x, model(x), _modules_by_name(model), dict(model.named_parameters())


def test_convert_nested_model(backend):
    model, x, expected, before, params_before = _outer_and_snapshot()

    converted = fastcells.convert(model, backend=backend)

    assert converted is model
    after = _modules_by_name(model)
    assert after.keys() == before.keys()
    for name, module in after.items():
        old = before[name]
        if type(old) in TWINS:
            assert type(module) is TWINS[type(old)], name
            assert module.backend == backend
        else:
            assert module is old, name  # everything else, MyLSTM included, is untouched
    assert type(model.mine) is MyLSTM
    params_after = dict(model.named_parameters())
    assert params_after.keys() == params_before.keys()
    for name, parameter in params_after.items():
        assert parameter is params_before[name], name
    _assert_all_close(model(x), expected)


def test_convert_shares_parameters(backend):
    """The twin reads the same Parameter objects: an in-place update of the original shows up."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, 2, bidirectional=True, dtype=DT)
    twin = fastcells.convert(lstm, backend=backend)
    x = _randn(3, 2, 3)
    with torch.no_grad():
        lstm.weight_hh_l1_reverse.mul_(-2.0)
    reference = nn.LSTM(3, 4, 2, bidirectional=True, dtype=DT)
    copy_weights(lstm, reference)
    _assert_all_close(twin(x), reference(x))
    # Gradients land on the original parameters too.
    twin(x)[0].sum().backward()
    assert lstm.weight_ih_l0.grad is not None


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_convert_layer_itself(kind, backend):
    torch.manual_seed(1)
    torch_cls, fast_cls, extra = LAYER_KINDS[kind]
    model = torch_cls(3, 5, 2, batch_first=True, bidirectional=True, dropout=0.25, dtype=DT, **extra)
    model.eval()
    x = _randn(2, 4, 3)
    expected = model(x)
    twin = fastcells.convert(model, backend=backend)
    assert type(twin) is fast_cls
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode", "training"):
        assert getattr(twin, attr) == getattr(model, attr), attr
    assert [p for p in twin.parameters()] == [p for p in model.parameters()]
    assert all(a is b for a, b in zip(twin.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(twin._flat_weights, model._flat_weights))
    _assert_all_close(twin(x), expected)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_convert_cell_itself(kind, backend):
    torch_cls, fast_cls, extra = CELL_KINDS[kind]
    torch.manual_seed(2)
    cell = torch_cls(3, 5, bias=False, dtype=DT, **extra)
    x = _randn(2, 3)
    expected = cell(x)
    twin = fastcells.convert(cell, backend=backend)
    assert type(twin) is fast_cls
    assert twin.bias == cell.bias
    assert getattr(twin, "nonlinearity", None) == getattr(cell, "nonlinearity", None)
    assert all(a is b for a, b in zip(twin.parameters(), cell.parameters()))
    _assert_all_close(twin(x), expected)


def test_convert_unknown_backend():
    with pytest.raises(ValueError, match="'cpu'.*'reference'|'reference'.*'cpu'"):
        fastcells.convert(nn.LSTM(2, 3), backend="cuda-turbo")


def test_convert_is_idempotent_and_keeps_training_flag(backend):
    model = nn.Sequential(nn.GRU(2, 3)).eval()
    once = fastcells.convert(model, backend=backend)
    twin = once[0]
    assert not twin.training
    again = fastcells.convert(once, backend=backend)
    assert again[0] is twin  # already a fastcells module: left alone


def test_unconvert_inverts_convert(backend):
    """convert then unconvert: the same module tree of torch.nn classes, the same Parameter objects
    (so the same state_dict), and the same outputs."""
    model, x, expected, before, params_before = _outer_and_snapshot()
    state_before = {name: value.clone() for name, value in model.state_dict().items()}

    back = fastcells.unconvert(fastcells.convert(model, backend=backend))

    assert back is model
    after = _modules_by_name(model)
    assert after.keys() == before.keys()
    for name, module in after.items():
        assert type(module) is type(before[name]), name
        assert not type(module).__module__.startswith("fastcells"), name
    assert type(model.mine) is MyLSTM
    assert dict(model.named_parameters()).keys() == params_before.keys()
    assert all(p is params_before[name] for name, p in model.named_parameters())
    state = model.state_dict()
    assert state.keys() == state_before.keys()
    assert all(torch.equal(state[name], value) for name, value in state_before.items())
    _assert_all_close(model(x), expected)


@pytest.mark.parametrize("kind", list(LAYER_KINDS) + [f"cell_{k}" for k in CELL_KINDS])
def test_unconvert_module_itself(kind, backend):
    """A fastcells module built directly (not converted) becomes its torch.nn twin, configured alike and
    sharing its parameters, in training mode or not; torch.nn modules are left alone."""
    table, name = (CELL_KINDS, kind[5:]) if kind.startswith("cell_") else (LAYER_KINDS, kind)
    torch_cls, fast_cls, extra = table[name]
    torch.manual_seed(3)
    if table is CELL_KINDS:
        fast, x = fast_cls(3, 5, bias=False, dtype=DT, backend=backend, **extra), _randn(2, 3)
    else:
        fast = fast_cls(3, 5, 2, batch_first=True, bidirectional=True, dtype=DT, backend=backend, **extra)
        x = _randn(2, 4, 3)
    fast.eval()
    expected = fast(x)
    back = fastcells.unconvert(fast)
    assert type(back) is torch_cls and not back.training
    assert all(a is b for a, b in zip(back.parameters(), fast.parameters()))
    _assert_all_close(back(x), expected)
    assert fastcells.unconvert(back) is back


# ------------------------------------------------------------------------------------------------
# state_dict


@pytest.mark.parametrize("kind", list(LAYER_KINDS) + [f"cell_{k}" for k in CELL_KINDS])
def test_state_dict_round_trip(kind, backend):
    table, name = (CELL_KINDS, kind[5:]) if kind.startswith("cell_") else (LAYER_KINDS, kind)
    torch_cls, fast_cls, extra = table[name]
    args = (3, 5) if table is CELL_KINDS else (3, 5, 2)
    layer_kwargs = {} if table is CELL_KINDS else {"bidirectional": True}
    torch.manual_seed(3)
    source = torch_cls(*args, dtype=DT, **extra, **layer_kwargs)
    torch.manual_seed(4)  # different weights
    fast = fast_cls(*args, dtype=DT, backend=backend, **extra, **layer_kwargs)
    back = torch_cls(*args, dtype=DT, **extra, **layer_kwargs)

    assert fast.state_dict().keys() == source.state_dict().keys()
    fast.load_state_dict(source.state_dict(), strict=True)  # torch.nn -> fastcells
    back.load_state_dict(fast.state_dict(), strict=True)    # fastcells -> torch.nn
    for (k1, v1), (k2, v2) in zip(source.state_dict().items(), back.state_dict().items()):
        assert k1 == k2
        assert torch.equal(v1, v2), k1
    x = _randn(4, 3) if table is CELL_KINDS else _randn(4, 2, 3)
    _assert_all_close(fast(x), source(x))
    _assert_all_close(back(x), source(x))


# ------------------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_dropout_training(kind, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 3, dropout=0.5, dtype=DT, backend=backend)
    x = _randn(4, 2, 3)
    torch.manual_seed(7)
    first = fast(x)
    torch.manual_seed(7)
    second = fast(x)
    torch.manual_seed(8)
    other_seed = fast(x)
    _assert_all_close(second, first, atol=0, rtol=0)  # same seed: identical
    assert not torch.allclose(other_seed[0], first[0])  # dropout is live: the masks differ
    fast.eval()
    assert not torch.allclose(fast(x)[0], first[0])
    # torch.nn draws one dropout mask per layer output in the same order: with the same seed the
    # training-mode outputs match torch.nn's exactly.
    torch.manual_seed(7)
    _assert_all_close(first, ref(x))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_dropout_inactive_in_eval(kind, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 3, dropout=0.5, dtype=DT, backend=backend)
    ref.eval()
    fast.eval()
    x = _randn(4, 2, 3)
    torch.manual_seed(1)
    a = fast(x)
    torch.manual_seed(2)
    b = fast(x)
    _assert_all_close(a, b, atol=0, rtol=0)
    _assert_all_close(a, ref(x))


def test_dropout_gradients_match_torch(backend):
    ref, fast = make_layer_twins("lstm", 3, 5, 3, dropout=0.5, bidirectional=True, dtype=DT,
                                 backend=backend)
    x = _randn(4, 2, 3)
    grads = []
    for module in (ref, fast):
        torch.manual_seed(11)
        out, _ = module(x)
        out.pow(2).sum().backward()
        grads.append([p.grad for p in module.parameters()])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# empty batch, zero-length sequence


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_empty_batch_layers(kind, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, dtype=DT, backend=backend)
    results = []
    for module in (ref, fast):
        x = torch.randn(4, 0, 3, dtype=DT, requires_grad=True)
        out = module(x)
        sum(t.sum() for t in _tensors(out)).backward()
        results.append(_tensors(out) + [x.grad] + [p.grad for p in module.parameters()])
    assert [t.shape for t in results[1]] == [t.shape for t in results[0]]
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_empty_batch_with_states(kind, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, batch_first=True, dtype=DT,
                                 backend=backend)
    x = torch.randn(0, 4, 3, dtype=DT)
    hx = random_layer_states(ref, 0, DT)
    got, expected = fast(x, hx), ref(x, hx)
    assert [t.shape for t in _tensors(got)] == [t.shape for t in _tensors(expected)]


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_empty_batch_cells(kind, backend):
    ref, fast = make_cell_twins(kind, 3, 5, dtype=DT, backend=backend)
    x = torch.randn(0, 3, dtype=DT)
    got, expected = fast(x), ref(x)
    assert [t.shape for t in _tensors(got)] == [t.shape for t in _tensors(expected)]
    with torch.no_grad():
        assert [t.shape for t in _tensors(fast(x))] == [t.shape for t in _tensors(expected)]


@pytest.mark.parametrize("shape", [(0, 2, 3), (0, 3)], ids=["batched", "unbatched"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_zero_length_sequence_raises_like_torch(kind, shape, backend):
    ref, fast = make_layer_twins(kind, 3, 5, dtype=DT, backend=backend)
    x = torch.randn(shape, dtype=DT)
    with pytest.raises(RuntimeError) as torch_error:
        ref(x)
    with pytest.raises(RuntimeError) as our_error:
        fast(x)
    assert "sequence length" in str(our_error.value)
    assert type(our_error.value) is type(torch_error.value)


# ------------------------------------------------------------------------------------------------
# backend choice


def test_available_backends():
    names = fastcells.available_backends()
    assert "reference" in names
    assert names[-1] == "reference"  # preference order: fused backends first, the fallback last
    # triton is usable on CPU tensors only through its interpreter (conftest.py switches it on)
    triton_here = backends.unusable_reason("triton", "cpu") is None
    if _extension.load_error is None:
        assert names == ["cpu"] + (["triton"] if triton_here else []) + ["reference"]
    assert "cuda" not in names  # CUDA tensors only
    if not torch.cuda.is_available():
        assert fastcells.available_backends("cuda") == ["reference"]
        assert backends.unusable_reason("cuda", "cuda")  # says why: no CUDA build, or no GPU


@pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C not loaded")
def test_backend_choice_makes_no_call_into_the_extension(monkeypatch):
    """Modules choose their backend at every forward: a pybind call there stops torch.compile's
    fullgraph trace (seen on an H200 with the cuda backend's has_cuda)."""
    def planted():
        raise AssertionError("fastcells._C.has_cuda called while choosing a backend")

    monkeypatch.setattr(_extension.C, "has_cuda", planted)
    for device_type in ("cpu", "cuda"):
        for name in backends.NAMES:
            backends.unusable_reason(name, device_type, torch.float32)


@pytest.mark.parametrize("name", ["cpu", "reference", "auto"])
def test_backend_argument_and_repr(name):
    if name == "cpu" and "cpu" not in fastcells.available_backends():
        pytest.skip("the cpu backend is not usable here")
    layer = fastcells.GRU(3, 4, backend=name)
    cell = fastcells.LSTMCell(3, 4, backend=name)
    for module in (layer, cell):
        assert module.backend == name
        text = repr(module)
        if name == "auto":
            assert "backend" not in text
        else:
            assert f"backend={name!r}" in text
    assert repr(fastcells.GRU(3, 4)) == repr(nn.GRU(3, 4))
    assert repr(fastcells.LSTMCell(3, 4)) == repr(nn.LSTMCell(3, 4))


def _backend_used(module, x, selected):
    selected.clear()
    module(x)
    assert len(selected) == 1
    return selected[0]


@needs_cpu_backend
def test_backend_from_environment(monkeypatch, selected_backends):
    x = _randn(3, 2, 3)
    lstm = fastcells.LSTM(3, 4, dtype=DT)  # backend "auto"
    cell = fastcells.GRUCell(3, 4, dtype=DT)
    assert _backend_used(lstm, x, selected_backends) == "cpu"  # auto on CPU tensors
    with record_fastcells_ops() as names:
        lstm(x)
    assert names == ["lstm_layer_fwd"]
    monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
    assert _backend_used(lstm, x, selected_backends) == "reference"
    assert _backend_used(cell, x[0], selected_backends) == "reference"
    with record_fastcells_ops() as names:
        lstm(x)
    assert names == []  # the reference backend runs no fastcells op
    monkeypatch.setenv("FASTCELLS_BACKEND", "cpu")
    assert _backend_used(lstm, x, selected_backends) == "cpu"
    assert _backend_used(cell, x[0], selected_backends) == "cpu"
    monkeypatch.setenv("FASTCELLS_BACKEND", "")
    assert _backend_used(lstm, x, selected_backends) == "cpu"  # empty means auto


@needs_cpu_backend
def test_backend_argument_beats_environment(monkeypatch, selected_backends):
    x = _randn(3, 2, 3)
    monkeypatch.setenv("FASTCELLS_BACKEND", "cpu")
    assert _backend_used(fastcells.RNN(3, 4, dtype=DT, backend="reference"), x,
                         selected_backends) == "reference"
    assert _backend_used(fastcells.RNNCell(3, 4, dtype=DT, backend="reference"), x[0],
                         selected_backends) == "reference"
    monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
    assert _backend_used(fastcells.RNN(3, 4, dtype=DT, backend="cpu"), x, selected_backends) == "cpu"
    assert _backend_used(fastcells.LSTMCell(3, 4, dtype=DT, backend="cpu"), x[0],
                         selected_backends) == "cpu"
    with record_fastcells_ops() as names:
        fastcells.RNN(3, 4, dtype=DT, backend="cpu")(x)
    assert names == ["rnn_layer_fwd"]


def test_bad_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTCELLS_BACKEND", "warp-drive")
    lstm = fastcells.LSTM(3, 4)  # construction does not read the variable
    with pytest.raises(ValueError) as error:
        lstm(torch.randn(2, 1, 3))
    message = str(error.value)
    assert "warp-drive" in message
    for name in ("auto", "cpu", "reference"):
        assert repr(name) in message
    with pytest.raises(ValueError, match="warp-drive"):
        fastcells.RNNCell(3, 4)(torch.randn(1, 3))


MODULE_FACTORIES = {
    "LSTM": lambda b: fastcells.LSTM(3, 4, backend=b),
    "GRU": lambda b: fastcells.GRU(3, 4, backend=b),
    "RNN": lambda b: fastcells.RNN(3, 4, backend=b),
    "LSTMCell": lambda b: fastcells.LSTMCell(3, 4, backend=b),
    "GRUCell": lambda b: fastcells.GRUCell(3, 4, backend=b),
    "RNNCell": lambda b: fastcells.RNNCell(3, 4, backend=b),
}


@pytest.mark.parametrize("factory", MODULE_FACTORIES)
def test_unknown_backend_at_construction(factory):
    with pytest.raises(ValueError) as error:
        MODULE_FACTORIES[factory]("cudnn")
    message = str(error.value)
    assert "'cudnn'" in message
    for name in ["auto"] + list(backends.NAMES):
        assert repr(name) in message


# Every torch.nn positional argument, then one more that would be "backend" if it were positional.
ALL_POSITIONAL = {
    "LSTM": (fastcells.LSTM, (3, 4, 1, True, False, 0.0, False, 0, None, None)),
    "GRU": (fastcells.GRU, (3, 4, 1, True, False, 0.0, False, 0, None, None)),
    "RNN": (fastcells.RNN, (3, 4, 1, "tanh", True, False, 0.0, False, 0, None, None)),
    "LSTMCell": (fastcells.LSTMCell, (3, 4, True, None, None)),
    "GRUCell": (fastcells.GRUCell, (3, 4, True, None, None)),
    "RNNCell": (fastcells.RNNCell, (3, 4, True, "tanh", None, None)),
}


@pytest.mark.parametrize("name", ALL_POSITIONAL)
def test_backend_is_keyword_only(name):
    cls, args = ALL_POSITIONAL[name]
    torch_cls = getattr(nn, name)
    torch_cls(*args)  # torch.nn accepts these positionally ...
    cls(*args)        # ... and so do we
    with pytest.raises(TypeError):
        cls(*args, "reference")
    assert cls(*args, backend="reference").backend == "reference"


def test_unusable_backend_raises_and_says_why(monkeypatch):
    monkeypatch.setattr(_extension, "load_error", "ImportError: pretend the build is missing")
    monkeypatch.setattr(backends, "_resolved", {})  # choices made before the pretence
    assert "cpu" not in fastcells.available_backends()
    for module, x in ((fastcells.LSTM(3, 4, backend="cpu"), torch.randn(2, 1, 3)),
                      (fastcells.GRUCell(3, 4, backend="cpu"), torch.randn(1, 3))):
        with pytest.raises(RuntimeError) as error:
            module(x)
        assert "'cpu'" in str(error.value) and "pretend the build is missing" in str(error.value)
    monkeypatch.setenv("FASTCELLS_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="pretend the build is missing"):
        fastcells.RNN(3, 4)(torch.randn(2, 1, 3))


def test_unusable_device_raises_and_says_why():
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        backends.select("cpu", "cuda")


def test_auto_falls_back_with_one_warning(monkeypatch, caplog, selected_backends):
    monkeypatch.setattr(_extension, "load_error", "ImportError: pretend the build is missing")
    monkeypatch.setattr(backends, "_resolved", {})
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, dtype=DT)
    fast = copy_weights(ref, fastcells.LSTM(3, 4, dtype=DT))
    x = _randn(2, 1, 3)
    with caplog.at_level(logging.WARNING, logger="fastcells"):
        with record_fastcells_ops() as names:
            first = fast(x)
            fast(x)
    assert names == []  # ran on the reference backend
    assert _backend_used(fast, x, selected_backends) == "reference"
    warnings = [r for r in caplog.records if r.name == "fastcells" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "reference" in warnings[0].getMessage()
    assert "pretend the build is missing" in warnings[0].getMessage()
    _assert_all_close(first, ref(x))


# ------------------------------------------------------------------------------------------------
# module plumbing


def test_subclass_relations():
    assert issubclass(fastcells.LSTM, nn.RNNBase) and not issubclass(fastcells.LSTM, nn.LSTM)
    assert issubclass(fastcells.GRU, nn.RNNBase) and issubclass(fastcells.RNN, nn.RNNBase)
    assert issubclass(fastcells.LSTMCell, nn.LSTMCell)
    assert issubclass(fastcells.GRUCell, nn.GRUCell)
    assert issubclass(fastcells.RNNCell, nn.RNNCell)


def test_constructor_arguments_like_torch():
    with pytest.raises(ValueError) as ours:
        fastcells.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError) as theirs:
        nn.GRU(3, 4, proj_size=2)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastcells.RNN(3, 4, nonlinearity="gelu")
    positional = fastcells.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    reference = nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    for attr in ("num_layers", "nonlinearity", "bias", "batch_first", "bidirectional", "mode"):
        assert getattr(positional, attr) == getattr(reference, attr), attr
    assert positional.state_dict().keys() == reference.state_dict().keys()


def test_dtype_conversion_after_construction(backend):
    """.double() after construction: the flat weights follow (RNNBase._apply)."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, 2, proj_size=2)
    fast = copy_weights(ref, fastcells.LSTM(3, 4, 2, proj_size=2, backend=backend))
    ref.double()
    fast.double()
    assert all(w.dtype == DT for w in fast._flat_weights)
    x = _randn(3, 2, 3)
    _assert_all_close(fast(x), ref(x))


def test_deepcopy_and_flatten_parameters(backend):
    torch.manual_seed(0)
    ref = nn.GRU(3, 4, 2, dtype=DT)
    fast = copy_weights(ref, fastcells.GRU(3, 4, 2, dtype=DT, backend=backend))
    fast.flatten_parameters()
    clone = copy.deepcopy(fast)
    assert clone.backend == backend
    x = _randn(3, 2, 3)
    _assert_all_close(clone(x), ref(x))
    assert all(a is not b for a, b in zip(clone.parameters(), fast.parameters()))


# ------------------------------------------------------------------------------------------------
# NaN


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_nan_propagates_like_torch_layers(kind, backend):
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, dtype=DT, backend=backend)
    x = _randn(5, 3, 3)
    x[2, 1, 0] = float("nan")  # one entry of one sequence, mid-way
    expected, got = _tensors(ref(x)), _tensors(fast(x))
    assert expected[0].isnan().any()
    for a, b in zip(got, expected):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("grad", [True, False], ids=["layer_path", "step_op"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_nan_propagates_like_torch_cells(kind, grad, backend):
    ref, fast = make_cell_twins(kind, 3, 5, dtype=DT, backend=backend)
    x = _randn(3, 3)
    x[1, 2] = float("nan")
    states = [_randn(3, 5, seed=1), _randn(3, 5, seed=2)]
    states[0][2, 4] = float("nan")
    hx = tuple(states) if kind == "lstm" else states[0]
    with torch.set_grad_enabled(grad):
        expected, got = _tensors(ref(x, hx)), _tensors(fast(x, hx))
    for a, b in zip(got, expected):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_saturating_and_infinite_inputs_like_torch(kind, dtype, backend):
    """Huge pre-activations (gates saturate) and +-inf entries: the same values, infs and NaNs as
    torch.nn, in the layers and in the cells' fused step."""
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-10, 1e-9)
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, dtype=dtype, backend=backend)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(9), dtype=dtype) * 60
    x[1, 0, 1] = float("inf")
    x[2, 1, 2] = -float("inf")
    for a, b in zip(_tensors(fast(x)), _tensors(ref(x)), strict=True):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True)
    if kind == "lstm_proj":
        return
    cell_ref, cell_fast = make_cell_twins(kind, 3, 5, dtype=dtype, backend=backend)
    with torch.no_grad():
        for a, b in zip(_tensors(cell_fast(x[1])), _tensors(cell_ref(x[1])), strict=True):
            assert torch.equal(a.isnan(), b.isnan())
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True)


def test_extension_loads_where_it_was_built():
    """make test builds fastcells._C first, so there it must load: otherwise every cpu-backend test
    above would skip and a broken build would pass. Set FASTCELLS_ALLOW_NO_EXTENSION=1 to run the
    suite against the reference backend alone."""
    if os.environ.get("FASTCELLS_ALLOW_NO_EXTENSION") == "1":
        pytest.skip("running without the compiled extension on purpose")
    assert _extension.load_error is None, _extension.load_error


@pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C not loaded")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_streaming_cell_step_skips_the_python_checks(kind, dtype, monkeypatch):
    """An inference call with a state runs the fused step op straight from forward (the op checks its
    arguments itself), with torch.nn's results, in 16-bit dtypes too; with gradients it takes the full
    path."""
    from fastcells import modules

    ref, fast = make_cell_twins(kind, 4, 6, dtype=dtype, backend="cpu")
    x = torch.randn(3, 4, dtype=dtype)
    hx = random_cell_states(ref, 3, dtype)
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)

    def planted(*args):
        raise AssertionError("the full path ran")

    monkeypatch.setattr(modules, "_check_cell_args", planted)
    with torch.inference_mode():
        got, expected = fast(x, hx), ref(x, hx)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(a, b, **tolerance)
    with pytest.raises(AssertionError, match="the full path ran"):
        fast(x, hx)  # gradients enabled
