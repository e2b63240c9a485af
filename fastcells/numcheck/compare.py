"""Running one check: inputs drawn in float64 and rounded to the dtype under test, torch.nn's float64
results on them, the module under test forward and backward, and the errors."""

import dataclasses
import math
import time
import traceback
import zlib

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ..cells import FAMILIES
from .configs import TOLERANCES, WHATS


@dataclasses.dataclass
class Check:
    """One row of the table and one junit testcase. ``message``: why it failed or was skipped;
    ``details``: the traceback of an exception, for the junit file."""

    backend: str
    cell: str
    dtype: str
    config: str
    what: str
    result: str  # "PASS", "FAIL" or "SKIP"
    max_abs: float | None = None
    max_rel: float | None = None
    tolerance: float | None = None
    message: str = ""
    details: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class Measure:
    """Errors of a set of named tensors against their references. ``worst``: the tensor with the largest
    relative error; ``problems``: missing tensors, missing gradients, shape mismatches."""

    max_abs: float
    max_rel: float
    worst: str
    problems: list


def measure(got, expected):
    """Compares dicts name -> tensor in float64: the max abs error over all tensors, and the max over
    tensors of each one's max abs error / max |reference| (per tensor, so a small tensor such as a
    bias gradient is judged on its own scale). NaN counts as an infinite error."""
    max_abs, max_rel, worst, problems = 0.0, 0.0, "", []
    for name, ref in expected.items():
        value = got.get(name)
        if value is None:
            problems.append(f"{name} is missing")
            continue
        if value.shape != ref.shape:
            problems.append(f"{name} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
            continue
        if ref.numel() == 0:
            continue
        diff = (value.detach().to(torch.float64) - ref).abs()
        abs_err = diff.nan_to_num(nan=math.inf).max().item()
        # An all-zero reference (a ReLU that never fired) has no scale: judge the error absolutely.
        scale = ref.abs().max().item() or 1.0
        rel_err = abs_err / scale
        max_abs = max(max_abs, abs_err)
        if rel_err > max_rel or not worst:
            max_rel, worst = rel_err, name
    return Measure(max_abs, max_rel, worst, problems)


# ------------------------------------------------------------------------------------------------
# Building the modules and inputs of one cell x configuration x dtype


def _generator(seed, *names):
    """A CPU generator seeded from ``seed`` and ``names`` (stable across runs and processes)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32("/".join(names).encode()))


def _rounded(tensor, dtype):
    """``tensor`` (float64) rounded to ``dtype`` and back: exactly representable in both."""
    return tensor.to(dtype).to(torch.float64)


def _constructor(cell, config):
    """(args, kwargs) building the torch.nn and the fastcells module of ``cell`` for ``config``."""
    kwargs = dict(FAMILIES[cell].kwargs, bias=config.bias)
    if config.cell:
        return (config.input_size, config.hidden_size), kwargs
    kwargs.update(batch_first=config.batch_first, bidirectional=config.bidirectional)
    if config.proj_size:
        kwargs["proj_size"] = config.proj_size
    return (config.input_size, config.hidden_size, config.num_layers), kwargs


def _torch_module(cell, config, gen, dtype, device):
    """torch.nn's module in float64 on ``device``, parameters drawn from ``gen`` (uniform in
    +-1/sqrt(hidden), torch's own init range) and rounded to ``dtype``."""
    args, kwargs = _constructor(cell, config)
    module = FAMILIES[cell].classes(config.cell, fast=False)(*args, **kwargs, dtype=torch.float64,
                                                             device=device)
    bound = 1.0 / math.sqrt(config.hidden_size)
    with torch.no_grad():
        for param in module.parameters():
            values = (torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            param.copy_(_rounded(values, dtype))
    return module


def _module_like(reference, cell, config, dtype, backend=None):
    """The module of ``cell`` for ``config`` in ``dtype`` with ``reference``'s weights (through
    load_state_dict): fastcells' on ``backend``, or torch.nn's own when ``backend`` is None."""
    args, kwargs = _constructor(cell, config)
    device = next(reference.parameters()).device
    if backend is not None:
        kwargs["backend"] = backend
    module = FAMILIES[cell].classes(config.cell, fast=backend is not None)(
        *args, **kwargs, dtype=dtype, device=device)
    module.load_state_dict(reference.state_dict())  # copies, converting float64 -> dtype
    return module


def _state_shapes(cell, config):
    """Names and shapes of the initial states: layers (L * D, B, P) and, LSTM, (L * D, B, H);
    cells (B, H) each."""
    hidden, batch = config.hidden_size, config.batch
    if config.cell:
        shapes = {"h0": (batch, hidden), "c0": (batch, hidden)}
    else:
        states = config.num_layers * (2 if config.bidirectional else 1)
        shapes = {"h0": (states, batch, config.proj_size or hidden), "c0": (states, batch, hidden)}
    if cell != "lstm":
        del shapes["c0"]
    return shapes


def _inputs(cell, config, gen, dtype, device):
    """(x, states): standard-normal float64 input and initial states rounded to ``dtype``, on
    ``device``. x (T, B, I) or (B, T, I) for layers, (B, I) for cells; states: name -> tensor."""
    if config.cell:
        shape = (config.batch, config.input_size)
    elif config.batch_first:
        shape = (config.batch, config.steps, config.input_size)
    else:
        shape = (config.steps, config.batch, config.input_size)

    def draw(shape_):
        return _rounded(torch.randn(shape_, generator=gen, dtype=torch.float64), dtype).to(device)

    x = draw(shape)
    return x, {name: draw(shape_) for name, shape_ in _state_shapes(cell, config).items()}


# ReLU's derivative jumps at 0: a pre-activation within rounding of 0 lands on either side in 16 bits,
# in torch.nn's run as in any other, and moves the gradients by their own size (rnn_relu bfloat16
# "no_bias", seed 0: a pre-activation of 2.8e-4 took the cpu backend's weight_ih gradient 0.107 off,
# torch.nn's 0.0023; at another seed torch.nn's was 0.33 off; 7 of seeds 0-15 failed a check so). No
# tolerance separates that from a bug, so the relu cases in 16 bits draw their inputs up to RELU_DRAWS
# times and keep the draw whose float64 pre-activations stay farthest from 0, relative to the sum of
# their terms' magnitudes (_relu_clearance), stopping at the first that clears 0 by eps of the dtype,
# two unit roundoffs, as each rounding of a term or of h moves a pre-activation by up to one.
RELU_DRAWS = 200


def _relu_clearance(reference, config, x, states):
    """The least |pre-activation| / (sum of its terms' magnitudes: inputs times weights, biases) of
    ``reference`` (a float64 torch.nn ReLU RNN or RNNCell) on ``x`` and ``states``."""
    h0 = states["h0"].double()

    def step(inputs, h, suffix):
        """The pre-activations, and their clearance, of one step."""
        w_ih, w_hh = getattr(reference, "weight_ih" + suffix), getattr(reference, "weight_hh" + suffix)
        pre, scale = inputs @ w_ih.T + h @ w_hh.T, inputs.abs() @ w_ih.abs().T + h.abs() @ w_hh.abs().T
        if config.bias:
            b_ih, b_hh = getattr(reference, "bias_ih" + suffix), getattr(reference, "bias_hh" + suffix)
            pre, scale = pre + b_ih + b_hh, scale + b_ih.abs() + b_hh.abs()
        return pre, pre.abs() / scale

    if config.cell:
        return step(x.double(), h0, "")[1].min().item()
    seq = x.double().transpose(0, 1) if config.batch_first else x.double()  # (T, B, I)
    steps, batch = seq.shape[:2]
    lengths = torch.tensor(config.lengths or [steps] * batch, device=seq.device)
    directions = 2 if config.bidirectional else 1
    least = []  # per step, a 0-d tensor: read once at the end (one device sync a draw, not one a step)
    for layer in range(config.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            h, out = h0[layer * directions + direction], []
            for t in (reversed(range(steps)) if direction else range(steps)):
                live = (t < lengths)[:, None]  # the sequences that have step t
                pre, ratio = step(seq[t], h, suffix)
                least.append(torch.where(live, ratio, math.inf).min())
                h = torch.where(live, pre.clamp(min=0), h)
                out.append(torch.where(live, h, torch.zeros_like(h)))
            outputs.append(torch.stack(out[::-1] if direction else out))
        seq = torch.cat(outputs, dim=2)
    return torch.stack(least).min().item()


def clearest_relu_draw(reference, config, first, draw, dtype):
    """(x, states): of ``first`` and up to RELU_DRAWS - 1 more from ``draw()``, the first whose
    _relu_clearance in ``reference`` reaches eps of ``dtype``, else the one with the largest. (Also
    tests/conftest.py's, for its relu layers' inputs.)"""
    best = (_relu_clearance(reference, config, *first), first)
    for _ in range(RELU_DRAWS - 1):
        if best[0] >= torch.finfo(dtype).eps:
            break
        candidate = draw()
        best = max(best, (_relu_clearance(reference, config, *candidate), candidate), key=lambda d: d[0])
    return best[1]


def _clearest_relu_draw(case, config, gen, dtype, device):
    """(x, states) for a relu case: clearest_relu_draw of case's draw and more from ``gen``."""
    return clearest_relu_draw(case.reference, config, (case.x, case.states),
                              lambda: _inputs("rnn_relu", config, gen, dtype, device), dtype)


# ------------------------------------------------------------------------------------------------
# Running a module


def _module_input(config, x):
    """What the module takes: ``x`` itself, or ``x`` packed (enforce_sorted=False) for packed configs."""
    if not config.lengths:
        return x
    lengths = torch.tensor(config.lengths, dtype=torch.long)
    return pack_padded_sequence(x, lengths, batch_first=config.batch_first, enforce_sorted=False)


def _hx(states):
    """The module's hx argument: (h0, c0) for LSTM and LSTMCell, the tensor h0 otherwise."""
    values = tuple(states.values())
    return values if len(values) == 2 else values[0]


def _named_outputs(result, config):
    """name -> tensor of a module's result: output (its data when packed), h_n, c_n for layers;
    h', c' for cells."""
    if config.cell:
        values = result if isinstance(result, tuple) else (result,)
        return dict(zip(("h'", "c'"), values))
    output, states = result
    if isinstance(output, PackedSequence):
        output = output.data
    states = states if isinstance(states, tuple) else (states,)
    return dict(zip(("output", "h_n", "c_n"), (output,) + states))


def run_forward(module, config, x, states, dtype):
    """Forward without autograd (the inference path: the cpu backend's fused step ops, layer ops that
    save nothing). Returns name -> output tensor."""
    with torch.no_grad():
        result = module(_module_input(config, x.to(dtype)),
                        _hx({name: s.to(dtype) for name, s in states.items()}))
    return _named_outputs(result, config)


def run_backward(module, config, x, states, dtype, upstream):
    """Forward with autograd, then backward of sum(output * upstream[output]) over every output, so
    each output gets its own random upstream gradient. Returns name -> tensor: the outputs of this
    forward (the training path computes them separately) and the gradients of the input, the initial
    states and every parameter."""
    # Fresh leaves (copy=True: a float64 .to(float64) would otherwise hand back the shared tensor).
    x_leaf = x.to(dtype, copy=True).requires_grad_()
    state_leaves = {name: s.to(dtype, copy=True).requires_grad_() for name, s in states.items()}
    outputs = _named_outputs(module(_module_input(config, x_leaf), _hx(state_leaves)), config)
    loss = sum((out * upstream[name].to(out.dtype)).sum() for name, out in outputs.items())
    module.zero_grad(set_to_none=True)
    loss.backward()
    record = {f"{name} (autograd)": out.detach() for name, out in outputs.items()}
    record["grad input"] = x_leaf.grad
    record.update({f"grad {name}": leaf.grad for name, leaf in state_leaves.items()})
    record.update({f"grad {name}": p.grad for name, p in module.named_parameters()})
    return record


# ------------------------------------------------------------------------------------------------
# One cell x configuration x dtype: the reference, shared by every backend


@dataclasses.dataclass
class Case:
    """Inputs and torch.nn's float64 results of one cell x config x dtype, and the tolerance per what.
    ``error``: why they could not be computed; ``skip``: why no tolerance exists (both empty normally)."""

    reference: nn.Module = None
    x: torch.Tensor = None
    states: dict = None
    upstream: dict = None
    expected: dict = None  # what -> name -> float64 tensor
    tolerance: dict = None  # what -> bound on the max relative error
    torch_error: dict = None  # what -> torch.nn's own max relative error in dtype, when measured
    error: str = ""
    details: str = ""
    skip: str = ""


def build_case(cell, config, dtype, device, seed):
    """Draws the inputs of ``cell`` x ``config`` (rounded to ``dtype``), runs torch.nn in float64 on
    them, and sets the tolerance of each what (measuring torch.nn in ``dtype`` where the rule asks)."""
    case = Case()
    gen = _generator(seed, cell, config.name)
    try:
        case.reference = _torch_module(cell, config, gen, dtype, device)
        case.x, case.states = _inputs(cell, config, gen, dtype, device)
        if cell == "rnn_relu" and dtype in (torch.float16, torch.bfloat16):
            case.x, case.states = _clearest_relu_draw(case, config, gen, dtype, device)
        forward = run_forward(case.reference, config, case.x, case.states, torch.float64)
        case.upstream = {
            name: _rounded(torch.randn(out.shape, generator=gen, dtype=torch.float64), dtype).to(device)
            for name, out in forward.items()
        }
        backward = run_backward(case.reference, config, case.x, case.states, torch.float64,
                                case.upstream)
        case.expected = {"forward": forward, "backward": backward}
    except Exception as error:  # a broken reference fails the checks that need it, not the run
        case.error = f"the float64 torch.nn reference failed: {type(error).__name__}: {error}"
        case.details = traceback.format_exc()
        return case
    rule = TOLERANCES[dtype]
    if not rule.needs_torch_error:
        case.tolerance = {what: rule.bound() for what in WHATS}
        return case
    try:
        module = _module_like(case.reference, cell, config, dtype)
        got = {"forward": run_forward(module, config, case.x, case.states, dtype),
               "backward": run_backward(module, config, case.x, case.states, dtype, case.upstream)}
    except Exception as error:
        case.skip = (f"no tolerance: torch.nn cannot run in {_dtype_name(dtype)} here "
                     f"({type(error).__name__}: {error})")
        return case
    case.torch_error = {what: measure(got[what], case.expected[what]).max_rel for what in WHATS}
    if not all(math.isfinite(error) for error in case.torch_error.values()):
        # An overflowing torch.nn would set an infinite bound that any backend passes.
        case.skip = f"no tolerance: torch.nn's own error in {_dtype_name(dtype)} is not finite here"
        return case
    case.tolerance = {what: rule.bound(case.torch_error[what]) for what in WHATS}
    return case


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def check_backend(backend, cell, config, dtype, case):
    """The forward and backward checks of ``backend`` on one case -> [Check, Check]. An exception in
    the module under test fails the check it happened in, with its text."""
    labels = dict(backend=backend, cell=cell, dtype=_dtype_name(dtype), config=config.name)
    if case.error:
        return [Check(**labels, what=what, result="FAIL", message=case.error, details=case.details)
                for what in WHATS]
    if case.skip:
        return [Check(**labels, what=what, result="SKIP", message=case.skip) for what in WHATS]
    checks = []
    module, build_error = None, None
    try:
        module = _module_like(case.reference, cell, config, dtype, backend)
    except Exception as error:
        build_error = (f"building the module failed: {type(error).__name__}: {error}",
                       traceback.format_exc())
    for what in WHATS:
        check = Check(**labels, what=what, result="FAIL", tolerance=case.tolerance[what])
        start = time.perf_counter()
        if build_error is not None:
            check.message, check.details = build_error
        else:
            try:
                if what == "forward":
                    got = run_forward(module, config, case.x, case.states, dtype)
                else:
                    got = run_backward(module, config, case.x, case.states, dtype, case.upstream)
                _judge(check, measure(got, case.expected[what]), case)
            except Exception as error:
                check.message = f"{type(error).__name__}: {error}"
                check.details = traceback.format_exc()
        check.seconds = time.perf_counter() - start
        checks.append(check)
    return checks


def _judge(check, result, case):
    """Sets ``check``'s errors, result and (on failure) message from a Measure."""
    check.max_abs, check.max_rel = result.max_abs, result.max_rel
    if result.problems:
        check.message = "; ".join(result.problems)
        return
    if result.max_rel <= check.tolerance:
        check.result = "PASS"
        return
    check.message = (f"max rel error {result.max_rel:.3g} > tolerance {check.tolerance:.3g} "
                     f"(worst: {result.worst})")
    if case.torch_error is not None:
        check.message += f"; torch.nn's own error in {check.dtype}: {case.torch_error[check.what]:.3g}"


def skipped(backend, cell, config, dtype, reason):
    """The checks of a backend that does not compute in ``dtype``: SKIP, with the backend's reason."""
    return [Check(backend=backend, cell=cell, dtype=_dtype_name(dtype), config=config.name, what=what,
                  result="SKIP", message=f"not usable in {_dtype_name(dtype)}: {reason}")
            for what in WHATS]
