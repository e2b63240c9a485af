"""bfloat16 and float16 in the cpu backend (issue 16): 16-bit inputs, weights, outputs and saved
activations, float32 math and states inside (csrc/cpu/register_cpu.cpp). The error against float64 is
bounded by torch.nn's own in the same dtype, as on the GPU; `auto` picks the cpu backend for them."""

import copy
import os
import subprocess
import sys

import pytest
import torch

import fastcells
from fastcells import backends, environment, info
from conftest import (OpRecorder, cpu_flags, cpu_kernel_copies, low_precision_errors, make_cell_twins,
                      make_layer_twins)

if "cpu" not in fastcells.available_backends("cpu"):
    pytest.skip("the cpu backend is not built", allow_module_level=True)

DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_layer_error_bounded_by_torch_own(kind, dtype, bidirectional):
    fast_error, torch_error = low_precision_errors(kind, dtype, "cpu", "cpu", hidden=37, batch=5,
                                                   bidirectional=bidirectional)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(dtype).eps), (fast_error, torch_error)


@pytest.mark.parametrize("batch", [1, 4, 5])  # up to 4 rows, bfloat16 weights are read as they are
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_cell_steps_error_bounded_by_torch_own(kind, dtype, batch):
    ref, fast = make_cell_twins(kind, 6, 37, dtype=torch.float64, backend="cpu")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype).double())
    fast.load_state_dict(ref.state_dict())
    low = make_cell_twins(kind, 6, 37, dtype=dtype)[0]
    low.load_state_dict(ref.state_dict())
    fast = fast.to(dtype)
    x = torch.randn(batch, 6).to(dtype)
    flat = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.no_grad():
        exact = flat(ref(x.double()))
        errors = [(flat(m(x)).double() - exact).abs().max().item() for m in (fast, low)]
    assert errors[0] <= max(4 * errors[1], 4 * torch.finfo(dtype).eps * exact.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_runs_the_cpu_kernels_and_keeps_16_bits(dtype):
    """auto picks the compiled cpu ops (not the reference loop) for 16-bit tensors; outputs, states,
    gradients and the saved activations (half the memory of float32's) are in that dtype."""
    assert backends.select("auto", "cpu", dtype).NAME == "cpu"
    layer = fastcells.LSTM(6, 37, dtype=dtype)
    x = torch.randn(4, 3, 6, dtype=dtype, requires_grad=True)
    with OpRecorder() as ops:
        out, (h, c) = layer(x)
        out.float().sum().backward()
    assert "lstm_layer_fwd" in ops.names and "lstm_layer_bwd" in ops.names
    assert out.dtype == h.dtype == c.dtype == x.grad.dtype == layer.weight_hh_l0.grad.dtype == dtype
    op_args = (x.detach().view(12, 6), layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0,
               torch.zeros(3, 37, dtype=dtype), torch.zeros(3, 37, dtype=dtype), layer.weight_hh_l0, None,
               torch.full((4,), 3), False, True)
    saved = torch.ops.fastcells.lstm_layer_fwd(*op_args)[3]
    assert saved.dtype == dtype


@pytest.mark.parametrize("x_dtype,w_dtype,message", [
    (torch.float32, torch.bfloat16, "w_ih must have dtype Float like x, got BFloat16"),
    (torch.bfloat16, torch.float32, "w_ih must have dtype BFloat16 like x, got Float"),
    (torch.float64, torch.bfloat16, "w_ih must have dtype Double like x, got BFloat16"),
    (torch.float32, torch.float16, "w_ih must have dtype Float like x, got Half"),
    (torch.float16, torch.float32, "w_ih must have dtype Half like x, got Float"),
    (torch.float16, torch.bfloat16, "w_ih must have dtype Half like x, got BFloat16")])
def test_cell_steps_refuse_weights_of_another_dtype(x_dtype, w_dtype, message):
    """The step kernels take a 16-bit call's weights unconverted, never a float32 call's 16-bit ones."""
    x, h = torch.randn(1, 4, dtype=x_dtype), torch.randn(1, 5, dtype=x_dtype)
    w_ih, w_hh = torch.randn(5, 4, dtype=w_dtype), torch.randn(5, 5, dtype=w_dtype)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastcells.rnn_step_fwd(x, h, w_ih, w_hh, None, None, False)


@pytest.mark.parametrize("batch", [2, 6])  # bfloat16 weights as they are up to 4 rows (run_keeping_weights)
@pytest.mark.parametrize("x_dtype,w_dtype,message", [
    (torch.float32, torch.bfloat16, "w_ih must have dtype Float like x, got BFloat16"),
    (torch.bfloat16, torch.float32, "w_ih must have dtype BFloat16 like x, got Float"),
    (torch.float64, torch.bfloat16, "w_ih must have dtype Double like x, got BFloat16")])
def test_layers_refuse_weights_of_another_dtype(x_dtype, w_dtype, message, batch):
    """Small bfloat16 layers take their weights unconverted too, never a float32 call's bfloat16 ones,
    forward or backward."""
    x, h = torch.randn(3 * batch, 4, dtype=x_dtype), torch.zeros(batch, 5, dtype=x_dtype)
    w_ih, w_hh = torch.randn(5, 4, dtype=w_dtype), torch.randn(5, 5, dtype=w_dtype)
    batch_sizes = torch.full((3,), batch)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastcells.rnn_layer_fwd(x, w_ih, None, None, h, w_hh, batch_sizes, False, False, True)
    dy, saved = torch.randn(3 * batch, 5, dtype=x_dtype), torch.empty(3 * batch, 0, dtype=x_dtype)
    got = message.split(", got ")[1]  # the backward may name w_hh first
    with pytest.raises(RuntimeError, match=rf"w_(ih|hh) must have dtype \w+ like (x|dy), got {got}"):
        torch.ops.fastcells.rnn_layer_bwd(dy, h, saved, dy, h, x, w_ih, None, None, w_hh, batch_sizes, False,
                                          False, True)


def test_mixed_dtypes_are_refused_with_the_argument_named():
    x = torch.randn(6, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="w_hh must have dtype BFloat16 like x, got Float"):
        torch.ops.fastcells.rnn_layer_fwd(x, torch.randn(5, 4, dtype=torch.bfloat16), None, None,
                                          torch.zeros(3, 5, dtype=torch.bfloat16), torch.randn(5, 5),
                                          torch.full((2,), 3), False, False, False)


# bfloat16 products (csrc/cpu/bf16_products.h): where the CPU has AVX-512 BF16, the AVX-512 copy's
# bfloat16 layers multiply in bfloat16 with float32 sums, forward and backward, each step projecting
# its own input rows. Batch sizes: the mat-vec path (3 rows, float32 products), the packed GEMM with a
# partial panel and an odd k (5; H=37), row groups (16), and groups of more rows than one block of
# the GEMM (300: 150 rows a group on 2 threads, > 128).
def _cpu_has_avx512_bf16():
    return "avx512_bf16" in cpu_flags()


def _torch_bf16_on_onednn():
    """Whether torch.nn's bfloat16 layers run oneDNN's bfloat16 kernels here (a CPU with AVX-512 BF16, oneDNN
    not capped below it): without them they run ATen's own loop, 2-20x slower than ours but holding less
    memory in training (T=30 B=16 H=64 LSTM: 0.71 against our 0.88 MiB, on the AMD EPYC with every
    instruction set capped at AVX2)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return _cpu_has_avx512_bf16()


def _amx_expected():
    """Whether the packed bfloat16 products should run on AMX tiles here (csrc/cpu/bf16_products.h)."""
    from fastcells import _extension

    return (_cpu_has_avx512_bf16() and _extension.C.cpu_isa() == "avx512"
            and {"amx_bf16", "amx_tile"} <= cpu_flags() and os.environ.get("FASTCELLS_CPU_AMX") != "0")


def test_bf16_products_are_used_where_the_cpu_has_them():
    from fastcells import _extension

    expected = _cpu_has_avx512_bf16() and _extension.C.cpu_isa() == "avx512"
    assert _extension.C.cpu_bf16_products() == environment.cpu_bf16_products() == expected
    line = "bfloat16 layers multiply in " + ("bfloat16" if expected else "float32")
    assert any(line in text for text in info.describe(["cpu"]))
    amx = _amx_expected()
    assert _extension.C.cpu_amx_products() == environment.cpu_amx_products() == amx
    assert any("AMX tiles" in text for text in info.describe(["cpu"])) == amx
    gemm = environment.cpu_bf16_backward_gemm()
    if expected and "FASTCELLS_CPU_BF16_GEMM" not in os.environ:  # MKL's where it has AMX to use, else ours
        assert gemm == ("mkl" if amx and _mkl_bf16_gemm_exported() else "vdpbf16ps" if not amx else "aten")
    line = "their backward's GEMMs on " + info.BF16_BACKWARD_GEMMS[gemm]
    assert any(line in text for text in info.describe(["cpu"]))


def _mkl_bf16_gemm_exported():
    """Whether torch's library carries MKL's bfloat16 GEMM (csrc/cpu/mkl_bf16.h finds it the same way)."""
    import ctypes

    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return hasattr(ctypes.CDLL(library), "cblas_gemm_bf16bf16f32")
    except OSError:
        return False


def test_float16_backward_gemm_widens_its_operands():
    """A float16 layer's backward multiplies its operands widened to float32, with float32 sums
    (csrc/cpu/bf16_backward_gemm.h): as our packed GEMM packs them where float32 layers take it, else
    blocks of them for at::mm; unless FASTCELLS_CPU_BF16_GEMM=aten sends it to at::mm on float32 copies of
    the whole operands; `info` says which."""
    expected = "packed" if environment.cpu_float_gemm() == "packed" else "widened"
    if os.environ.get("FASTCELLS_CPU_BF16_GEMM") == "aten":
        expected = "aten"
    assert environment.cpu_f16_backward_gemm() == expected
    line = "float16 layers multiply in float32, their backward's GEMMs on " + info.F16_BACKWARD_GEMMS[expected]
    assert any(line in text for text in info.describe(["cpu"]))


@pytest.mark.skipif(not _amx_expected(), reason="no AMX tiles in this CPU (or FASTCELLS_CPU_AMX=0)")
def test_bf16_tests_pass_on_the_avx512_bf16_kernels_too():
    """This CPU runs the tests above on AMX tiles; FASTCELLS_CPU_AMX=0 runs them again on the VDPBF16PS
    kernels that CPUs without AMX take (their sums are added in another order)."""
    env = {**os.environ, "FASTCELLS_CPU_AMX": "0"}
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                          "(bf16 or 16bit) and not avx512_bf16_kernels_too and not round_and_widen"], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


@pytest.mark.skipif(not environment.cpu_bf16_products() or "avx2" not in cpu_kernel_copies(),
                    reason="the tests above ran without the bfloat16 products")
def test_bf16_tests_pass_without_the_bf16_products():
    """This CPU runs the tests above with the bfloat16 products; the AVX2 copy (FASTCELLS_CPU_ISA=avx2, as a
    CPU without AVX-512 BF16 runs) multiplies in float32, its bfloat16 layers keeping their tensors in
    bfloat16 all the same (csrc/cpu/storage.h): the bfloat16 tests again there (errors, bitwise results
    across threads and between inference and training, peak memory), and the 16-bit ones, whose float16
    cases widen with F16C there."""
    env = {**os.environ, "FASTCELLS_CPU_ISA": "avx2"}
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                          "(bf16 or 16bit) and not avx512_bf16_kernels_too and not without_the_bf16_products"
                          " and not round_and_widen"], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


@pytest.mark.skipif(not environment.cpu_bf16_products(), reason="no AVX-512 BF16: the backward multiplies in float32")
@pytest.mark.parametrize("gemm", ["aten", "mkl", "vdpbf16ps"])
def test_bf16_gradient_tests_pass_on_every_backward_gemm(gemm):
    """The backward's GEMMs of a bfloat16 layer (csrc/layers.h's weight_grad_into and dx_product) run on one
    of three (csrc/cpu/bf16_backward_gemm.h): MKL's bfloat16 GEMM, ours on VDPBF16PS, or at::mm where
    there is neither. FASTCELLS_CPU_BF16_GEMM makes a process take the others than this CPU's own: the
    bfloat16 gradient tests again on each."""
    if gemm == environment.cpu_bf16_backward_gemm():
        pytest.skip(f"the tests above ran on {gemm}")
    if gemm == "mkl" and not _mkl_bf16_gemm_exported():
        pytest.skip("no MKL bfloat16 GEMM in this torch")
    env = {**os.environ, "FASTCELLS_CPU_BF16_GEMM": gemm}
    chosen = subprocess.run([sys.executable, "-c", "from fastcells import environment, info; "
                             "print(environment.cpu_bf16_backward_gemm()); print(*info.describe(['cpu']), sep='\\n')"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert chosen.stdout.splitlines()[0] == gemm, chosen.stdout + chosen.stderr
    assert "their backward's GEMMs on " + info.BF16_BACKWARD_GEMMS[gemm] in chosen.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                          "(bf16 or 16bit) and (error_bounded or gradients) and not on_every_backward_gemm"], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


@pytest.mark.parametrize("batch,hidden,steps", [(3, 37, 6), (5, 37, 6), (16, 37, 6), (300, 37, 6),
                                                (1, 64, 20), (2, 64, 20), (1, 64, 70), (4, 200, 20)])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_bf16_layer_error_bounded_by_torch_own_at_each_product_path(kind, batch, hidden, steps):
    """Outputs and input gradients at each way a bfloat16 layer multiplies: the mat-vecs of at most 4 rows
    a step and fewer than 64 in all (their rows stored in bfloat16 too where the CPU has the bfloat16
    products: csrc/cpu/storage.h; an LSTM's units split between two threads at H=64 and 20 steps:
    csrc/cpu/unit_split.h), the packed products of such layers over 64 rows or more (70 and 80 here; an
    LSTM's units split at 104 of 200, inside a panel) and of larger batches, row groups."""
    fast_error, torch_error = low_precision_errors(kind, torch.bfloat16, "cpu", "cpu", hidden=hidden,
                                                   batch=batch, steps=steps)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(torch.bfloat16).eps), (fast_error, torch_error)


@pytest.mark.parametrize("batch", [1, 3, 5, 16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_bf16_weight_gradients_error_bounded_by_torch_own(kind, batch):
    """The weight gradients' GEMMs round the gate gradients to bfloat16 (layers.h's weight_grad_into): each
    parameter's gradient, against float64, within a small multiple of torch.nn's own error."""
    ref64, fast = make_layer_twins(kind, 8, 37, 1, dtype=torch.float64, backend="cpu")
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.bfloat16().double())
    low = make_layer_twins(kind, 8, 37, 1, dtype=torch.bfloat16)[0]
    low.load_state_dict(ref64.state_dict())
    fast = fast.bfloat16()
    fast.load_state_dict(ref64.state_dict())
    x = torch.randn(6, batch, 8).bfloat16()
    weights = torch.linspace(-1, 1, 6 * batch * 37).view(6, batch, 37)
    grads = []
    for module in (ref64, fast, low):
        out, _ = module(x.double() if module is ref64 else x)
        (out.double() * weights.double()).sum().backward()
        grads.append({name: p.grad.double() for name, p in module.named_parameters()})
    for name, exact in grads[0].items():
        scale = exact.abs().max().item() or 1.0
        fast_error = (grads[1][name] - exact).abs().max().item() / scale
        torch_error = (grads[2][name] - exact).abs().max().item() / scale
        assert fast_error <= max(4 * torch_error, 4 * torch.finfo(torch.bfloat16).eps), (name, fast_error,
                                                                                         torch_error)


@pytest.mark.parametrize("hidden,batch,steps", [(64, 1, 5), (200, 4, 5), (37, 5, 5), (64, 16, 5), (64, 32, 5),
                                                (200, 13, 5), (64, 1, 70), (200, 3, 24), (72, 4, 24)])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_outputs_are_bitwise_the_same_with_1_2_and_3_threads(dtype, kind, hidden, batch, steps):
    """The bfloat16 GEMM sums each output element the same way however its rows and panels are split
    between threads, as the float32 one does (tests/test_thread_count.py); so do the mat-vecs of at most
    4 rows that read bfloat16 weights as they are (an LSTM's units split between threads, GRU and RNN
    projecting each step's input), and the packed products such a layer takes over 64 rows or more
    (csrc/cpu/gemm_cpu.h's packs_small_batch: an LSTM's two threads each multiply their units' columns,
    at H=200 split at 104, inside a panel). Both layers of two; float16 layers too (the float32 GEMM on
    weights widened as they are packed, the mat-vecs reading float16 weights)."""
    torch.manual_seed(0)
    _, fast = make_layer_twins(kind, 7, hidden, 2, dtype=dtype, backend="cpu")
    x = torch.randn(steps, batch, 7, dtype=dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out, states = fast(x)
            results.append([out, *(states if isinstance(states, tuple) else (states,))])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_bf16_lstm_split_by_panels_is_bitwise_the_same_with_1_2_and_3_threads():
    """A bfloat16 LSTM of one row group of 5-11 rows keeps two threads for its whole time loop, splitting
    each step's products by panels and its units between them (csrc/cpu/lstm_cpu.inc); outputs, states
    and gradients are those of one thread, also for a packed, shrinking batch in both directions."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    _, fast = make_layer_twins("lstm", 24, 64, 1, dtype=torch.bfloat16, backend="cpu", bidirectional=True)
    x = pack_padded_sequence(torch.randn(9, 7, 24, dtype=torch.bfloat16), torch.tensor([9, 9, 8, 6, 6, 3, 1]),
                             enforce_sorted=False)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fast.zero_grad()
            data = x.data.clone().requires_grad_()
            out, (h, c) = fast(x._replace(data=data))
            (out.data.float().sum() + h.float().sum() + c.float().sum()).backward()
            results.append([out.data, h, c, data.grad] + [p.grad for p in fast.parameters()])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("batch", [3, 7, 16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_packed_layers_error_bounded_by_torch_own(dtype, kind, batch):
    """bfloat16 and float16 layers project their input rows a few steps at a time (csrc/cpu/step_input.h:
    project_steps, at most 4 steps in 16-bit layers): 11 steps make chunks of 4, 4 and 3, and a packed,
    shrinking batch in both directions has rows ending inside a chunk, its rows gathered first; 3 rows
    take the mat-vecs, their tensors in 16 bits too (csrc/cpu/storage.h). Output and input gradient
    against float64, within a small multiple of torch.nn's own error."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    ref64, fast = make_layer_twins(kind, 8, 37, 1, dtype=torch.float64, backend="cpu", bidirectional=True)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())
    fast = fast.to(dtype)
    fast.load_state_dict(ref64.state_dict())
    ref16 = copy.deepcopy(ref64).to(dtype)
    lengths = torch.tensor([11, 11, 10, 9, 5, 4, 1, 8, 7, 3, 2, 6, 11, 1, 4, 9][:batch])
    x = torch.randn(11, batch, 8).to(dtype)

    def run(module, dtype):
        leaf = x.to(dtype).clone().requires_grad_()  # never x itself
        out, _ = module(pack_padded_sequence(leaf, lengths, enforce_sorted=False))
        out.data.float().sum().backward()
        return out.data.double(), leaf.grad.double()

    out64, grad64 = run(ref64, torch.float64)

    def error(module):
        out, grad = run(module, dtype)
        errors = [(out - out64).abs().max() / out64.abs().max(), (grad - grad64).abs().max() / grad64.abs().max()]
        return torch.stack(errors).max().item()  # NaN if either is

    fast_error, torch_error = error(fast), error(ref16)
    assert fast_error <= max(4 * torch_error, 4 * torch.finfo(dtype).eps), (fast_error, torch_error)


def _peak_mib(module, x, training):
    """Peak memory of one forward (and, training, backward) call, as the benchmark measures it."""
    from fastcells.benchmark.timing import peak_bytes

    def call():
        if training:
            out, _ = module(x)
            out.sum().backward()
        else:
            with torch.no_grad():
                module(x)
    call()
    return peak_bytes(call, "cpu") / 2**20


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_layers_store_16_bits_without_float32_copies(dtype, kind, training):
    """A bfloat16 or float16 layer reads x and the weights and writes y, the saved activations and the gate
    gradients in 16 bits (csrc/cpu/storage.h), on any CPU: no float32 copy of them is made (without the
    bfloat16 products, in the AVX2 copy, bfloat16 calls held 1.3-2.0x their float32 twin's peak; float16 ones,
    converted to float32 around the float32 kernels, 2.9-3.7x torch.nn's at T=50 B=16 H=256). Inference then
    holds a sixth to a third of the float32 call's memory, and less than torch.nn's 16-bit call (bfloat16 at
    T=50, B=16, H=256: LSTM 1.50 against torch.nn's 3.20 MiB; 4.72 with float32 copies; float16 0.65-0.75 of
    torch.nn's here). Training holds about half of float32's in bfloat16 (T=30, B=16, H=64: 0.50-0.59), where
    the backward's GEMMs run on MKL's bfloat16 GEMM or ours with float32 sums (csrc/layers.h; oneDNN's at::mm
    allocated scratch: 0.72-0.99 of float32's, with float32 copies 1.6x), 0.57-0.81 in float16, whose GEMMs
    widen blocks of their operands to float32 (csrc/cpu/bf16_backward_gemm.h; float32 copies of the whole
    operands: 0.89-1.33); bfloat16 LSTM and RNN less than torch.nn's oneDNN layers (LSTM 6.5 against 16.8 MiB at
    the shape above); GRU training too on MKL's GEMM (0.90 here; below), with oneDNN's at::mm near torch.nn's
    (its per-step autograd frees each step's saved tensors as its backward passes them:
    test_backward_memory.py). torch.nn's own loop, which bfloat16 takes without oneDNN and float16 always,
    frees them too, and holds less in training than ours (float16: 1.0-1.5x it; it runs 20-30x slower)."""
    torch.manual_seed(0)
    ref, fast = make_layer_twins(kind, 64, 64, 1, dtype=torch.float32, backend="cpu")
    x = torch.randn(30, 16, 64, requires_grad=training)
    fast32 = _peak_mib(fast, x, training)
    fast16 = _peak_mib(fast.to(dtype), x.detach().to(dtype).requires_grad_(training), training)
    torch16 = _peak_mib(ref.to(dtype), x.detach().to(dtype).requires_grad_(training), training)
    bf16 = dtype == torch.bfloat16
    float32_sums = training and (environment.cpu_bf16_backward_gemm() in ("mkl", "vdpbf16ps") if bf16
                                 else environment.cpu_f16_backward_gemm() in ("packed", "widened"))
    bound = (0.65 if bf16 else 0.85) if float32_sums else (1.0 if bf16 else 1.4) if training else 0.55
    assert fast16 <= bound * fast32, (fast16, fast32)
    if (kind != "gru" or not training or float32_sums) and (not training or bf16 and _torch_bf16_on_onednn()):
        assert fast16 <= torch16, (fast16, torch16)


@pytest.mark.parametrize("batch,hidden", [(16, 256), (16, 128), (64, 200)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float16_inference_call_holds_no_more_than_torch_nn(cell, batch, hidden):
    """A float16 layer of more than 4 rows a step packs W_ih and W_hh in float16 for its per-step GEMM,
    whose tiles widen each panel row as they load it (csrc/cpu/gemm_cpu.h's StepProduct): float32 packed
    copies of them (1 MiB each for an LSTM at H=256) took its inference call at T=50 B=16 H=256 to 1.14
    times the peak of torch.nn's float16 loop (GRU 1.11), measured as the benchmark measures it; now 0.72
    (GRU 0.72). The outputs are the same bits either way (a float16 value widens exactly)."""
    from fastcells.benchmark.cases import Case
    from fastcells.benchmark.providers import TORCH, make_runner
    from fastcells.benchmark.timing import mode_for, peak_bytes

    case = Case("hidden", cell, "inference", "float16", hidden, batch, 50, hidden)
    peaks = {}
    for provider in (TORCH, "cpu"):
        run = make_runner(case, provider, "cpu")
        with mode_for(case):
            run()
            peaks[provider] = peak_bytes(run, "cpu")
    assert peaks["cpu"] <= peaks[TORCH], peaks


@pytest.mark.skipif(environment.cpu_bf16_backward_gemm() not in ("mkl", "vdpbf16ps"),
                    reason="the backward's GEMMs on at::mm")
@pytest.mark.skipif(not _torch_bf16_on_onednn(), reason="torch.nn's bfloat16 layers on ATen's own loop")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_bf16_training_holds_no_more_than_torch_with_few_rows(kind):
    """A bfloat16 GRU's backward, whose peak is near torch.nn's, sums dw_ih (its last weight gradient, on
    top of all it holds then) into float32 mostly in dw_ih's own memory, a third of the rows left at a
    time (layers.h's bf16_gemm_products_narrowed): its training call at T=50 B=4 H=128 holds 0.99 of
    torch.nn's peak, 1.16 with dw_ih's float32 sums all in a scratch twice dw_ih's size. (LSTM 0.40, RNN
    0.59.)"""
    torch.manual_seed(0)
    ref, fast = make_layer_twins(kind, 128, 128, 1, dtype=torch.float32, backend="cpu")
    x = torch.randn(50, 4, 128)
    fast16 = _peak_mib(fast.bfloat16(), x.bfloat16().requires_grad_(), training=True)
    torch16 = _peak_mib(ref.bfloat16(), x.bfloat16().requires_grad_(), training=True)
    assert fast16 <= torch16, (fast16, torch16)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_16bit_training_holds_well_under_float32(dtype, kind, batch):
    """A 16-bit layer of at most 4 rows keeps x, y, the saved activations, dy and the gate gradients in its
    dtype as the larger ones do (csrc/cpu/storage.h; the mat-vecs widen the few rows a product reads): its
    training call (T=50, H=128) holds 0.50-0.57 of its float32 twin's peak in bfloat16; in float16 0.54-0.62
    where our packed GEMM widens the backward's operands as it packs them, 0.57-0.78 where blocks of them are
    widened for at::mm (csrc/cpu/bf16_backward_gemm.h). With float32 copies of them it held as much as the
    float32 call, or more (B=1: GRU 1.0, RNN 1.1, LSTM 0.96)."""
    gemm = environment.cpu_bf16_backward_gemm() if dtype == torch.bfloat16 else environment.cpu_f16_backward_gemm()
    if gemm == "aten":
        pytest.skip("the backward's GEMMs on at::mm, whose scratch or float32 copies hold more")
    bound = 0.85 if gemm == "widened" else 0.7
    torch.manual_seed(0)
    fast = make_layer_twins(kind, 128, 128, 1, dtype=torch.float32, backend="cpu")[1]
    x = torch.randn(50, batch, 128, requires_grad=True)
    fast32 = _peak_mib(fast, x, training=True)
    fast16 = _peak_mib(fast.to(dtype), x.detach().to(dtype).requires_grad_(), training=True)
    assert fast16 <= bound * fast32, (fast16, fast32)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("batch,steps", [(1, 21), (3, 21), (4, 21), (1, 70), (3, 30), (4, 100), (2, 150)])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_16bit_inference_gives_the_training_forward_bitwise(dtype, kind, batch, steps, packed):
    """At most 4 rows, a 16-bit layer projects its input step by step in inference (an LSTM whose units
    two threads split, for 8 steps at a time: the rows of either direction's steps follow each other in
    x) and up front in training (csrc/cpu/step_input.h), with the same products, each row summed alone:
    the mat-vecs under 64 rows in all, the packed products from 64 on (csrc/cpu/gemm_cpu.h's
    packs_small_batch). The outputs are bitwise the same, both directions, sequences of several lengths
    packed too (the training forward's error is bounded above)."""
    torch.manual_seed(0)
    fast = make_layer_twins(kind, 37, 64, 1, dtype=torch.float32, backend="cpu",
                            bidirectional=True)[1].to(dtype)
    x = torch.randn(steps, batch, 37, dtype=dtype)

    def run(inputs):
        if not packed:
            return fast(inputs)[0]
        lengths = [steps - 6 * b for b in range(batch)]
        out = fast(torch.nn.utils.rnn.pack_padded_sequence(inputs, lengths))[0]
        return out.data

    with torch.no_grad():
        inferred = run(x)
    trained = run(x.clone().requires_grad_())
    assert torch.equal(inferred, trained.detach())


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_16bit_inference_holds_under_half_of_float32(dtype, kind, batch):
    """A 16-bit layer of at most 4 rows projects each step's input in inference rather than all (N, G)
    float32 projections up front, which were most of its memory (LSTM T=50 B=1 H=128: 118 KiB, 0.91 of
    its float32 twin's; per 8 steps 38.5 KiB, 0.30)."""
    torch.manual_seed(0)
    fast = make_layer_twins(kind, 128, 128, 1, dtype=torch.float32, backend="cpu")[1]
    x = torch.randn(50, batch, 128)
    fast32 = _peak_mib(fast, x, training=False)
    fast16 = _peak_mib(fast.to(dtype), x.to(dtype), training=False)
    assert fast16 <= 0.5 * fast32, (fast16, fast32)


@pytest.mark.parametrize("steps,batch,layers", [(10, 1, 1), (10, 3, 1), (1, 1, 2)])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_16bit_layers_read_their_weights_in_place(dtype, kind, steps, batch, layers):
    """16-bit layers of at most 4 rows a step (bfloat16: and fewer than 64 in all) multiply with mat-vecs that
    read the 16-bit weights as they are (csrc/cpu/matmul_cpu.h), on any CPU: no float32 copy of the weights
    is made, which took more memory than torch.nn's whole call (T=50, B=1, H=128 inference: GRU 515
    against torch.nn's 96 KiB, now 131) and, converted at every call, made generation loops (T=1, B=1)
    slower than torch.nn (a 2-layer RNN at H=200: 0.84x, now 4.6x). The call's peak memory stays below
    half of one float32 copy of its weights; the products are exact
    (test_16bit_step_products_are_exact_sums_of_exact_products), their errors bounded as above."""
    torch.manual_seed(0)
    fast = make_layer_twins(kind, 128, 128, layers, dtype=torch.float32, backend="cpu")[1].to(dtype)
    x = torch.randn(steps, batch, 128, dtype=dtype)
    float32_weights = sum(p.numel() * 4 for name, p in fast.named_parameters() if "weight" in name) / 2**20
    assert _peak_mib(fast, x, training=False) < 0.5 * float32_weights


@pytest.mark.parametrize("kind,batch", [("lstm", 1), ("lstm", 4), ("gru", 1), ("gru", 4), ("rnn_tanh", 1),
                                        ("rnn_tanh", 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_16bit_inference_holds_no_more_than_torch(dtype, kind, batch):
    """A 16-bit inference call of at most 4 rows holds no more memory than torch.nn's (T=50, H=128:
    GRU B=1 57 against torch.nn's 96 KiB, B=4 219 against 285): GRU and RNN project their input step by
    step there, instead of holding all steps' float32 projections (csrc/cpu/step_input.h). x and y stay
    in 16 bits too (csrc/cpu/storage.h), and an LSTM's projections up front read x widened a few rows at
    a time: at B=4 an LSTM held 626 against torch.nn's 540 KiB with float32 copies of x and y, an RNN 209
    against 185."""
    torch.manual_seed(0)
    ref, fast = make_layer_twins(kind, 128, 128, 1, dtype=torch.float32, backend="cpu")
    x = torch.randn(50, batch, 128, dtype=dtype)
    fast16, torch16 = _peak_mib(fast.to(dtype), x, training=False), _peak_mib(ref.to(dtype), x, training=False)
    assert fast16 <= torch16, (fast16, torch16)


@pytest.mark.parametrize("inputs,hidden,batch", [(1, 8, 1), (37, 20, 3), (32, 64, 4), (33, 200, 2),
                                                 (100, 45, 1), (256, 256, 4), (37, 20, 5), (33, 200, 17),
                                                 (100, 45, 33), (256, 256, 40)])
@pytest.mark.parametrize("module", ["cell", "layer"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_step_products_are_exact_sums_of_exact_products(dtype, module, inputs, hidden, batch):
    """The mat-vecs that read 16-bit weights as they are (at most 4 rows: cell steps, small bfloat16 layers)
    sum exact products in float32: bfloat16 on CPUs with AVX-512 BF16 as VDPBF16PS pairs
    (csrc/cpu/bf16_products.cpp), elsewhere widened to float32 (float16 always); so do the packed products
    of more rows (VDPBF16PS, or AMX tiles of 16 rows and 32 k: batch 17 and 33 leave partial tiles, k = 33
    and 37 partial pairs and chunks). One step of a relu RNN shows the sums themselves: its output is the
    pre-activation rounded once to 16 bits (or 0), so it must be the exact sum (float64, from the same
    16-bit values) to within half an ulp and float32's summation error. A product dropped or misplaced (k
    or n not a multiple of the kernels' 32 pairs and 8 rows) is off by far more."""
    torch.manual_seed(0)
    if module == "cell":
        ref = torch.nn.RNNCell(inputs, hidden, nonlinearity="relu")
        fast = fastcells.RNNCell(inputs, hidden, nonlinearity="relu", backend="cpu")
    else:
        ref = torch.nn.RNN(inputs, hidden, nonlinearity="relu")
        fast = fastcells.RNN(inputs, hidden, nonlinearity="relu", backend="cpu")
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(dtype)
    x = torch.randn(batch, inputs, dtype=dtype)
    h = torch.randn(batch, hidden, dtype=dtype)
    with torch.no_grad():
        out = fast(x, h) if module == "cell" else fast(x[None], h[None])[0][0]
    suffix = "" if module == "cell" else "_l0"
    w_ih, w_hh, b_ih, b_hh = (getattr(fast, name + suffix).detach().double()
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    xd, hd = x.double(), h.double()
    exact = (xd @ w_ih.T + b_ih + hd @ w_hh.T + b_hh).clamp(min=0)
    magnitude = xd.abs() @ w_ih.abs().T + b_ih.abs() + hd.abs() @ w_hh.abs().T + b_hh.abs()
    bound = torch.finfo(dtype).eps / 2 * exact.abs() + (inputs + hidden + 4) * 2.0**-23 * magnitude
    assert out.dtype == dtype
    assert ((out.double() - exact).abs() <= bound).all(), (out.double() - exact).abs().max()


@pytest.mark.parametrize("hidden", [64, 256])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_16bit_cell_steps_allocate_only_their_outputs(dtype, kind, hidden):
    """A bfloat16 or float16 cell step takes x, h, c, the weights and the biases as they are and widens them
    into its own reused scratch (csrc/cpu/storage.h's StepTensors) or as it reads them (the weights:
    csrc/cpu/matmul_cpu.h's step_projections): it allocates its 16-bit outputs and nothing else (float32
    copies made around the call took RNNCell H=64 to 1.2 KiB, against torch.nn's 0.4, now 0.1; a float16
    LSTMCell at H=256 copied its weights to 2 MiB of float32 at every step)."""
    from fastcells.benchmark.timing import peak_bytes

    torch.manual_seed(0)
    _, fast = make_cell_twins(kind, hidden, hidden, dtype=dtype, backend="cpu")
    x, h = torch.randn(1, hidden, dtype=dtype), torch.randn(1, hidden, dtype=dtype)
    state = (h, h.clone()) if kind == "lstm" else h

    def step():
        with torch.no_grad():
            fast(x, state)
    step()
    outputs = (2 if kind == "lstm" else 1) * hidden * 2
    assert peak_bytes(step, "cpu") <= outputs + 256, (peak_bytes(step, "cpu"), outputs)


def _float16_step_rounding_mismatches(scale, column):
    """How many of one relu RNN step's float16 outputs differ from torch's rounding (see below)."""
    values = torch.arange(0, 0x7C01, dtype=torch.int32).to(torch.int16).view(torch.float16)  # +0 to +inf
    hidden, inputs = 2048, column + 1
    x = torch.zeros(1, inputs, dtype=torch.float16)
    x[0, column] = scale
    h = torch.zeros(1, hidden, dtype=torch.float16)
    w_hh = torch.zeros(hidden, hidden, dtype=torch.float16)
    mismatches = 0
    for first in range(0, len(values), hidden):
        chunk = values[first:first + hidden]
        w_ih = torch.zeros(hidden, inputs, dtype=torch.float16)
        w_ih[:len(chunk), column] = chunk
        out = torch.ops.fastcells.rnn_step_fwd(x, h, w_ih, w_hh, None, None, True)[0, :len(chunk)]
        expected = (chunk.float() * scale).to(torch.float16)  # exact products, rounded by torch
        mismatches += int((out.view(torch.int16) != expected.view(torch.int16)).sum())
    return mismatches


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
@pytest.mark.parametrize("scale,column", [(1.0, 0), (1.0, 8), (1.0009765625, 8), (0.7509765625, 0),
                                          (2.0**-6, 0), (2.0**-14, 8), (1.5 * 2.0**5, 0)])
def test_16bit_float16_steps_round_and_widen_as_torch(isa, scale, column):
    """A float16 cell step widens its tensors and rounds its outputs itself, without branches so that the
    loops vectorize (csrc/cpu/matmul_cpu.h's widen, csrc/cpu/storage.h's round_to_half), or with F16C (the
    weights, 8 at a time, in the AVX2 and AVX-512 copies). A relu RNN step whose input weights hold every
    non-negative float16 value, from +0 through the subnormals to +infinity, in one column (column 8 of 9:
    the mat-vecs' tail past their vectors of 8), and whose input is `scale` there (zero elsewhere, as h
    and W_hh): each output is the product of two float16 values, exact in float32, rounded once. It must
    be torch's rounding of it bitwise: scale 1 widens every value and rounds it back unchanged; the others
    make ties (1 + 2^-10 and 0.75 + 2^-10 take 10 and 11 bits more), subnormals (2^-6, 2^-14) and
    overflows to infinity (48) in every copy of the kernels this CPU runs."""
    if isa not in cpu_kernel_copies():
        pytest.skip(f"this CPU cannot run the {isa} copy")
    if isa == environment.cpu_kernels_isa():
        assert _float16_step_rounding_mismatches(scale, column) == 0
        return
    code = f"import test_cpu_low_precision as t; print(t._float16_step_rounding_mismatches({scale!r}, {column}))"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTCELLS_CPU_ISA": isa},
                         capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["0"], run.stdout + run.stderr[-2000:]
