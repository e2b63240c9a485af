"""Serialization and module plumbing, for every module and backend: copy.deepcopy, pickle,
torch.save/torch.load of whole modules and of state_dicts (both ways with torch.nn), .to(dtype),
.double(), .half(), .train()/.eval(), flatten_parameters() and repr."""

import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastcells

from conftest import CELL_KINDS, LAYER_KINDS, make_cell_twins, make_layer_twins

ALL_KINDS = [("layer", kind) for kind in LAYER_KINDS] + [("cell", kind) for kind in CELL_KINDS]


def _twins(family, kind, backend, **kwargs):
    if family == "layer":
        return make_layer_twins(kind, 3, 4, 2, bidirectional=True, backend=backend, **kwargs)
    return make_cell_twins(kind, 3, 4, backend=backend, **kwargs)


def _input(family, dtype=torch.float64, device="cpu"):
    shape = (5, 2, 3) if family == "layer" else (2, 3)
    return torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for value in out for t in _flat(value)]


def _assert_same_outputs(a, b, x):
    with torch.no_grad():
        for got, expected in zip(_flat(a(x)), _flat(b(x)), strict=True):
            assert torch.equal(got, expected)


def _torch_roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("family,kind", ALL_KINDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_whole_module_copies(family, kind, how, device_backend):
    device, backend = device_backend
    fast = _twins(family, kind, backend, device=device)[1]
    clone = {"deepcopy": copy.deepcopy,
             "pickle": lambda m: pickle.loads(pickle.dumps(m)),
             "torch.save": _torch_roundtrip}[how](fast)
    assert type(clone) is type(fast) and clone.backend == backend
    assert all(a is not b for a, b in zip(clone.parameters(), fast.parameters()))
    assert all(p.device == q.device for p, q in zip(clone.parameters(), fast.parameters()))
    _assert_same_outputs(clone, fast, _input(family, device=device))


class _EveryModule(nn.Module):
    """A model holding every fastcells module type, as a converted model does."""

    def __init__(self, backend):
        super().__init__()
        self.layers = nn.ModuleList([fastcells.LSTM(3, 4, 2, proj_size=2, backend=backend),
                                     fastcells.GRU(3, 4, bidirectional=True, backend=backend),
                                     fastcells.RNN(3, 4, nonlinearity="relu", backend=backend)])
        self.cells = nn.ModuleList([fastcells.LSTMCell(3, 4, backend=backend),
                                    fastcells.GRUCell(3, 4, backend=backend),
                                    fastcells.RNNCell(3, 4, backend=backend)])

    def forward(self, x):
        return [layer(x) for layer in self.layers] + [cell(x[0]) for cell in self.cells]


def _saved(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return buffer


def test_whole_model_loads_with_weights_only(backend):
    """torch.load's default (weights_only=True) loads a whole model made of fastcells modules, where the
    script allows its own and torch.nn's classes, as pytorch/examples' word_language_model does."""
    torch.manual_seed(0)
    model = _EveryModule(backend).double().eval()
    x = _input("layer")
    with torch.serialization.safe_globals([_EveryModule, nn.ModuleList]):
        loaded = torch.load(_saved(model))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert all(m.backend == backend for m in [*loaded.layers, *loaded.cells])
    _assert_same_outputs(loaded, model, x)
    # A fastcells module saved on its own needs no allowance at all.
    assert type(torch.load(_saved(model.layers[0]))) is fastcells.LSTM


def test_unconverted_model_loads_without_fastcells(backend, tmp_path):
    """A model passed through fastcells.unconvert pickles only torch.nn classes: it loads in a process
    where fastcells cannot be imported."""
    model = fastcells.convert(nn.Sequential(nn.LSTM(3, 4), nn.Identity()), backend=backend)
    path = tmp_path / "model.pt"
    torch.save(fastcells.unconvert(model), path)
    script = ("import sys, torch; sys.modules['fastcells'] = None\n"
              f"m = torch.load({str(path)!r}, weights_only=False)\n"
              "print(type(m[0]).__module__, type(m[0]).__name__)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["torch.nn.modules.rnn", "LSTM"]


@pytest.mark.parametrize("family,kind", ALL_KINDS)
def test_state_dict_through_torch_save_both_ways(family, kind, backend):
    ref, fast = _twins(family, kind, backend, seed=1)
    other_ref, other_fast = _twins(family, kind, backend, seed=2)  # different weights
    other_fast.load_state_dict(_torch_roundtrip(ref.state_dict()))
    other_ref.load_state_dict(_torch_roundtrip(fast.state_dict()))
    x = _input(family)
    with torch.no_grad():
        for a, b in zip(_flat(other_fast(x)), _flat(other_ref(x)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("family,kind", ALL_KINDS)
def test_dtype_conversions_follow_torch(family, kind, backend):
    ref, fast = _twins(family, kind, backend)
    for convert in (lambda m: m.float(), lambda m: m.to(torch.float64), lambda m: m.double(),
                    lambda m: m.half(), lambda m: m.to(dtype=torch.bfloat16)):
        convert(ref)
        convert(fast)
        assert [p.dtype for p in fast.parameters()] == [p.dtype for p in ref.parameters()]
        if family == "layer":  # the flat weight list the kernels read follows too
            assert all(w.dtype == p.dtype for w, p in zip(fast._flat_weights, fast.parameters()))
    fast.double()
    ref.double()
    x = _input(family)
    with torch.no_grad():
        for a, b in zip(_flat(fast(x)), _flat(ref(x)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_train_eval_switches_dropout(backend):
    fast = fastcells.LSTM(3, 4, 3, dropout=0.5, dtype=torch.float64, backend=backend)
    x = _input("layer")
    fast.eval()
    assert not fast.training
    _assert_same_outputs(fast, fast, x)  # deterministic in eval mode
    fast.train()
    torch.manual_seed(0)
    first = fast(x)[0]
    torch.manual_seed(1)
    second = fast(x)[0]
    assert not torch.equal(first, second), "dropout between layers is off in training mode"


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_flatten_parameters_is_harmless(kind, backend):
    """torch.nn's flatten_parameters: nothing off CUDA; on CUDA the same parameters, as views into one
    buffer, with the same values."""
    ref, fast = _twins("layer", kind, backend)
    before = [p.detach().clone() for p in fast.parameters()]
    params = list(fast.parameters())
    assert fast.flatten_parameters() is None
    assert all(a is b for a, b in zip(params, fast.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, fast.parameters()))
    _assert_same_outputs(fast, copy.deepcopy(fast), _input("layer"))


@pytest.mark.parametrize("family,kind", ALL_KINDS)
def test_repr_is_torch_repr_plus_backend(family, kind, backend):
    ref, fast = _twins(family, kind, backend)
    torch_text, our_text = repr(ref), repr(fast)
    assert our_text == torch_text[:-1] + f", backend={backend!r})"


def test_repr_inside_a_model_is_readable():
    model = nn.Sequential(nn.Linear(3, 3), nn.GRU(3, 4))
    fastcells.convert(model, backend="reference")
    assert "GRU(3, 4, backend='reference')" in repr(model)
