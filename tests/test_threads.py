"""Threads: one module shared by 8 threads doing forward passes at once (the inference-server case) gives
bitwise the results of sequential calls, with no crash or deadlock; the compiled ops release the GIL
while they run, so other Python threads go on."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastcells
from fastcells import _extension

from conftest import make_cell_twins, make_layer_twins

THREADS = 8
CALLS_PER_THREAD = 4


def _inputs(count, shape, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device) for _ in range(count)]


def _outputs(module, x):
    with torch.no_grad():
        out = module(x)
    flat = []
    for value in out if isinstance(out, tuple) else (out,):
        flat.extend(value if isinstance(value, tuple) else (value,))
    return flat


def _assert_concurrent_equals_sequential(module, inputs):
    sequential = [_outputs(module, x) for x in inputs]
    with ThreadPoolExecutor(THREADS) as pool:  # map blocks until all are done: a deadlock hangs here
        concurrent = list(pool.map(lambda x: _outputs(module, x), inputs, timeout=120))
    for index, (got, expected) in enumerate(zip(concurrent, sequential)):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), f"call {index}: concurrent result differs from sequential"


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_shared_layer_concurrent_forward(kind, device_backend):
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("concurrent launches fail in the Triton interpreter (it patches triton.language per launch)")
    module = make_layer_twins(kind, 6, 16, 2, bidirectional=True, dtype=torch.float32,
                              backend=backend, device=device)[1]
    _assert_concurrent_equals_sequential(module, _inputs(THREADS * CALLS_PER_THREAD, (7, 5, 6), device))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_shared_cell_concurrent_streaming(kind, device_backend):
    device, backend = device_backend
    if backend == "triton" and device == "cpu":
        pytest.skip("concurrent launches fail in the Triton interpreter (it patches triton.language per launch)")
    module = make_cell_twins(kind, 6, 32, dtype=torch.float32, backend=backend, device=device)[1]
    _assert_concurrent_equals_sequential(module, _inputs(THREADS * CALLS_PER_THREAD, (1, 6), device))


def _longest_pause_while(call):
    """Runs ``call`` in another thread; returns (seconds it took, longest pause of this thread meanwhile).
    A call that holds the GIL stalls this thread for about its whole duration."""
    started, done = threading.Event(), threading.Event()

    def work():
        started.set()
        call()
        done.set()

    worker = threading.Thread(target=work)
    begin = time.perf_counter()
    worker.start()
    started.wait()
    last, longest = time.perf_counter(), 0.0
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    return time.perf_counter() - begin, longest


@pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C is not built")
@pytest.mark.parametrize("op", ["layer", "step"])
def test_compiled_ops_release_the_gil(op):
    if op == "layer":  # through the dispatcher (torch.ops)
        T, B, H = 300, 16, 256
        args = (torch.randn(T * B, 4 * H), torch.zeros(B, H), torch.zeros(B, H),
                torch.randn(4 * H, H) * 0.05, None, torch.full((T,), B), False, False)
        call = lambda: torch.ops.fastcells.lstm_layer_fwd(*args)  # noqa: E731
    else:  # the direct pybind11 binding the cells use eagerly
        B, H = 256, 1024
        args = (torch.randn(B, H), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, H),
                torch.randn(4 * H, H), None, None)
        call = lambda: _extension.C.lstm_step_fwd_cpu(*args)  # noqa: E731
    duration, pause = _longest_pause_while(call)
    assert duration > 0.05, "the call is too short to tell"
    assert pause < duration / 3, f"this thread stalled {pause:.3f} s of a {duration:.3f} s call"


def test_available_backends_is_thread_safe():
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda _: fastcells.available_backends(), range(32)))
    assert all(r == results[0] for r in results)
