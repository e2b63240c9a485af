"""Launching the unit-tiled kernels (tiled.py forward, tiled_bwd.py backward): tile sizes, h's double
buffer, the per-step and the persistent launcher, the co-residency check, and the switch that turns them
on.

They are off by default: no GPU has run them yet (issue 15), so the triton layer ops keep their
measured paths (sequence.py for small layers, else a torch GEMM and a fused kernel per step) until a
GPU run measures these and the dispatch picks them. ``use_tiled("per-step")`` or ``("persistent")`` (or
FASTCELLS_TRITON_TILED, read at import) runs them for every layer without projection that the
single-program sequence kernels do not take; "persistent" falls back to "per-step" where the grid
cannot be resident at once.
"""

import dataclasses
import os

import torch
import triton

from . import tiled, tiled_bwd
from .launch import tl_compute_dtype, tl_dtype

# A program owns 16 hidden units of 16 batch rows (the least tl.dot takes in each dimension) and reads
# h in chunks of 64 columns; 4 warps.
TILED_BLOCK_B = 16
TILED_BLOCK_U = 16
TILED_BLOCK_K = 64
TILED_WARPS = 4

MODES = ("off", "per-step", "persistent")
_mode = os.environ.get("FASTCELLS_TRITON_TILED", "off")
if _mode not in MODES:
    raise ValueError(f"FASTCELLS_TRITON_TILED must be one of {MODES}, got {_mode!r}")

# (per-step kernel, persistent kernel) of each cell family, forward and backward.
KERNELS = {
    ("lstm", "fwd"): (tiled.lstm_tiled_step_kernel, tiled.lstm_tiled_sequence_kernel),
    ("gru", "fwd"): (tiled.gru_tiled_step_kernel, tiled.gru_tiled_sequence_kernel),
    ("rnn", "fwd"): (tiled.rnn_tiled_step_kernel, tiled.rnn_tiled_sequence_kernel),
    ("lstm", "bwd"): (tiled_bwd.lstm_tiled_bwd_step_kernel, tiled_bwd.lstm_tiled_bwd_sequence_kernel),
    ("gru", "bwd"): (tiled_bwd.gru_tiled_bwd_step_kernel, tiled_bwd.gru_tiled_bwd_sequence_kernel),
    ("rnn", "bwd"): (tiled_bwd.rnn_tiled_bwd_step_kernel, tiled_bwd.rnn_tiled_bwd_sequence_kernel),
}


def use_tiled(mode):
    """Which layers run the unit-tiled kernels: "off" (the default), "per-step" or "persistent"."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def tiled_mode():
    return _mode


def interpreted():
    return os.environ.get("TRITON_INTERPRET") == "1"


def tiled_meta(dtype, batch, hidden):
    """(grid, meta) of the tiled kernels for ``batch`` x ``hidden`` state: program (u, bt) owns unit
    block u of batch tile bt. The interpreter cannot run 16-bit tl.dot correctly: float32 operands."""
    dot = tl_compute_dtype(dtype) if interpreted() or dtype in (torch.float32, torch.float64) \
        else tl_dtype(dtype)
    grid = (triton.cdiv(hidden, TILED_BLOCK_U), triton.cdiv(batch, TILED_BLOCK_B))
    meta = {"COMPUTE": tl_compute_dtype(dtype), "DOT": dot, "BLOCK_B": TILED_BLOCK_B,
            "BLOCK_U": TILED_BLOCK_U, "BLOCK_K": TILED_BLOCK_K, "num_warps": TILED_WARPS}
    return grid, meta


def _cooperative_option():
    """{"launch_cooperative_grid": True} where the installed Triton's CUDA backend has that launch
    option (the driver then refuses a grid that cannot be resident), else {}."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    names = {field.name for field in dataclasses.fields(CUDAOptions)}
    return {"launch_cooperative_grid": True} if "launch_cooperative_grid" in names else {}


def resident(kernel, grid, args, meta, device):
    """Whether every program of ``grid`` can be resident at once, so that their per-step waits end.
    The interpreter runs programs one after another: there only a program that waits for nobody else
    (one unit block per batch tile) can finish. On a GPU: the compiled kernel's registers, shared memory
    and warps against the multiprocessors' limits."""
    if interpreted():
        return grid[0] == 1
    # Asked once per kernel, grid, device and signature: compiling-and-querying at every layer call
    # would put that work on the hot path.
    signature = tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args)
    key = (kernel, grid, str(device), signature, tuple(sorted(meta.items(), key=lambda item: item[0])))
    if key not in _residency:
        _residency[key] = _fits_resident(kernel, grid, args, meta, device)
    return _residency[key]


_residency = {}  # resident()'s answers


def _fits_resident(kernel, grid, args, meta, device):
    compiled = kernel.warmup(*args, grid=grid, **meta)
    compiled._init_handles()  # loads the binary: its register count is known from then on
    props = torch.cuda.get_device_properties(device)
    threads = 32 * meta["num_warps"]
    per_sm = getattr(props, "max_threads_per_multi_processor", 2048) // threads
    registers = getattr(compiled, "n_regs", None)
    if registers:
        per_sm = min(per_sm, getattr(props, "regs_per_multiprocessor", 65536) // (registers * threads))
    else:  # unknown: count one program a multiprocessor
        per_sm = 1
    shared = compiled.metadata.shared
    if shared:
        per_sm = min(per_sm, getattr(props, "shared_memory_per_multiprocessor", 233472) // shared)
    return grid[0] * grid[1] <= per_sm * props.multi_processor_count


def run_tiled(family, gx, batch_sizes, h, before_h, after_h, saved_stride, **flags):
    """Runs the forward of a layer with the tiled kernels of ``family`` ("lstm", "gru", "rnn"); their
    arguments are gx, the steps' offsets and sizes, ``before_h``, h's double buffer, ``after_h``, then
    the step (per-step) or the flags (persistent), T, B, H, ``saved_stride``. ``h`` (B, H) in COMPUTE
    precision holds h0 and gets the final h."""
    B, H = h.shape
    T = batch_sizes.numel()
    if B == 0 or T == 0:
        return
    hbuf = torch.empty((2, B, H), dtype=h.dtype, device=h.device)
    hbuf[0] = h
    _launch(KERNELS[family, "fwd"], gx, batch_sizes, (*before_h, hbuf, *after_h), B, H, saved_stride,
            T, flags)
    h.copy_(hbuf[T % 2])


def run_tiled_bwd(family, dy, batch_sizes, args, B, H, saved_stride, **flags):
    """Runs the dh recurrence of a layer's backward with the tiled kernels of ``family`` (tiled_bwd.py):
    their arguments are dy, the steps' offsets and sizes, ``args`` (W_hh, saved, the state gradients,
    updated in place, and the pre-activation gradients they write), then the step or the flags, T, B,
    H, ``saved_stride``. The per-step launcher takes one launch more than there are steps."""
    T = batch_sizes.numel()
    if B == 0 or T == 0:
        return
    _launch(KERNELS[family, "bwd"], dy, batch_sizes, args, B, H, saved_stride, T + 1, flags)


def _launch(kernels, rows_tensor, batch_sizes, args, B, H, saved_stride, step_launches, flags):
    """One launch of the persistent kernel of ``kernels`` in "persistent" mode where its grid can be
    resident, else ``step_launches`` launches of the per-step kernel."""
    T = batch_sizes.numel()
    sizes = batch_sizes.to(torch.long)
    offsets = (torch.cumsum(sizes, 0) - sizes).to(rows_tensor.device)
    sizes = sizes.to(rows_tensor.device)
    grid, meta = tiled_meta(rows_tensor.dtype, B, H)
    step_kernel, sequence_kernel = kernels
    head = (rows_tensor, offsets, sizes, *args)
    if _mode == "persistent":
        progress = torch.zeros((grid[1], grid[0]), dtype=torch.int32, device=rows_tensor.device)
        stalled = torch.zeros((1,), dtype=torch.int32, device=rows_tensor.device)
        sequence_args = (*head, progress, stalled, T, B, H, saved_stride, grid[0])
        sequence_meta = {**flags, **meta, "BLOCK_FLAGS": triton.next_power_of_2(grid[0])}
        if not interpreted():
            sequence_meta.update(_cooperative_option())
        if resident(sequence_kernel, grid, sequence_args, sequence_meta, rows_tensor.device):
            sequence_kernel[grid](*sequence_args, **sequence_meta)
            if stalled.item():  # a sync per call: this mode is opt-in until a GPU has measured it
                raise RuntimeError("fastcells: a tiled persistent kernel gave up waiting for the other "
                                   "programs of its grid (were they all resident?); use_tiled('per-step') "
                                   "avoids the waits")
            return
    for s in range(step_launches):
        step_kernel[grid](*head, s, T, B, H, saved_stride, **flags, **meta)
