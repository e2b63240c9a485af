"""Threads: one module shared by 8 threads doing forward passes at once (the inference-server case) gives
bitwise the results of sequential calls, and the right ones (torch.nn's), from its very first calls on
(whatever a module resolves or caches on first use is filled under contention), with no crash or
deadlock; a cell's streaming step releases the GIL while it runs, so other Python threads go on.

No clock is read: the GIL check is a matter of order, not of time (see _ran_while_in_call)."""

import sys
import threading

import pytest
import torch

import fastcells
from fastcells import _extension

from conftest import TOLERANCES, make_cell_twins, make_layer_twins

THREADS = 8
CALLS_PER_THREAD = 4
# (T, B, I) of a layer call: short, since the reference backend's Python time loop in 8 threads hands
# the GIL over at every torch op, and on a loaded 2-core machine each hand-over can wait for a time slice.
LAYER_INPUT = (3, 5, 6)


def _randn(shape, gen, device):
    return torch.randn(shape, generator=gen).to(device)


def _layer_inputs(count, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(_randn(LAYER_INPUT, gen, device),) for _ in range(count)]


def _cell_inputs(kind, count, device, seed=0):
    """(x, state): with a state, an inference call on CPU takes the streaming step."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        x, h = _randn((1, 6), gen, device), _randn((1, 32), gen, device)
        inputs.append((x, (h, _randn((1, 32), gen, device)) if kind == "lstm" else h))
    return inputs


def _outputs(module, args):
    with torch.no_grad():  # grad mode is per thread: set in the thread that calls
        out = module(*args)
    flat = []
    for value in out if isinstance(out, tuple) else (out,):
        flat.extend(value if isinstance(value, tuple) else (value,))
    return flat


def _run_concurrently(module, inputs):
    """``module``'s outputs for every input, from THREADS threads that each wait for all the others
    and then make their share of the calls: a module's first calls come at once."""
    results, errors, start = [None] * len(inputs), [], threading.Barrier(THREADS)

    def work(first):
        try:
            start.wait(timeout=120)
            for index in range(first, len(inputs), THREADS):
                results[index] = _outputs(module, inputs[index])
        except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(first,)) for first in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call did not return in 120 s: deadlock?"
    if errors:
        raise errors[0]
    return results


def _assert_concurrent_calls_are_right(ref, module, inputs):
    """Concurrent calls first, on a module never called before; then the same calls one after
    another: bitwise equal, and close to torch.nn's (a module returning the same wrong or stale
    result to every call would pass the first check alone)."""
    concurrent = _run_concurrently(module, inputs)
    sequential = [_outputs(module, args) for args in inputs]
    # torch.nn on one thread: its oneDNN kernels on these tiny shapes, two OpenMP threads on a shared
    # 2-core machine, spend seconds in barriers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_nn = [_outputs(ref, args) for args in inputs]
    finally:
        torch.set_num_threads(threads)
    atol, rtol = TOLERANCES[torch.float32]
    for index, (got, expected, right) in enumerate(zip(concurrent, sequential, torch_nn, strict=True)):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), f"call {index}: concurrent result differs from sequential"
        for a, b in zip(expected, right, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=f"call {index}: not torch.nn's")


def _skip_triton_interpreter(device, backend):
    if backend == "triton" and device == "cpu":
        pytest.skip("concurrent launches fail in the Triton interpreter (it patches triton.language per "
                    "launch)")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_shared_layer_concurrent_forward(kind, device_backend):
    device, backend = device_backend
    _skip_triton_interpreter(device, backend)
    ref, fast = make_layer_twins(kind, 6, 16, 2, bidirectional=True, dtype=torch.float32,
                                 backend=backend, device=device)
    _assert_concurrent_calls_are_right(ref, fast, _layer_inputs(THREADS * CALLS_PER_THREAD, device))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_shared_cell_concurrent_streaming(kind, device_backend):
    device, backend = device_backend
    _skip_triton_interpreter(device, backend)
    ref, fast = make_cell_twins(kind, 6, 32, dtype=torch.float32, backend=backend, device=device)
    _assert_concurrent_calls_are_right(ref, fast, _cell_inputs(kind, THREADS * CALLS_PER_THREAD, device))


@pytest.mark.parametrize("family", ["layer", "cell"])
def test_auto_backend_modules_first_used_by_many_threads(family):
    """The default backend ("auto") is chosen, and a module's functions resolved, on first use: by
    8 threads at once here, on fresh modules of every kind (a few of each: a race on first use shows
    only at times)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kinds = ["lstm", "gru", "rnn_tanh"] if family == "layer" else ["lstm", "gru", "rnn_relu"]
    for kind in kinds:
        for seed in range(3):
            if family == "layer":
                ref, fast = make_layer_twins(kind, 6, 16, dtype=torch.float32, device=device, seed=seed)
                inputs = _layer_inputs(THREADS, device, seed=seed)
            else:
                ref, fast = make_cell_twins(kind, 6, 32, dtype=torch.float32, device=device, seed=seed)
                inputs = _cell_inputs(kind, THREADS, device, seed=seed)
            assert fast.backend == "auto"
            _assert_concurrent_calls_are_right(ref, fast, inputs)


def _ran_while_in_call(call):
    """Whether this thread ran Python code while ``call`` ran in another thread. No clock: with the
    switch interval set to an hour, a thread holding the GIL keeps it until it releases it itself
    (waiting on a lock, or a C++ call that releases it); so this thread, woken up while the worker is
    in ``call``, can run before the worker has set ``done`` only if ``call`` released the GIL. So
    ``call`` must not free tensors: torch's deallocation of a tensor may release the GIL."""
    done, errors = threading.Event(), []

    def work():
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
            errors.append(error)
            return
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(3600.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()  # waits for the worker to start: releases the GIL, the worker runs on with it
        ran = not done.is_set()  # this thread runs again only once the worker releases the GIL
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:  # a call that failed ended early: it says nothing about the GIL
        raise errors[0]
    return ran


CELLS = {"lstm": fastcells.LSTMCell, "gru": fastcells.GRUCell, "rnn": fastcells.RNNCell}


@pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C is not built")
@pytest.mark.parametrize("kind", CELLS)
def test_streaming_step_releases_the_gil(kind):
    """The cells' streaming step calls the cpu backend's step op straight through pybind11 (no torch
    dispatcher, which would release the GIL itself): the binding must release it. A layer goes through
    the dispatcher and torch ops, which release the GIL whatever fastcells does, so it has no check here.
    A worker that released the GIL might not be scheduled out before its step ends: a few tries, each
    a few steps longer than the last; a step that holds the GIL never lets this thread run."""
    torch.manual_seed(0)
    cell = CELLS[kind](256, 256, backend="cpu")
    for steps in (4, 16, 64):
        x = torch.randn(64, 256)
        hx = (torch.randn(64, 256), torch.randn(64, 256)) if kind == "lstm" else torch.randn(64, 256)
        outputs = []  # kept: freeing a tensor may release the GIL (torch's deallocation does, at times)

        def call():
            with torch.no_grad():  # the streaming step: a plain CPU tensor with a state, no grad
                for _ in range(steps):
                    outputs.append(cell(x, hx))

        if _ran_while_in_call(call):
            return
    pytest.fail(f"no other thread ran while {kind} steps ran: the step op holds the GIL")
