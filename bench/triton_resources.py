"""Registers, stack (spills) and shared memory of the triton backend's persistent sequence kernels
(kernels/sequence.py) and unit-tiled kernels (kernels/tiled.py, tiled_bwd.py) in every configuration
the backend can dispatch, compiled ahead of time for an H100/H200 (sm_90) on a machine without a GPU:
tests/test_triton_resources.py fails where one spills (a spilled W_hh tile is re-read from local memory
at every step).

The configurations come from the launchers themselves: each layer op of kernels/{lstm,gru,rnn}.py runs
on CPU tensors with every kernel launch intercepted (nothing runs), at batch and hidden sizes that reach
every block size the launch rule (kernels/launch.py) picks. The recorded arguments give the signature
the JIT would specialize on a GPU: pointer dtypes, and the 16-divisibility of pointers and integers.
Compiled with triton.compile for GPUTarget("cuda", 90, 32); the PTX is then assembled again by the
ptxas in Triton's own bin folder, with the options Triton passes, for its -v report (read by
bench/cuda_resources.py's parser).

    python bench/triton_resources.py [--json]   # the table, or one JSON object a configuration
                                                # (a few minutes on 2 cores; cached by Triton after)
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

SM90 = ("cuda", 90, 32)
_spec = importlib.util.spec_from_file_location("cuda_resources", pathlib.Path(__file__).with_name("cuda_resources.py"))
cuda_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_resources)


@dataclass(frozen=True)
class Launch:
    """One kernel configuration: the kernel, its argument types and its constexprs."""

    kernel: object  # a triton JITFunction
    signature: tuple  # (name, type) per argument: "*bf16", "i32", or "constexpr"
    constexprs: tuple  # (name, value)
    divisible: tuple  # indices of arguments divisible by 16 (pointers and integers)
    num_warps: int

    @property
    def name(self):
        consts = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in self.constexprs)
        pointers = ",".join(t[1:] for _, t in self.signature if t.startswith("*"))
        return f"{self.kernel.fn.__name__}({pointers}; {consts})"


_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                  torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32"}


def _launch_of(kernel, args, kwargs):
    names = kernel.arg_names
    values = dict(zip(names, args)) | kwargs
    signature, constexprs, divisible = [], [], []
    for index, name in enumerate(names):
        value = values[name]
        if index in kernel.constexprs:
            signature.append((name, "constexpr"))
            constexprs.append((name, value))
        elif isinstance(value, torch.Tensor):
            signature.append((name, _POINTER_TYPES[value.dtype]))
            divisible.append(index)  # fresh or contiguous tensors: 16-byte aligned on a GPU
        else:
            signature.append((name, "i64" if abs(value) >= 2**31 else "i32"))
            if value % 16 == 0:
                divisible.append(index)
    return Launch(kernel, tuple(signature), tuple(constexprs), tuple(divisible), kwargs.get("num_warps", 4))


@contextlib.contextmanager
def recorded_launches(kernel_names):
    """Records (instead of running) every launch of the JIT kernels named ``kernel_names``."""
    from triton.runtime.jit import JITFunction

    launches = set()
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if self.fn.__name__ in kernel_names:
            launches.add(_launch_of(self, args, kwargs))
            return None
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original


def sequence_launches(dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64)):
    """The persistent sequence kernels' configurations the triton backend dispatches: its layer ops
    forward (inference and training) and backward, every cell, every block size of the launch rule."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the launch rule differs under the interpreter")
    from fastcells.kernels import gru, launch, lstm, rnn, sequence  # noqa: F401 (registers the ops)

    ops = torch.ops.fastcells
    names = {name for name in dir(sequence) if name.endswith("_kernel")}
    with recorded_launches(names) as launches:
        for dtype in dtypes:
            largest = launch.MAX_HIDDEN[dtype]
            for hidden in sorted(h for h in {16, 17, 33, largest} if h <= largest):  # every BLOCK_H
                for batch in (1, 17, 33):  # BLOCK_B 16, 32, 64
                    _run_layers(ops, dtype, hidden, batch)
    return sorted(launches, key=lambda launch_: launch_.name)


def tiled_launches(dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64)):
    """The unit-tiled kernels' configurations (kernels/tiled.py, tiled_bwd.py), per-step and
    persistent: the layer ops forward and backward with the tiled mode on, at a hidden size no
    single-program kernel takes (their block sizes do not depend on the size). Residency is not asked
    (it would compile on a GPU)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the launch rule differs under the interpreter")
    from fastcells.kernels import gru, lstm, rnn, tiled, tiled_bwd, tiled_launch  # noqa: F401 (the ops)

    ops = torch.ops.fastcells
    names = {name for module in (tiled, tiled_bwd) for name in dir(module) if name.endswith("_kernel")}
    resident = tiled_launch.resident
    tiled_launch.resident = lambda *args: True
    try:
        with recorded_launches(names) as launches:
            for mode in ("per-step", "persistent"):
                tiled_launch.use_tiled(mode)
                for dtype in dtypes:
                    _run_layers(ops, dtype, 80, 17)
    finally:
        tiled_launch.resident = resident
        tiled_launch.use_tiled("off")
    return sorted(launches, key=lambda launch_: launch_.name)


def _run_layers(ops, dtype, H, B, T=2, I=3):
    x = torch.zeros(T * B, I, dtype=dtype)
    sizes = torch.full((T,), B, dtype=torch.int64)
    for gates, fwd, bwd, extra in ((4, ops.triton_lstm_layer_fwd, ops.triton_lstm_layer_bwd, ()),
                                   (3, ops.triton_gru_layer_fwd, ops.triton_gru_layer_bwd, ()),
                                   (1, ops.triton_rnn_layer_fwd, ops.triton_rnn_layer_bwd, (False,))):
        w_ih, w_hh = torch.zeros(gates * H, I, dtype=dtype), torch.zeros(gates * H, H, dtype=dtype)
        b = torch.zeros(gates * H, dtype=dtype)
        h0 = torch.zeros(B, H, dtype=dtype)
        states = (h0, h0) if gates == 4 else (h0,)
        weights = (w_hh, None) if gates == 4 else (w_hh,)
        fwd(x, w_ih, None, None, *states, *weights, sizes, *extra, False, False)
        out = fwd(x, w_ih, b, b, *states, *weights, sizes, *extra, False, True)
        saved = out[-1]
        dy = torch.zeros(T * B, H, dtype=dtype)
        read_states = () if gates == 4 else (out[0], h0)  # y and h0, which the triton GRU and RNN ignore
        bwd(dy, *states, saved, *read_states, x, w_ih, b, b, *weights, sizes, *extra, False, True)


@dataclass
class Resources:
    registers: int
    stack: int  # bytes of stack frame (calls, local arrays)
    spills: int  # bytes of spill stores and loads
    shared: int


def compile_sm90(launch_):
    """Resources of ``launch_`` compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = dict(launch_.signature)
    constexprs = dict(launch_.constexprs)
    attrs = {(i,): [["tt.divisibility", 16]] for i in launch_.divisible}
    source = ASTSource(fn=launch_.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget(*SM90), options={"num_warps": launch_.num_warps})
    ptxas = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as folder:
        ptx = pathlib.Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        log = subprocess.run([str(ptxas), "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a", str(ptx), "-o",
                              str(ptx.with_suffix(".cubin"))], capture_output=True, text=True, check=True).stderr
    kernel, = cuda_resources.parse(log)
    return Resources(kernel.registers, kernel.stack, kernel.spill_stores + kernel.spill_loads,
                     compiled.metadata.shared)


def main(argv):
    failures = 0
    for launch_ in sequence_launches() + tiled_launches():
        r = compile_sm90(launch_)
        failures += r.spills > 0
        if "--json" in argv:
            consts = {k: getattr(v, "name", v) for k, v in launch_.constexprs}
            print(json.dumps({"kernel": launch_.kernel.fn.__name__, "signature": dict(launch_.signature),
                              "constexprs": consts, "num_warps": launch_.num_warps, **vars(r)}), flush=True)
        else:
            print(f"{r.registers:4d} regs {r.stack:5d} stack {r.spills:6d} spills {r.shared:7d} shared  "
                  f"{launch_.name}", flush=True)
    if "--json" not in argv:
        print(f"{failures} configuration(s) spill")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
