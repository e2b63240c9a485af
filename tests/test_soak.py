"""Soak and scale: 100k streaming cell steps with flat memory; T=10,000 sequences forward and backward
without recursion limits, saving only what the README's memory figure says (bytes per time step and
layer)."""

import os

import pytest
import torch

from fastcells import _extension, saved_layout

from conftest import make_cell_twins, make_layer_twins

STREAM_STEPS = 100_000
LONG_T = 10_000


def _resident_bytes():
    """This process's resident memory (Linux /proc; the test skips elsewhere)."""
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _gpu_bytes(device):
    """Bytes the CUDA caching allocator has handed out (0 for CPU runs)."""
    return torch.cuda.memory_allocated() if device == "cuda" else 0


def _skip_unless_our_kernels(backend, device="cpu"):
    """The soaks are about our kernels. The reference backend is plain torch ops (there a soak times
    autograd's graph over 10,000 steps: 4 of the suite's minutes, nothing of ours); the triton kernels
    through Triton's CPU interpreter take hours at this length (they soak on a GPU)."""
    if backend == "reference":
        pytest.skip("the reference backend runs plain torch ops: nothing of ours to soak")
    if backend == "triton" and device == "cpu":
        pytest.skip("through Triton's CPU interpreter this many steps take hours; runs on a GPU")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_streaming_steps_keep_memory_flat(kind, device_backend):
    device, backend = device_backend
    _skip_unless_our_kernels(backend, device)
    cell = make_cell_twins(kind, 8, 16, dtype=torch.float32, backend=backend, device=device)[1]
    x = torch.randn(1, 8, device=device)
    zeros = lambda: torch.zeros(1, 16, device=device)  # noqa: E731
    state = (zeros(), zeros()) if kind == "lstm" else zeros()
    with torch.inference_mode():
        for _ in range(5_000):  # warm-up: allocator pools and caches reach their steady size
            state = cell(x, state)
        before, before_gpu = _resident_bytes(), _gpu_bytes(device)
        for _ in range(STREAM_STEPS):
            state = cell(x, state)
        growth = _resident_bytes() - before
        assert _gpu_bytes(device) == before_gpu, "GPU memory allocated grew over the steps"
    # A leak of even 20 bytes per step would show as 2 MB.
    assert growth < 2 * 2**20, f"resident memory grew {growth / 2**20:.1f} MiB over {STREAM_STEPS} steps"
    first = state[0] if kind == "lstm" else state
    assert torch.isfinite(first).all()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_ten_thousand_steps_forward_and_backward(kind, device_backend):
    device, backend = device_backend
    _skip_unless_our_kernels(backend, device)
    ref, fast = make_layer_twins(kind, 3, 8, 1, dtype=torch.float64, backend=backend, device=device)
    x = torch.randn(LONG_T, 2, 3, dtype=torch.float64, device=device)
    results = []
    for module in (fast, ref):
        leaf = x.clone().requires_grad_()
        out, _ = module(leaf)
        out.sum().backward()  # autograd walks the graph iteratively: no recursion limit to hit
        results.append((out.detach(), leaf.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-8)


@pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C is not built")
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_saved_activations_match_the_documented_figure(family):
    """A training layer op over LONG_T steps saves B * width values a step and nothing else (the
    README's figure: LSTM 6H + P, plus H with a projection; GRU 4H; RNN none), and nothing at all in
    inference. The widths come from fastcells/saved_layout.py, itself checked against the C++ header
    in test_saved_layout.py."""
    width = {"lstm": lambda H: saved_layout.lstm_saved_width(H, H, False),
             "gru": lambda H: saved_layout.gru_saved_width(H, reads_output=True),
             "rnn": lambda H: saved_layout.rnn_saved_width(H, reads_output=True)}[family]
    B, H, I = 2, 8, 3
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[family]
    x, w_ih = torch.randn(LONG_T * B, I), torch.randn(gates * H, I) * 0.1
    h0, w_hh = torch.zeros(B, H), torch.randn(gates * H, H) * 0.1
    sizes = torch.full((LONG_T,), B)
    ops = torch.ops.fastcells

    def saved(training):
        if family == "lstm":
            return ops.lstm_layer_fwd(x, w_ih, None, None, h0, torch.zeros(B, H), w_hh, None, sizes,
                                      False, training)[3]
        if family == "gru":
            return ops.gru_layer_fwd(x, w_ih, None, None, h0, w_hh, sizes, False, training)[2]
        return ops.rnn_layer_fwd(x, w_ih, None, None, h0, w_hh, sizes, False, False, training)[2]

    assert saved(True).numel() == LONG_T * B * width(H)
    assert saved(False).numel() == 0
