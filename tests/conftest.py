"""Shared fixtures and helpers: twin builders (torch.nn module + fastcells module with the same weights),
a forward+backward runner that collects every output and gradient, and comparison helpers.

Every comparison is against torch.nn computed in the same test on fresh seeded random inputs.
"""

import contextlib
import copy
import os

import pytest
import torch

# Without a GPU, the triton backend's kernels run on CPU tensors through Triton's interpreter, which
# must be switched on before the kernels are defined (when fastcells is first imported, below).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# On a GPU, torch.nn's cuDNN layers compute float32 with TF32 by default (torch.backends.cudnn.allow_tf32),
# about 1e-3 relative error, which the float32 parity tolerances (1e-5) would count as fastcells' error
# (measured on an H200: 2e-4 absolute at H=7). fastcells' own float32 GEMMs are IEEE, as torch's
# matmuls are by default; so the twins compare in full float32 here.
torch.backends.cudnn.allow_tf32 = False

from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastcells  # noqa: E402 - after TRITON_INTERPRET
from fastcells.numcheck.compare import clearest_relu_draw  # noqa: E402
from fastcells.numcheck.configs import Config  # noqa: E402

BACKENDS = fastcells.available_backends()

# (atol, rtol) by dtype. float64 is tight: both sides run the same math in double precision.
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-5)}

# Layer kinds: name -> (torch.nn class, fastcells class, extra constructor kwargs).
LAYER_KINDS = {
    "lstm": (nn.LSTM, fastcells.LSTM, {}),
    "lstm_proj": (nn.LSTM, fastcells.LSTM, {"proj_size": 3}),
    "gru": (nn.GRU, fastcells.GRU, {}),
    "rnn_tanh": (nn.RNN, fastcells.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, fastcells.RNN, {"nonlinearity": "relu"}),
}

CELL_KINDS = {
    "lstm": (nn.LSTMCell, fastcells.LSTMCell, {}),
    "gru": (nn.GRUCell, fastcells.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, fastcells.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNNCell, fastcells.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend usable in this process (['cpu', 'reference'] on a CPU machine with the extension)."""
    return request.param


# (device, backend): every backend on CPU tensors, and on a machine with a GPU every fused backend on
# CUDA tensors too (the GPU variants of the device-independent suites; absent without a GPU).
DEVICE_BACKENDS = [("cpu", name) for name in BACKENDS] + (
    [("cuda", name) for name in fastcells.available_backends("cuda") if name != "reference"]
    if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICE_BACKENDS, ids=[f"{d}-{b}" for d, b in DEVICE_BACKENDS])
def device_backend(request):
    """(device, backend) pairs: see DEVICE_BACKENDS."""
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a FASTCELLS_BACKEND in the caller's shell must not leak in."""
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)


def cpu_flags():
    """The running CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(next((line for line in cpuinfo if line.startswith("flags")), "").split(":", 1)[-1].split())
    except OSError:
        return set()


def cpu_kernel_copies():
    """The copies of the cpu backend's kernels this CPU can run (csrc/cpu/isa.h), best first."""
    flags = cpu_flags()
    copies = []
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"} <= flags:
        copies.append("avx512")
    if {"avx2", "fma", "f16c"} <= flags:
        copies.append("avx2")
    return copies + ["baseline"]


def copy_weights(src, dst):
    """Loads ``src``'s parameters into ``dst`` through load_state_dict (strict: same keys both ways)."""
    dst.load_state_dict(src.state_dict(), strict=True)
    return dst


def make_twins(kind_table, kind, *args, dtype=torch.float64, backend="auto", seed=0, **kwargs):
    """(torch.nn module, fastcells module) of ``kind`` built with the same arguments and weights."""
    torch_cls, fast_cls, extra = kind_table[kind]
    kwargs = {**extra, **kwargs}
    torch.manual_seed(seed)
    ref = torch_cls(*args, dtype=dtype, **kwargs)
    fast = fast_cls(*args, dtype=dtype, backend=backend, **kwargs)
    copy_weights(ref, fast)
    return ref, fast


def make_layer_twins(kind, *args, **kwargs):
    return make_twins(LAYER_KINDS, kind, *args, **kwargs)


def make_cell_twins(kind, *args, **kwargs):
    return make_twins(CELL_KINDS, kind, *args, **kwargs)


def layer_state_shapes(module, batch, batched=True):
    """Shapes of (h0,) or (h0, c0) for a torch.nn-style layer module."""
    states = module.num_layers * (2 if module.bidirectional else 1)
    out = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    lead = (states, batch) if batched else (states,)
    if module.mode == "LSTM":
        return [lead + (out,), lead + (module.hidden_size,)]
    return [lead + (out,)]


def random_layer_states(module, batch, dtype, batched=True, seed=1):
    """Fresh random initial states for ``module``: a tensor, or an (h0, c0) tuple for LSTM."""
    gen = torch.Generator().manual_seed(seed)
    states = [torch.randn(shape, generator=gen, dtype=dtype)
              for shape in layer_state_shapes(module, batch, batched)]
    return tuple(states) if module.mode == "LSTM" else states[0]


def random_cell_states(module, batch, dtype, seed=1):
    """Fresh random (h, c) for LSTMCell or h for the others; ``batch=None`` means unbatched."""
    gen = torch.Generator().manual_seed(seed)
    shape = (module.hidden_size,) if batch is None else (batch, module.hidden_size)
    count = 2 if isinstance(module, nn.LSTMCell) else 1
    states = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(count)]
    return tuple(states) if count == 2 else states[0]


def _leaves(value):
    """Detached, grad-requiring copies of a tensor / tuple of tensors / None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_()
    return tuple(_leaves(v) for v in value)


def _flat(value):
    """The tensors in ``value``: a tensor, a PackedSequence, nested tuples/lists of them; anything else
    (None, a wrong-type argument a test passes on purpose) holds none."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    return []


def forward_backward(module, x, hx=None, *, prepare=None, backward=True, seed=1234):
    """Runs ``module(prepare(x), hx)`` and backpropagates a random weighting of every output.

    ``x`` and ``hx`` are copied into fresh leaves (the originals are never touched); ``prepare`` maps the
    leaf input to what the module takes (e.g. packs it). The upstream gradients come from a generator
    seeded with ``seed``, so two modules run with the same seed get the same upstream gradients.

    Returns a dict: "out" (list of output tensors: output or its PackedSequence data, then final states),
    "packed" (the PackedSequence output or None), "grad_x", "grad_hx" (list), "grad_params" (name -> grad).
    """
    x_leaf = x.detach().clone().requires_grad_(backward)
    hx_leaf = _leaves(hx) if backward else hx
    inp = prepare(x_leaf) if prepare is not None else x_leaf
    result = module(inp) if hx_leaf is None else module(inp, hx_leaf)
    outs = _flat(result)
    packed = result[0] if isinstance(result, tuple) and isinstance(result[0], PackedSequence) else None
    record = {"out": [o.detach() for o in outs], "packed": packed}
    if not backward:
        return record
    gen = torch.Generator().manual_seed(seed)
    # Drawn in float64 whatever the dtype, so float32 and float64 runs get the same weighting.
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum()
               for o in outs)
    loss.backward()
    record["grad_x"] = x_leaf.grad
    record["grad_hx"] = [h.grad for h in _flat(hx_leaf)]
    record["grad_params"] = {name: p.grad for name, p in module.named_parameters()}
    for p in module.parameters():
        p.grad = None
    return record


def float64_results(module, x, hx=None, **kwargs):
    """forward_backward of a float64 copy of ``module`` on ``x`` and ``hx`` in float64, every tensor
    rounded back to ``x``'s dtype: the truth a float32 result is compared with where torch.nn's own
    float32 result is not exact (on an H200, cuDNN's float32 weight gradients of a tanh RNN differed
    from float64 by 4.7e-5 with TF32 off, while the three fastcells GPU paths agreed to 1e-8)."""
    dtype = x.dtype
    to64 = lambda t: t.double() if isinstance(t, torch.Tensor) else tuple(v.double() for v in t)  # noqa: E731
    record = forward_backward(copy.deepcopy(module).double(), x.double(),
                              None if hx is None else to64(hx), **kwargs)
    back = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    rounded = {"out": [back(o) for o in record["out"]], "packed": record["packed"]}
    if "grad_x" in record:
        rounded["grad_x"] = back(record["grad_x"])
        rounded["grad_hx"] = [back(g) for g in record["grad_hx"]]
        rounded["grad_params"] = {name: back(g) for name, g in record["grad_params"].items()}
    return rounded


def assert_packed_unsorted_matches_torch(kind, lengths, backend, device):
    """A 1-layer bidirectional ``kind`` layer on an unsorted PackedSequence of ``lengths`` (I=3, H=5,
    float64 on ``device``): outputs, states and every gradient equal torch.nn's."""
    dtype = torch.float64
    ref, fast = make_layer_twins(kind, 3, 5, 1, bidirectional=True, dtype=dtype, backend=backend,
                                 device=device)
    x = torch.randn(max(lengths), len(lengths), 3, dtype=dtype, device=device)
    pack = lambda t: pack_padded_sequence(t, torch.tensor(lengths), enforce_sorted=False)  # noqa: E731
    assert_same_results(forward_backward(fast, x, prepare=pack),
                        forward_backward(ref, x, prepare=pack), dtype)


def assert_close(actual, expected, dtype, what="", atol=None, rtol=None):
    default_atol, default_rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, atol=default_atol if atol is None else atol,
                               rtol=default_rtol if rtol is None else rtol, msg=lambda m: f"{what}: {m}")


def assert_same_results(got, expected, dtype, **tol):
    """Compares two forward_backward records entry by entry (outputs, states, every gradient)."""
    assert len(got["out"]) == len(expected["out"])
    for index, (a, b) in enumerate(zip(got["out"], expected["out"])):
        assert a.shape == b.shape, f"output {index}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert_close(a, b, dtype, f"output {index}", **tol)
    if "grad_x" not in expected:
        return
    assert got["grad_x"] is not None, "no gradient reached the input"
    assert_close(got["grad_x"], expected["grad_x"], dtype, "grad of input", **tol)
    assert len(got["grad_hx"]) == len(expected["grad_hx"])
    for index, (a, b) in enumerate(zip(got["grad_hx"], expected["grad_hx"])):
        assert a is not None, f"no gradient reached initial state {index}"
        assert_close(a, b, dtype, f"grad of initial state {index}", **tol)
    assert got["grad_params"].keys() == expected["grad_params"].keys()
    for name, b in expected["grad_params"].items():
        a = got["grad_params"][name]
        if b is None:  # a frozen parameter in torch.nn: frozen here too
            assert a is None, f"parameter {name} got a gradient that torch.nn does not give"
            continue
        assert a is not None, f"no gradient reached parameter {name}"
        assert_close(a, b, dtype, f"grad of {name}", **tol)


def _relative_error(module, x, reference_out, reference_grad):
    """Max relative error of ``module``'s output and input gradient against float64 results."""
    leaf = x.detach().clone().requires_grad_()
    out, _ = module(leaf)
    out.float().sum().backward()
    scale = lambda t: t.abs().max().item() or 1.0  # noqa: E731
    return max((out.double() - reference_out).abs().max().item() / scale(reference_out),
               (leaf.grad.double() - reference_grad).abs().max().item() / scale(reference_grad))


# ReLU's derivative jumps at 0: a pre-activation within rounding of 0 lands on either side in 16 bits and
# moves the input gradient by its own size, in torch.nn's run as in any other (rnn_relu bfloat16, H=64 B=5,
# bidirectional, 24 draws: the cpu backend 0.002-0.045 off float64, torch.nn's own 0.003-0.091; on the
# H200 every persistent variant 0.041 against torch.nn's 0.0039 on one draw). No bound tells that from a
# bug, so, as `python -m fastcells check` does, a relu layer takes of up to RELU_DRAWS inputs the one
# whose pre-activations clear 0 farthest (at that shape: the cpu backend 0.0059 at most, over 12 seeds).
def _relu_input_clear_of_kinks(ref64, x, dtype, bidirectional):
    """Of ``x`` (T, B, I) and fresh draws like it (numcheck's clearest_relu_draw), the one whose float64
    pre-activations in ``ref64`` (a torch.nn ReLU RNN, zero initial state) stay farthest from 0."""
    steps, batch, inputs = x.shape
    config = Config("low_precision_errors", input_size=inputs, hidden_size=ref64.hidden_size, batch=batch,
                    steps=steps, bidirectional=bidirectional)
    states = {"h0": torch.zeros(2 if bidirectional else 1, batch, ref64.hidden_size, dtype=torch.float64,
                                device=x.device)}
    draw = lambda: (torch.randn(x.shape, device=x.device).to(dtype), states)  # noqa: E731
    return clearest_relu_draw(ref64, config, (x, states), draw, dtype)[0]


def low_precision_errors(kind, dtype, backend, device, hidden=16, batch=4, bidirectional=False, steps=6):
    """(fastcells error, torch.nn error) of a ``kind`` layer (input size 8, ``steps`` steps) in ``dtype``
    (bfloat16/float16), both against torch.nn in float64 on the same weights and input, rounded to
    ``dtype`` first so that only the computation differs. The parity rule: the first at most a small
    multiple of the second."""
    shape = dict(bidirectional=bidirectional, backend=backend, device=device)
    ref64, fast = make_layer_twins(kind, 8, hidden, 1, dtype=torch.float64, **shape)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())
    ref_low = make_layer_twins(kind, 8, hidden, 1, dtype=dtype, **shape)[0]
    ref_low.load_state_dict(ref64.state_dict())
    fast = fast.to(dtype)
    fast.load_state_dict(ref64.state_dict())
    x = torch.randn(steps, batch, 8, device=device).to(dtype)
    if kind == "rnn_relu":
        x = _relu_input_clear_of_kinks(ref64, x, dtype, bidirectional)
    leaf = x.double().requires_grad_()
    out64, _ = ref64(leaf)
    out64.sum().backward()
    return (_relative_error(fast, x, out64.detach(), leaf.grad),
            _relative_error(ref_low, x, out64.detach(), leaf.grad))


def opcheck_lstm_layer_fwd(op, device, test_utils=None):
    """torch.library.opcheck of an LSTM layer forward op (``torch.ops.fastcells.lstm_layer_fwd`` or a
    backend's twin) on ``device`` tensors, inference and training: schema, fake implementation,
    autograd registration (``test_utils`` narrows the checks)."""
    dtype = torch.float64
    H, B, T, I = 5, 3, 4, 6
    x = torch.randn(T * B, I, dtype=dtype, device=device, requires_grad=True)
    w_ih = torch.randn(4 * H, I, dtype=dtype, device=device, requires_grad=True)
    b_ih = torch.randn(4 * H, dtype=dtype, device=device, requires_grad=True)
    h0 = torch.randn(B, H, dtype=dtype, device=device)
    c0 = torch.randn(B, H, dtype=dtype, device=device)
    w = torch.randn(4 * H, H, dtype=dtype, device=device, requires_grad=True)
    sizes = torch.full((T,), B, dtype=torch.long)  # batch_sizes stays on the CPU
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    args = (x, w_ih, b_ih, None, h0, c0, w, None, sizes, False)
    # Inference (training=False) keeps nothing for backward, so its inputs require no gradient, as
    # under the modules' torch.no_grad(); opcheck's autograd checks then run on the training call.
    inference_args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(op, (*inference_args, False), **kwargs)
    torch.library.opcheck(op, (*args, True), **kwargs)


class OpRecorder(TorchDispatchMode):
    """Records the names of the fastcells ops dispatched while active (e.g. 'lstm_step_fwd')."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastcells":
            self.names.append(func._opname)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def record_fastcells_ops():
    recorder = OpRecorder()
    with recorder:
        yield recorder.names


@pytest.fixture
def selected_backends(monkeypatch):
    """A list that records the NAME of every backend fastcells.backends.resolve returns (the modules
    look resolve up on the backends package at each call, so this sees every choice)."""
    from fastcells import backends

    chosen = []
    original = backends.resolve

    def spy(requested, device_type, dtype):
        functions = original(requested, device_type, dtype)
        chosen.append(functions.NAME)
        return functions

    monkeypatch.setattr(backends, "resolve", spy)
    return chosen


def snapshot(*values):
    """Copies of every tensor in ``values`` (tensors, tuples, modules' parameters): mutation checks."""
    out = []
    for value in values:
        if isinstance(value, nn.Module):
            out.extend(p.detach().clone() for p in value.parameters())
        else:
            out.extend(t.detach().clone() for t in _flat(value))
    return out


def current(*values):
    out = []
    for value in values:
        if isinstance(value, nn.Module):
            out.extend(p.detach() for p in value.parameters())
        else:
            out.extend(t.detach() for t in _flat(value))
    return out


def assert_unchanged(before, *values):
    after = current(*values)
    assert len(before) == len(after)
    for index, (a, b) in enumerate(zip(after, before)):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True,
                                   msg=lambda m: f"tensor {index} was modified: {m}")


def assert_gemm_within_roundings(gemm, a, b, accumulate, generator, roundings):
    """Runs ``gemm(a, b, out, accumulate)`` on a random float32 ``out`` (m, n) and checks every element
    against the float64 product (plus out's values before, when accumulating): within ``roundings`` float32
    roundings (2^-24 each) of the sum of the magnitudes of its terms; a and b left as they were."""
    m, n = a.shape[0], b.shape[1]
    out = torch.randn(m, n, generator=generator)
    before = out.double() if accumulate else torch.zeros(m, n, dtype=torch.float64)
    a_before, b_before = a.clone(), b.clone()
    gemm(a, b, out, accumulate)
    expected = a.double() @ b.double() + before
    magnitudes = a.double().abs() @ b.double().abs() + before.abs()
    error = (out.double() - expected).abs()
    assert (error <= magnitudes * roundings * 2**-24 + 1e-30).all(), error.max()
    assert torch.equal(a, a_before) and torch.equal(b, b_before)


def gemm_on_each_thread_count(gemm, a, b, counts=(1, 2, 3)):
    """``gemm(a, b, out, False)``'s float32 ``out`` with torch on each number of threads in ``counts``."""
    results = []
    threads = torch.get_num_threads()
    try:
        for count in counts:
            torch.set_num_threads(count)
            out = torch.empty(a.shape[0], b.shape[1])
            gemm(a, b, out, False)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    return results
