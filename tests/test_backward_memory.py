"""What the cpu backend's layer backward ops allocate (issue 16: a call's peak memory no more than
torch.nn's). The gradient of a layer's output is read as autograd gives it, not copied (csrc/cpu/
storage.h's with_contiguous_rows), and the GRU keeps one (N, H) block of its hidden-side gradients,
not (N, 3H) (csrc/cpu/gru_cpu.inc). Peak memory is measured as the benchmark measures it."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastcells
from fastcells import environment
from fastcells.benchmark.timing import peak_bytes
from conftest import make_layer_twins

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)

ops = torch.ops.fastcells
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def _grads(module, x, packed, output_grad):
    """x's and the parameters' gradients after backward from ``output_grad(y)`` (a loss or a tensor)."""
    module.zero_grad()
    x = x.detach().requires_grad_()
    lengths = [x.shape[0] - i // 2 for i in range(x.shape[1])]  # non-increasing
    out, _ = module(pack_padded_sequence(x, lengths) if packed else x)
    y = out.data if packed else out
    grad = output_grad(y)
    if grad.dim() == 0:
        grad.backward()
    else:
        y.backward(grad)
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,batch", [(torch.float64, 3), (torch.float32, 6), (torch.bfloat16, 6)])
@pytest.mark.parametrize("kind", KINDS)
def test_output_gradients_are_read_as_autograd_gives_them(kind, dtype, batch, bidirectional, packed):
    """A loss's gradient often reaches the layer expanded (sum() and mean(): every stride 0; a per-unit
    weight: the rows share one), and a bidirectional layer's op gets a column slice of it. The ops read
    these in place: the gradients are bitwise those of the same values given contiguous. bfloat16 at
    batch 6 keeps its tensors in bfloat16 where the CPU multiplies in it (csrc/cpu/storage.h)."""
    torch.manual_seed(0)
    _, fast = make_layer_twins(kind, 7, 9, 2, dtype=dtype, backend="cpu", bidirectional=bidirectional)
    x = torch.randn(5, batch, 7, dtype=dtype)
    row = torch.randn(9 * (2 if bidirectional else 1), dtype=dtype)
    pairs = [(lambda y: y.sum(), lambda y: torch.ones_like(y)),
             (lambda y: row.expand_as(y), lambda y: row.expand_as(y).contiguous())]
    for given, contiguous in pairs:
        expected = _grads(fast, x, packed, contiguous)
        got = _grads(fast, x, packed, given)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def _backward_peak(module, x, output_grad):
    """Peak bytes of the backward alone (the forward runs before the measurement)."""
    def call():
        y, _ = module(x)
        grad = output_grad(y)
        run = (lambda: y.sum().backward()) if grad is None else (lambda: y.backward(grad))
        return run
    call()()  # the parameters' .grad exist, so the measured call accumulates into them in place
    run = call()
    return peak_bytes(run, "cpu")


@pytest.mark.parametrize("kind", KINDS)
def test_an_expanded_output_gradient_is_not_copied(kind):
    """y.sum().backward() holds no more than a backward given a contiguous gradient made beforehand: the
    op copies no (N, H) block of ones (it did, 800 KiB of a GRU's training call at T=50 B=16 H=256)."""
    torch.manual_seed(0)
    _, fast = make_layer_twins(kind, 32, 32, 1, dtype=torch.float32, backend="cpu")
    x = torch.randn(20, 8, 32, requires_grad=True)
    ones = torch.ones(20, 8, 32)
    expanded = _backward_peak(fast, x, lambda y: None)
    contiguous = _backward_peak(fast, x, lambda y: ones)
    assert expanded <= contiguous + 1024, (expanded, contiguous)  # one row and sum()'s scalars; a copy: 20 KiB


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gru_backward_keeps_one_block_of_hidden_side_gradients(dtype):
    """The gradients of W_hh h + b_hh equal those of the input projections for r and z: the GRU backward
    op keeps only their n block (N, H) beside dgx (N, 3H), and one step's rows for the recurrent product.
    Its peak: its outputs, dgx, that block, at most a packed copy of W_hh and two steps' rows (before, a
    second (N, 3H) block: 2NH more)."""
    T, B, H, I = 20, 8, 48, 40
    N, G = T * B, 3 * H
    gen = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    x, w_ih, w_hh, b_ih, b_hh, h0 = rand(N, I), rand(G, I), rand(G, H) / 4, rand(G), rand(G), rand(B, H)
    sizes = torch.full((T,), B, dtype=torch.long)
    y, _, saved = ops.gru_layer_fwd(x, w_ih, b_ih, b_hh, h0, w_hh, sizes, False, True)
    dy, dhn = rand(N, H), rand(B, H)
    outputs = []
    peak = peak_bytes(lambda: outputs.append(
        ops.gru_layer_bwd(dy, dhn, saved, y, h0, x, w_ih, b_ih, b_hh, w_hh, sizes, False, True)), "cpu")
    size = dtype.itemsize if hasattr(dtype, "itemsize") else torch.finfo(dtype).bits // 8
    returned = sum(t.numel() for t in outputs[-1]) * size
    allowed = returned + (N * G + N * H + G * H + 2 * B * G) * size + 8192
    assert peak <= allowed, (peak, allowed, allowed + 2 * N * H * size)


def _training_peaks(cell, dtype, batch, hidden):
    """Peak bytes of a training call (T=50, I=H) as the benchmark measures them: {provider: bytes}."""
    from fastcells.benchmark.cases import Case
    from fastcells.benchmark.providers import TORCH, make_runner

    case = Case("hidden", cell, "training", dtype, hidden, batch, 50, hidden)
    peaks = {}
    for provider in (TORCH, "cpu"):
        run = make_runner(case, provider, "cpu")
        for _ in range(3):  # as the benchmark's warm-up: the parameters' .grad exist
            run()
        peaks[provider] = peak_bytes(run, "cpu")
    return peaks


@pytest.mark.parametrize("batch,hidden", [(16, 64), (16, 256), (1, 128), (16, 128)])
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_training_call_holds_no_more_than_torch_nn(cell, batch, hidden):
    """Issue 16: a GRU or RNN training call holds no more than torch.nn's in float32, measured as the
    benchmark measures it (its runners and peak_bytes, the report's rows). The CPU ops save no state the
    output holds (csrc/include/fastcells/saved_layout.h), and the RNN's input gradient is written over its
    pre-activation gradient (layers.h's dx_in_place). Before: an RNN held 1.7 times torch.nn's at T=50
    B=16 H=256, a GRU 1.09 times."""
    from fastcells.benchmark.providers import TORCH

    peaks = _training_peaks(cell, "float32", batch, hidden)
    assert peaks["cpu"] <= peaks[TORCH], peaks


@pytest.mark.skipif(not (environment.cpu_bf16_products()
                         and environment.cpu_bf16_backward_gemm() in ("mkl", "vdpbf16ps")),
                    reason="bfloat16 layers multiply in float32 here, or their backward GEMMs run on at::mm")
@pytest.mark.parametrize("cell,batch,hidden", [("gru", 16, 64), ("gru", 16, 128), ("rnn", 16, 64),
                                               ("rnn", 16, 256), ("gru", 1, 128), ("rnn", 1, 128),
                                               ("lstm", 1, 128)])
def test_bf16_training_call_holds_no_more_than_torch_nn(cell, batch, hidden):
    """The same in bfloat16, where the backward's GEMMs run on MKL's bfloat16 GEMM (layers.h's
    weight_grad_into and dx_product): oneDNN's (at::mm) allocated scratch as large as the gradient it
    made, and a GRU then held up to 1.29 times torch.nn's (B=16, H=64). A batch of at most 4 rows keeps
    its tensors in bfloat16 too (csrc/cpu/storage.h): with float32 copies of x, y, dy and the saved rows
    a GRU held 1.58 times torch.nn's at B=1, an RNN 1.43 times (and oneDNN's scratch for the RNN's dx,
    which layers.h's dx_in_place now makes on MKL's GEMM too). At B=16, H=256 a GRU still holds 1.05
    times torch.nn's: at the end of its backward the saved rows, the output, the gate gradients and the
    returned gradients are torch.nn's whole peak already; and 1.16 times at B=4, H=128 (the float32 sums
    of its dw_ih: layers.h's weight_grad_into)."""
    from fastcells.benchmark.providers import TORCH

    peaks = _training_peaks(cell, "bfloat16", batch, hidden)
    assert peaks["cpu"] <= peaks[TORCH], peaks


@pytest.mark.skipif(environment.cpu_f16_backward_gemm() != "packed",
                    reason="float16 layers' backward GEMMs on at::mm here, which takes widened blocks or copies")
@pytest.mark.parametrize("cell,batch,hidden", [("rnn", 16, 64), ("rnn", 16, 128), ("rnn", 16, 256), ("rnn", 1, 128),
                                               ("rnn", 4, 64), ("gru", 16, 64), ("gru", 16, 128), ("gru", 1, 128),
                                               ("lstm", 1, 128)])
def test_float16_training_call_holds_no_more_than_torch_nn(cell, batch, hidden):
    """The same in float16, against torch.nn's float16 loop (per-step autograd, which frees each step's
    tensors as its backward passes them), where the backward's GEMMs run on our packed GEMM, which widens
    the operands as it packs them (csrc/cpu/float_gemm.h): blocks of them widened for at::mm took an RNN
    to 1.31 times torch.nn's peak at B=16 H=256, a GRU to 1.01 at B=16 H=128; an RNN's dx then also goes
    in eighths and its dw_ih's sums mostly in dw_ih (layers.h's dx_in_place, rnn_cpu.inc). Still above
    (bench/results/cpu-amd-epyc-zen5-float16): LSTM at more than one row (the gate gradients of all steps
    beside the saved rows already pass torch.nn's peak), GRU at B=16 H=256 (1.07: its dx beside them) and
    B=4 H=64 (1.07)."""
    from fastcells.benchmark.providers import TORCH

    peaks = _training_peaks(cell, "float16", batch, hidden)
    assert peaks["cpu"] <= peaks[TORCH], peaks
