"""Soak and scale: 100k streaming cell steps with flat memory; T=10,000 sequences forward and backward
without recursion limits, saving only what the README's memory figure says (bytes per time step and
layer)."""

import os

import pytest
import torch

from fastcells import _extension

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


def _skip_interpreted_triton(backend, device="cpu"):
    if backend == "triton" and device == "cpu":
        pytest.skip("through Triton's CPU interpreter this many steps take hours; runs on a GPU")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_streaming_steps_keep_memory_flat(kind, device_backend):
    device, backend = device_backend
    _skip_interpreted_triton(backend, device)
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
    _skip_interpreted_triton(backend, device)
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
@pytest.mark.parametrize("family,per_row", [("lstm", lambda H, P: 6 * H + P), ("gru", lambda H, P: 5 * H),
                                            ("rnn", lambda H, P: 2 * H)])
def test_saved_activations_match_the_documented_figure(family, per_row):
    """The README's figure: a training layer op saves per time step B * per_row(H, P) values of the
    dtype (LSTM 6H + P, plus H with a projection; GRU 5H; RNN 2H), and nothing per step otherwise."""
    B, H = 2, 8
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[family]
    gx = torch.randn(LONG_T * B, gates * H)
    h0 = torch.zeros(B, H)
    sizes = torch.full((LONG_T,), B)
    w_hh = torch.randn(gates * H, H) * 0.1
    ops = torch.ops.fastcells
    if family == "lstm":
        saved = ops.lstm_layer_fwd(gx, h0, torch.zeros(B, H), w_hh, None, sizes, False, True)[3]
    elif family == "gru":
        saved = ops.gru_layer_fwd(gx, h0, w_hh, None, sizes, False, True)[2]
    else:
        saved = ops.rnn_layer_fwd(gx, h0, w_hh, sizes, False, False, True)[2]
    assert saved.numel() == LONG_T * B * per_row(H, H)
