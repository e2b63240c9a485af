"""ONNX export of converted models, with both exporters (torch.onnx.export's dynamo=True and the
TorchScript-based dynamo=False): the graph holds standard ONNX operators only, onnxruntime reproduces
eager fastcells to 1e-5 in float32, and it takes other batch and sequence lengths wherever torch.nn's own
export of the same model does."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import fastcells

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's translations

# name: (torch.nn model factory, sample input shape, which input dims are (time, batch))
MODELS = {
    "lstm stacked bidirectional": (lambda: nn.LSTM(3, 5, 2, bidirectional=True), (4, 2, 3), (0, 1)),
    "gru batch_first no bias": (lambda: nn.GRU(3, 5, batch_first=True, bias=False), (2, 4, 3), (1, 0)),
    "rnn relu stacked": (lambda: nn.RNN(3, 5, 2, nonlinearity="relu"), (4, 2, 3), (0, 1)),
    "lstm proj_size": (lambda: nn.LSTM(3, 5, proj_size=2), (4, 2, 3), (0, 1)),
    "lstm cell": (lambda: nn.LSTMCell(3, 5), (2, 3), (None, 0)),
    "gru cell": (lambda: nn.GRUCell(3, 5), (2, 3), (None, 0)),
    "rnn cell relu": (lambda: nn.RNNCell(3, 5, nonlinearity="relu"), (2, 3), (None, 0)),
}


def _export(model, x, dynamo, dims=(None, None)):
    """The ONNX model (bytes) of ``model`` traced on ``x``, with the (time, batch) dims ``dims`` dynamic
    (None: static)."""
    time_dim, batch_dim = dims
    names = {d: n for d, n in ((time_dim, "time"), (batch_dim, "batch")) if d is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({d: torch.export.Dim.DYNAMIC for d in names},) if names else None
            return torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes,
                                     verbose=False).model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": names})
        return buffer.getvalue()


def _export_and_run(model, x, dynamo, dims, x_new):
    """onnxruntime's output for ``x_new`` of ``model`` exported with dynamic ``dims``, or the exception
    the export or the run raised."""
    try:
        exported = _export(model, x, dynamo, dims)
    except Exception as error:  # noqa: BLE001 (torch.nn's model may not export with dynamic shapes)
        return error
    return _run(exported, x_new)


def _first_output(out):
    return out[0] if isinstance(out, tuple) else out


def _run(model_bytes, x):
    """onnxruntime's first output for input ``x``, or the exception it raised."""
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    except Exception as error:  # noqa: BLE001 (torch.nn's model may not take the new shape either)
        return error


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export_matches_eager(name, dynamo):
    factory, shape, dims = MODELS[name]
    torch.manual_seed(0)
    reference = factory().eval()

    def converted():
        """A converted twin of ``reference``, one per export: torch's dynamo exporter fails a dynamic
        export of a module it exported with static shapes before (torch.nn's GRU too, torch 2.13)."""
        model = fastcells.convert(copy.deepcopy(reference))
        assert type(model).__module__ == "fastcells.modules"
        return model

    x = torch.randn(shape)

    # Exported with dynamic batch and sequence length, run on others: where it takes them, eager's
    # outputs; where it does not, torch.nn's export of the same model must not take them either. (First:
    # after a static export of a module, torch's dynamo exporter fails a dynamic one of its class, for
    # torch.nn's GRU too, torch 2.13.)
    new_shape = list(shape)
    for dim, size in zip(dims, (7, 3)):
        if dim is not None:
            new_shape[dim] = size
    x_new = torch.randn(new_shape)
    ours = _export_and_run(converted(), x, dynamo, dims, x_new)
    if isinstance(ours, torch.Tensor):
        with torch.no_grad():
            torch.testing.assert_close(ours, _first_output(reference(x_new)), atol=1e-5, rtol=1e-5)
    else:
        theirs = _export_and_run(copy.deepcopy(reference), x, dynamo, dims, x_new)
        assert not isinstance(theirs, torch.Tensor), f"torch.nn's export takes {new_shape}, ours: {ours}"

    model = converted()
    exported = _export(model, x, dynamo)

    graph = onnx.load_from_string(exported).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "a node outside ONNX's own domain"
    assert not [node.op_type for node in graph.node if "fastcells" in node.op_type]
    with torch.no_grad():
        torch.testing.assert_close(_run(exported, x), _first_output(model(x)), atol=1e-5, rtol=1e-5)


def test_onnx_export_keeps_dynamic_shapes_of_torch_nn_layers():
    """The cases above compare with torch.nn only where its export takes new shapes: this one says that
    the comparison happens, for the layers whose ONNX operator torch.nn's TorchScript export uses."""
    factory, shape, dims = MODELS["lstm stacked bidirectional"]
    model = fastcells.convert(factory().eval())
    x_new = torch.randn(9, 5, 3)
    got = _run(_export(model, torch.randn(shape), False, dims), x_new)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x_new)[0], atol=1e-5, rtol=1e-5)


class _Packed(nn.Module):
    """A model that packs its padded batch for the GRU, as variable-length models do."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 4)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, h = self.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(y)[0], h


def _export_packed(model, args, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, args, dynamo=True, verbose=False).model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, args, buffer, dynamo=False)
        return buffer.getvalue()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_packed_input_does_what_torch_nn_does(dynamo):
    """Packed sequences export where torch.nn's do (the TorchScript exporter), matching eager; where
    torch.nn's export fails (torch.export of pack_padded_sequence, torch 2.13), ours fails too."""
    torch.manual_seed(0)
    reference = _Packed().eval()
    model = fastcells.convert(copy.deepcopy(reference))
    assert type(model.rnn) is fastcells.GRU
    args = (torch.randn(5, 3, 3), torch.tensor([5, 2, 4]))
    try:
        _export_packed(reference, args, dynamo)
    except Exception:  # noqa: BLE001
        with pytest.raises(Exception):  # noqa: B017 (whatever torch.nn's export raised)
            _export_packed(model, args, dynamo)
        return
    session = ort.InferenceSession(_export_packed(model, args, dynamo), providers=["CPUExecutionProvider"])
    out = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(*args)[0], atol=1e-5, rtol=1e-5)
