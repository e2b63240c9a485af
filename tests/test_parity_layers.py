"""fastcells.LSTM / GRU / RNN against torch.nn: outputs, final states, and the gradients of the input, the
initial states and every parameter, over the constructor arguments and input layouts."""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastcells

from conftest import (LAYER_KINDS, assert_same_results, forward_backward, make_layer_twins,
                      random_layer_states)

I, H, T, B = 4, 5, 4, 3

GRID = list(itertools.product(
    LAYER_KINDS,        # kind (lstm_proj: hidden 5, proj 3)
    (1, 2),             # num_layers
    (False, True),      # bidirectional
    (False, True),      # batch_first
    (False, True),      # bias
    (False, True),      # hx given
))


def _input(batch_first, dtype, t=T, b=B, i=I, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (b, t, i) if batch_first else (t, b, i)
    return torch.randn(shape, generator=gen, dtype=dtype)


def _check(kind, dtype, backend, *, num_layers=1, bidirectional=False, batch_first=False, bias=True,
           with_hx=False, t=T, b=B, i=I, h=H, x=None, **extra):
    ref, fast = make_layer_twins(kind, i, h, num_layers, bias=bias, batch_first=batch_first,
                                 bidirectional=bidirectional, dtype=dtype, backend=backend, **extra)
    if x is None:
        x = _input(batch_first, dtype, t, b, i)
    hx = random_layer_states(ref, b, dtype) if with_hx else None
    expected = forward_backward(ref, x, hx)
    got = forward_backward(fast, x, hx)
    assert_same_results(got, expected, dtype)


def _case_id(case):
    kind, num_layers, bidirectional, batch_first, bias, with_hx = case
    return "-".join([kind, f"L{num_layers}", "bi" if bidirectional else "uni",
                     "batch_first" if batch_first else "seq_first", "bias" if bias else "no_bias",
                     "hx" if with_hx else "no_hx"])


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,bias,with_hx",
                         [pytest.param(*case, id=_case_id(case)) for case in GRID])
def test_float64_grid(kind, num_layers, bidirectional, batch_first, bias, with_hx, backend):
    _check(kind, torch.float64, backend, num_layers=num_layers, bidirectional=bidirectional,
           batch_first=batch_first, bias=bias, with_hx=with_hx)


FLOAT32_CASES = [
    # kind, num_layers, bidirectional, batch_first, bias, with_hx
    ("lstm", 1, False, False, True, False),
    ("lstm", 2, True, True, True, True),
    ("lstm_proj", 2, True, False, True, True),
    ("lstm_proj", 1, False, True, False, False),
    ("gru", 1, False, False, True, True),
    ("gru", 2, True, True, False, True),
    ("rnn_tanh", 2, True, False, True, True),
    ("rnn_tanh", 1, False, True, False, False),
    ("rnn_relu", 2, True, True, True, True),
    ("rnn_relu", 1, False, False, False, False),
]


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,bias,with_hx",
                         [pytest.param(*case, id=_case_id(case)) for case in FLOAT32_CASES])
def test_float32(kind, num_layers, bidirectional, batch_first, bias, with_hx, backend):
    _check(kind, torch.float32, backend, num_layers=num_layers, bidirectional=bidirectional,
           batch_first=batch_first, bias=bias, with_hx=with_hx, h=16, t=6, b=4)


ODD_SIZES = [
    # t, b, i, h
    (1, 3, 4, 5),   # one time step
    (5, 1, 4, 5),   # batch of one
    (1, 1, 1, 3),   # everything minimal
    (6, 4, 3, 7),   # hidden not a power of two
    (3, 2, 5, 16),  # power of two hidden
]


@pytest.mark.parametrize("t,b,i,h", ODD_SIZES)
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_odd_sizes(kind, t, b, i, h, backend):
    extra = {"proj_size": h - 1} if kind == "lstm_proj" else {}  # proj_size < hidden_size
    _check(kind, torch.float64, backend, num_layers=2, bidirectional=True, with_hx=True,
           t=t, b=b, i=i, h=h, **extra)


def _zeros_beside(leaf, dim):
    """``leaf`` interleaved with zeros along a new axis after ``dim``: a view of every other entry is
    ``leaf`` again, with stride 2 along ``dim``."""
    return torch.stack([leaf, torch.zeros_like(leaf)], dim=dim + 1).flatten(dim, dim + 1)


NON_CONTIGUOUS = {
    # name -> (shape of the leaf, differentiable map from the leaf to a non-contiguous (T, B, I) input)
    "transposed": ((T, B, I), lambda leaf: leaf.transpose(0, 1).contiguous().transpose(0, 1)),
    "feature_slice": ((T, B, I), lambda leaf: _zeros_beside(leaf, 2)[..., ::2]),
    "time_stride": ((T, B, I), lambda leaf: _zeros_beside(leaf, 0)[::2]),
    "batch_stride": ((T, B, I), lambda leaf: _zeros_beside(leaf, 1)[:, ::2]),
    "expanded": ((T, 1, I), lambda leaf: leaf.expand(T, B, I)),  # stride 0 over the batch
}


@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_non_contiguous_input(kind, layout, backend):
    dtype = torch.float64
    shape, to_view = NON_CONTIGUOUS[layout]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    view = to_view(x)
    assert view.shape == (T, B, I) and not view.is_contiguous()
    torch.testing.assert_close(view, x.expand(T, B, I) if layout == "expanded" else x, atol=0, rtol=0)
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    hx = random_layer_states(ref, B, dtype)
    expected = forward_backward(ref, x, hx, prepare=to_view)
    got = forward_backward(fast, x, hx, prepare=to_view)
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_non_contiguous_hx(kind, backend):
    """Initial states given as transposed views."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    hx = random_layer_states(ref, B, dtype)
    x = _input(False, dtype)
    results = []
    for module in (ref, fast):
        states = [s.detach().clone().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
                  for s in (hx if isinstance(hx, tuple) else (hx,))]
        assert not any(s.is_contiguous() for s in states)
        arg = tuple(states) if isinstance(hx, tuple) else states[0]
        out, state = module(x, arg)
        outs = [out] + (list(state) if isinstance(state, tuple) else [state])
        sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs)).backward()
        results.append(outs + [s.grad for s in states])
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_unbatched(kind, with_hx, backend):
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, batch_first=True, dtype=dtype,
                                 backend=backend)
    x = torch.randn(T, I, generator=torch.Generator().manual_seed(5), dtype=dtype)
    hx = random_layer_states(ref, None, dtype, batched=False) if with_hx else None
    expected = forward_backward(ref, x, hx)
    got = forward_backward(fast, x, hx)
    assert [o.dim() for o in got["out"]] == [2] * len(got["out"])
    assert_same_results(got, expected, dtype)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_inference_mode(kind, backend):
    """No autograd (the ops run with training=False): outputs still match torch.nn."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    x = _input(False, dtype)
    hx = random_layer_states(ref, B, dtype)
    with torch.inference_mode():
        expected = ref(x, hx)
        got = fast(x, hx)
    for a, b in zip(_flatten(got), _flatten(expected)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_grad_of_input_only(kind, backend):
    """Parameters frozen, only the input requires grad: grads of the input match torch.nn."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    for module in (ref, fast):
        module.requires_grad_(False)
    x = _input(False, dtype)
    grads = []
    for module in (ref, fast):
        leaf = x.clone().requires_grad_()
        out, _ = module(leaf)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                           dtype=dtype)).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
def test_output_changed_in_place_before_backward(kind, bidirectional, backend):
    """torch.nn's GRU and RNN on the CPU let a caller change the output in place before backward (their
    output is a copy of what they save). The cpu backend's backward reads the states from the output
    itself: a changed one is computed again, so the gradients are still exact and nothing raises."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=bidirectional, dtype=dtype, backend=backend)
    x = _input(False, dtype)
    weight = torch.randn(T, B, H * (2 if bidirectional else 1), generator=torch.Generator().manual_seed(1),
                         dtype=dtype)
    grads = []
    for module in (ref, fast):
        leaf = x.clone().requires_grad_()
        out, h_n = module(leaf)
        out.mul_(2).add_(1)
        h_n.mul_(3)
        ((out * weight).sum() + h_n.sum()).backward()
        grads.append([leaf.grad] + [p.grad for p in module.parameters()])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_grad_of_final_hidden_state_only(kind, backend):
    """Only h_n feeds the loss (a sequence classifier): the top layer's output and, for LSTM, every
    c_n get no gradient, which autograd passes to the backward formulas as None."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, I, H, 2, bidirectional=True, dtype=dtype, backend=backend)
    x = _input(False, dtype)
    grads = []
    for module in (ref, fast):
        leaf = x.clone().requires_grad_()
        _, state = module(leaf)
        h_n = state[0] if isinstance(state, tuple) else state
        (h_n * torch.randn(h_n.shape, generator=torch.Generator().manual_seed(2),
                           dtype=dtype)).sum().backward()
        grads.append([leaf.grad] + [p.grad for p in module.parameters()])
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9)


def _flatten(result):
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


# ------------------------------------------------------------------------------------------------
# Low precision: error against a float64 reference at most a small multiple of torch.nn's own error
# in the same dtype (DESIGN.md, Tests).

LOW_PRECISION = {torch.float32: 2.0, torch.bfloat16: 2.0, torch.float16: 2.0}  # dtype -> allowed factor


def _error_vs_float64(module64, module, x64, dtype):
    """Max abs error of ``module`` in ``dtype`` (outputs, states, input grad) against float64."""
    results = []
    for mod, x in ((module64, x64), (module, x64.to(dtype))):
        leaf = x.detach().clone().requires_grad_()
        out, state = mod(leaf)
        tensors = [out] + (list(state) if isinstance(state, tuple) else [state])
        gen = torch.Generator().manual_seed(5)
        sum((t * torch.randn(t.shape, generator=gen).to(t.dtype)).sum() for t in tensors).backward()
        results.append([t.detach().double() for t in tensors] + [leaf.grad.double()])
    return max((a - b).abs().max().item() for a, b in zip(results[1], results[0]))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("backend_name", ["auto", "reference", "cpu"])
def test_low_precision_error_bound(kind, dtype, backend_name):
    """auto, reference and cpu must run every dtype torch.nn runs on CPU (the cpu backend's 16-bit
    path runs its float32 kernels), within a small multiple of torch.nn's own error."""
    if backend_name != "auto" and backend_name not in fastcells.available_backends():
        pytest.skip(f"backend {backend_name!r} not usable here")
    ref64, _ = make_layer_twins(kind, I, 16, 2, bidirectional=True, dtype=torch.float64)
    torch_low = make_layer_twins(kind, I, 16, 2, bidirectional=True, dtype=dtype)[0]
    fast_low = make_layer_twins(kind, I, 16, 2, bidirectional=True, dtype=dtype,
                                backend=backend_name)[1]
    for module in (torch_low, fast_low):
        module.load_state_dict({k: v.to(dtype) for k, v in ref64.state_dict().items()})
    x64 = _input(False, torch.float64, t=6, b=4)
    torch_error = _error_vs_float64(ref64, torch_low, x64, dtype)
    our_error = _error_vs_float64(ref64, fast_low, x64, dtype)
    eps = torch.finfo(dtype).eps
    assert our_error <= LOW_PRECISION[dtype] * torch_error + 4 * eps, (our_error, torch_error)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_batch_large_enough_to_split_across_threads(kind, backend):
    """The cpu kernels split the pointwise pass over batch rows in chunks of 4096 / H rows: a batch of
    600 at H = 16 gives three chunks, so with several threads they run concurrently."""
    _check(kind, torch.float64, backend, num_layers=1, bidirectional=True, with_hx=True,
           t=3, b=600, i=3, h=16, **({"proj_size": 5} if kind == "lstm_proj" else {}))


class _ShapeRecorder(TorchDispatchMode):
    """Records (op name, output shapes) of every aten op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.calls.append((str(func), [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]))
        return out


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_backward_makes_no_zero_gradient_for_saved_activations(kind):
    """The saved activations are an output of the layer op that never gets a gradient; autograd must
    not build a tensor of zeros of their size for it (for an LSTM at T=100, B=32, H=256 that is 23 MB
    and cost ~10 % of a training step)."""
    if "cpu" not in fastcells.available_backends():
        pytest.skip("the cpu backend is not built")
    t, b = 7, 5
    _, fast = make_layer_twins(kind, I, H, 1, dtype=torch.float64, backend="cpu")
    x = torch.randn(t, b, I, dtype=torch.float64, requires_grad=True)
    out, _ = fast(x)
    width = {"lstm": 7 * H, "gru": 5 * H, "rnn_tanh": 2 * H}[kind]
    recorder = _ShapeRecorder()
    with recorder:
        out.sum().backward()
    made = [name for name, shapes in recorder.calls if (t * b, width) in shapes]
    assert not made, made
    assert x.grad is not None
