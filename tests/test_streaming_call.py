"""The cells' streaming call (fastcells/modules.py, _FusedCellMixin.__call__): an inference step with a
state skips nn.Module.__call__ and forward's Python, so it must keep everything they would have done:
hooks, a replaced forward, and the full path wherever something traces, transforms or records the call
(fastcells._C.streaming_allowed, checked against the Python checks it stands for)."""

import contextlib
import os
import re

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastcells
from fastcells import _extension, autocast, backends, modules
from fastcells.backends import cpu as cpu_backend

from conftest import CELL_KINDS, make_cell_twins, random_cell_states

pytestmark = pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C not loaded")


def _state_tuple(output):
    return output if isinstance(output, tuple) else (output,)


def _assert_same_outputs(got, expected):
    for a, b in zip(_state_tuple(got), _state_tuple(expected), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def _twins_and_inputs(kind, batch=3):
    ref, fast = make_cell_twins(kind, 4, 5, backend="cpu")
    x = torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return ref, fast, x, random_cell_states(ref, batch, torch.float64)


def _double(output):
    return tuple(2 * t for t in output) if isinstance(output, tuple) else 2 * output


@pytest.mark.parametrize("where", ["module", "global"])
@pytest.mark.parametrize("hook", ["forward", "forward_pre", "forward_with_kwargs"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_hooks_run_as_on_torch_cells(kind, hook, where):
    """A hook changes the step's input or output, on the module or for every module: fastcells' step
    gives what torch.nn's gives, the hook called once a call."""
    ref, fast, x, hx = _twins_and_inputs(kind)
    calls = []

    def on_forward(module, args, output):
        calls.append(type(module))
        return _double(output)

    def on_forward_pre(module, args):
        calls.append(type(module))
        return (args[0] + 1, args[1])

    def on_forward_with_kwargs(module, args, kwargs, output):
        calls.append(type(module))
        return _double(output)

    register = {
        ("forward", "module"): lambda m: m.register_forward_hook(on_forward),
        ("forward_pre", "module"): lambda m: m.register_forward_pre_hook(on_forward_pre),
        ("forward_with_kwargs", "module"): lambda m: m.register_forward_hook(on_forward_with_kwargs,
                                                                              with_kwargs=True),
        ("forward", "global"): lambda m: nn.modules.module.register_module_forward_hook(on_forward),
        ("forward_pre", "global"): lambda m: nn.modules.module.register_module_forward_pre_hook(
            on_forward_pre),
        ("forward_with_kwargs", "global"): lambda m: nn.modules.module.register_module_forward_hook(
            on_forward_with_kwargs, with_kwargs=True),
    }[hook, where]
    with torch.no_grad():
        expected_without = ref(x, hx)
        handles = [register(ref), register(fast)] if where == "module" else [register(None)]
        try:
            expected, got = ref(x, hx), fast(x, hx)
        finally:
            for handle in handles:
                handle.remove()
        _assert_same_outputs(got, expected)
        assert calls == [type(ref), type(fast)]
        _assert_same_outputs(fast(x, hx), expected_without)  # the hooks removed, the shortcut again
        assert len(calls) == 2


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_replaced_forward_runs(kind):
    """A forward replaced on the instance, or overridden by a subclass, is what a call runs."""
    ref, fast, x, hx = _twins_and_inputs(kind)
    fast.forward = lambda input, hx=None: "replaced"
    with torch.no_grad():
        assert fast(x, hx) == "replaced"

    class Doubled(type(fast)):
        def forward(self, input, hx=None):
            return _double(super().forward(input, hx))

    doubled = Doubled(4, 5, dtype=torch.float64, backend="cpu", **CELL_KINDS[kind][2])
    doubled.load_state_dict(ref.state_dict())
    with torch.no_grad():
        _assert_same_outputs(doubled(x, hx), _double(ref(x, hx)))


_GLOBAL_HOOK_REGISTRATIONS = {
    "forward": nn.modules.module.register_module_forward_hook,
    "forward_pre": nn.modules.module.register_module_forward_pre_hook,
    "full_backward": nn.modules.module.register_module_full_backward_hook,
    "full_backward_pre": nn.modules.module.register_module_full_backward_pre_hook,
}


def _count_module_calls(monkeypatch):
    """The modules that nn.Module.__call__ runs from now on, in a list."""
    through, module_call = [], nn.Module.__call__

    def counted(module, *args, **kwargs):
        through.append(type(module))
        return module_call(module, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__call__", counted)
    return through


@pytest.mark.parametrize("where", ["module", "global"])
@pytest.mark.parametrize("hook", list(_GLOBAL_HOOK_REGISTRATIONS))
@pytest.mark.parametrize("kind", ["lstm", "rnn_relu"])
def test_any_hook_sends_the_call_through_module_call(kind, hook, where, monkeypatch):
    """Each of nn.Module.__call__'s eight hook dicts (four on the module, four global) holding a hook
    sends an inference step through it, as torch.nn's cell goes; torch.nn's results."""
    ref, fast, x, hx = _twins_and_inputs(kind)
    with torch.no_grad():
        expected = ref(x, hx)
    ran = []
    handle = (getattr(fast, f"register_{hook}_hook")(lambda *args: ran.append(hook)) if where == "module"
              else _GLOBAL_HOOK_REGISTRATIONS[hook](lambda *args: ran.append(hook)))
    through = _count_module_calls(monkeypatch)
    try:
        with torch.no_grad():
            _assert_same_outputs(fast(x, hx), expected)
    finally:
        handle.remove()
    assert through == [type(fast)]
    assert ran == ([] if "backward" in hook else [hook])  # backward hooks: no backward under no_grad
    with torch.no_grad():
        fast(x, hx)
    assert through == [type(fast)]  # the hook removed: streaming again


@pytest.mark.parametrize("kind", ["gru"])
def test_compiled_call_takes_its_way(kind):
    """A module with a compiled call (Module.compile sets _compiled_call_impl) runs it, as
    nn.Module.__call__ does."""
    _, fast, x, hx = _twins_and_inputs(kind)
    fast._compiled_call_impl = lambda *args, **kwargs: "compiled"
    with torch.no_grad():
        assert fast(x, hx) == "compiled"


def test_rnn_cell_steps_by_its_nonlinearity_now():
    """An RNNCell's nonlinearity changed after construction is the one its streaming step uses; an
    unknown one gets torch.nn's error from the full path."""
    ref, fast, x, hx = _twins_and_inputs("rnn_tanh")
    ref.nonlinearity = fast.nonlinearity = "relu"
    with torch.no_grad():
        _assert_same_outputs(fast(x, hx), ref(x, hx))
        fast.nonlinearity = ref.nonlinearity = "sigmoid"
        with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
            ref(x, hx)
        with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
            fast(x, hx)


def _count_full_paths(monkeypatch):
    """The calls that take a cell's full forward (which checks its arguments) from now on, in a list."""
    full, check = [], modules._check_cell_args

    def counted(*args, **kwargs):
        full.append(True)
        return check(*args, **kwargs)

    monkeypatch.setattr(modules, "_check_cell_args", counted)
    return full


@pytest.mark.parametrize("hooked", [False, True], ids=["call", "forward"])
@pytest.mark.parametrize("environ", ["os.environ", "replaced"])
@pytest.mark.parametrize("env", [None, "", "auto", "cpu", "reference", "no-such-backend"])
@pytest.mark.parametrize("requested", ["auto", "cpu", "reference"])
def test_streaming_call_where_the_backend_choice_is_the_cpu_backend(requested, env, environ, hooked, monkeypatch):
    """fastcells._C.cell_streaming_call's choice of backend (the module's, FASTCELLS_BACKEND for "auto",
    read from os.environ as backends reads it, even where os.environ was replaced and the process's
    environment says otherwise) is backends.select's: the step streams exactly where that is the cpu
    backend, from __call__ and from forward (a hook sends the call there), and where select raises (an
    unknown name), the call raises its error."""
    if environ == "replaced":  # the process's environment (getenv) then says "reference"
        monkeypatch.setenv(backends.ENV_VAR, "reference")
        replaced = {name: value for name, value in os.environ.items() if name != backends.ENV_VAR}
        monkeypatch.setattr(os, "environ", replaced if env is None else {**replaced, backends.ENV_VAR: env})
    elif env is None:
        monkeypatch.delenv(backends.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(backends.ENV_VAR, env)
    ref, fast, x, hx = _twins_and_inputs("lstm")
    fast.backend = requested
    ran = []
    if hooked:
        fast.register_forward_pre_hook(lambda *args: ran.append("hook"))
    try:
        streams = backends.select(requested, "cpu", torch.float32).NAME == "cpu"
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))), torch.no_grad():
            fast(x, hx)
        return
    with torch.no_grad():
        expected = ref(x, hx)
        full = _count_full_paths(monkeypatch)
        _assert_same_outputs(fast(x, hx), expected)
    assert full == ([] if streams else [True])
    assert ran == (["hook"] if hooked else [])


def test_subclasses_stream_unless_forward_or_kind_says_otherwise(monkeypatch):
    """A subclass that keeps the cells' forward streams; a forward patched on the class runs; a step kind
    the C++ does not know (too large, out of range) sends the call down the full path."""
    ref, fast, x, hx = _twins_and_inputs("gru")

    class Kept(fastcells.GRUCell):
        pass

    kept = Kept(4, 5, dtype=torch.float64)
    kept.load_state_dict(ref.state_dict())
    with torch.no_grad():
        expected = ref(x, hx)
        full = _count_full_paths(monkeypatch)
        _assert_same_outputs(kept(x, hx), expected)
        assert full == []
        for kind in (2 ** 70, 9, -1):
            monkeypatch.setattr(Kept, "_STREAMING_KIND", kind)
            _assert_same_outputs(kept(x, hx), expected)
            assert full.count(True) == 1
            full.clear()
        monkeypatch.setattr(fastcells.GRUCell, "forward", lambda self, input, hx=None: "patched")
        assert fast(x, hx) == "patched"


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_streaming_call_skips_module_call(kind, monkeypatch):
    """An inference step with a state runs without nn.Module.__call__ (its point), with torch.nn's
    results; a call without a state, or with gradients, goes through it."""
    ref, fast, x, hx = _twins_and_inputs(kind)
    with torch.no_grad():
        expected = ref(x, hx)
        expected_zero_state = ref(x)
    through_module_call = _count_module_calls(monkeypatch)
    with torch.no_grad():
        _assert_same_outputs(fast(x, hx), expected)
        assert through_module_call == []
        _assert_same_outputs(fast(x), expected_zero_state)
        _assert_same_outputs(fast(x, hx=hx), expected)
    assert through_module_call == [type(fast)] * 2
    fast(x, hx)  # gradients on
    assert len(through_module_call) == 3


def _python_checks():
    """What fastcells._C.streaming_allowed stands for, as the Python of modules.py and backends/cpu.py
    asked it before: no gradient, no autocast, calls that may skip the dispatcher."""
    return (not torch.is_grad_enabled() and not autocast.any_enabled()
            and cpu_backend.direct_calls_allowed())


class _PassThroughFunctions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _PassThroughDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _in_vmap(check):
    seen = []

    def body(row):
        seen.append(check())
        return row * 2

    torch.vmap(body)(torch.ones(2, 3))
    return seen[0]


def _in_grad_transform(check):
    seen = []

    def body(value):
        seen.append(check())
        return (value * value).sum()

    with torch.no_grad():
        torch.func.grad(body)(torch.ones(3))
    return seen[0]


def _in_jit_trace(check):
    seen = []

    def body(value):
        seen.append(check())
        return value * 2

    with torch.no_grad():
        torch.jit.trace(body, (torch.ones(3),), check_trace=False)
    return seen[0]


def _in_context(context):
    def run(check):
        with context():
            return check()
    return run


CONTEXTS = {
    "no_grad": (_in_context(torch.no_grad), True),
    "inference_mode": (_in_context(torch.inference_mode), True),
    "grad": (_in_context(torch.enable_grad), False),
    "autocast_cpu": (_in_context(lambda: _nested(torch.no_grad(), torch.autocast("cpu"))), False),
    "torch_function_mode": (_in_context(lambda: _nested(torch.no_grad(), _PassThroughFunctions())), False),
    "torch_dispatch_mode": (_in_context(lambda: _nested(torch.no_grad(), _PassThroughDispatch())), False),
    "vmap": (lambda check: _in_context(torch.no_grad)(lambda: _in_vmap(check)), False),
    "grad_transform": (_in_grad_transform, False),
    "jit_trace": (_in_jit_trace, False),
    "forward_ad_dual_level": (_in_context(lambda: _nested(torch.no_grad(), torch.autograd.forward_ad.dual_level())),
                              False),
}


@contextlib.contextmanager
def _nested(first, second):
    """Two context managers entered in order, as one."""
    with first, second:
        yield


@pytest.mark.parametrize("context", CONTEXTS)
def test_streaming_allowed_where_the_python_checks_allow(context):
    run, allowed = CONTEXTS[context]
    assert run(_python_checks) is allowed
    assert run(_extension.C.streaming_allowed) is allowed


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_streaming_step_refuses_what_it_cannot_take(kind):
    """fastcells._C.streaming_step returns None (the full path's turn) for a state of the wrong form,
    a tensor subclass, a weight moved out of the parameter dict, or a shape the op refuses."""
    ref, fast, x, hx = _twins_and_inputs(kind)
    step = _extension.C.streaming_step
    code = modules._STEP_KINDS[kind]
    params = dict(fast._parameters)

    class Sub(torch.Tensor):
        pass

    with torch.no_grad():
        _assert_same_outputs(step(code, x, hx, params), ref(x, hx))
        h = hx[0] if isinstance(hx, tuple) else hx
        bad_states = [[*hx] if isinstance(hx, tuple) else (h,), h[:, :3] if not isinstance(hx, tuple)
                      else (h, h[:, :3]), None]
        for state in bad_states:
            assert step(code, x, state, params) is None
        assert step(code, x.as_subclass(Sub), hx, params) is None
        assert step(code, x[:, :3], hx, params) is None
        assert step(code, x.float(), hx, params) is None  # dtype unlike the states'
        assert step(code, x.unsqueeze(0), hx, params) is None
        del params["weight_hh"]
        assert step(code, x, hx, params) is None
    with pytest.raises(ValueError, match="unknown step kind"):
        step(7, x, hx, dict(fast._parameters))


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_other_devices_never_ask_for_the_cpu_backend(kind, monkeypatch):
    """A call on another device's tensors (meta here; CUDA on a GPU) takes the full path without asking
    for the cpu backend, which a module or FASTCELLS_BACKEND naming the cuda backend refuses (raises)."""
    ref, _ = make_cell_twins(kind, 4, 5, backend="cpu")
    cell = CELL_KINDS[kind][1](4, 5, device="meta", **CELL_KINDS[kind][2])
    hx = random_cell_states(ref, 3, torch.float32)
    hx = tuple(t.to("meta") for t in hx) if isinstance(hx, tuple) else hx.to("meta")
    asked, resolve = [], backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda requested, device_type, dtype: (
        asked.append(device_type), resolve(requested, device_type, dtype))[1])
    with torch.no_grad():
        output = cell(torch.empty(3, 4, device="meta"), hx)
    assert all(t.is_meta for t in _state_tuple(output))
    assert asked == ["meta"]
