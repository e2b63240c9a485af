"""Launch geometry shared by the kernels (one program of a per-step kernel covers a BLOCK_R x BLOCK_H
tile of (rows, units)), and what the triton layer ops of lstm.py, gru.py and rnn.py share."""

import os

import torch
import triton
import triton.language as tl

from ..backends.reference import time_steps

# Programs cover up to this many (row, unit) pairs: enough work per program on a GPU, and few programs
# in Triton's interpreter (about 3.5 ms each on a CPU), where small test shapes fit in one.
TILE_ELEMENTS = 2048
MAX_BLOCK_H = 128


def compute_dtype(dtype):
    """The precision of gate math and states for tensors of ``dtype``: float64 stays float64, every
    other dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_compute_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def tl_dtype(dtype):
    """The Triton dtype of a torch dtype."""
    return _TL_DTYPES[dtype]


def tile(rows, hidden):
    """(grid, BLOCK_R, BLOCK_H) for ``rows`` x ``hidden`` units."""
    block_h = min(MAX_BLOCK_H, triton.next_power_of_2(max(hidden, 1)))
    block_r = min(triton.next_power_of_2(max(rows, 1)), max(1, TILE_ELEMENTS // block_h))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(hidden, block_h))
    return grid, block_r, block_h


# ---- What the triton layer ops (lstm.py, gru.py, rnn.py) share ----------------------------------

# Largest hidden size run by the persistent sequence kernels (sequence.py), by dtype: one program keeps
# the four (BLOCK_H x BLOCK_H) gate tiles of W_hh in registers, 4 x 64 x 64 x 2 bytes = 32 KiB for
# 16-bit weights, twice that for float32. Larger layers, and layers with a projection, run in
# alternating mode (per step a torch GEMM for h @ W_hh^T, then one fused step kernel of pointwise.py).
MAX_HIDDEN = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32, torch.float64: 32}


def persistent(dtype, hidden, projected):
    """Whether a layer runs as one launch of a persistent sequence kernel."""
    return not projected and hidden <= MAX_HIDDEN.get(dtype, 0)


# Batch rows a program of a persistent kernel owns, and its warps by dtype. Compiled ahead of time for
# sm_90 (tests/test_triton_resources.py, bench/triton_resources.py), 32 or 64 rows spill registers in
# most kernels at BLOCK_H = 32 and 64 (up to 3 KB a thread at 64 x 64). At 16 rows (the least tl.dot
# takes) ptxas still spills 24 bytes of float32 LSTM's forward at BLOCK_H = 32 with 4 warps (holding
# it to 80 registers), and 8 bytes of float64 GRU's backward there with 8 warps (at 128): so 8 warps,
# but 4 for float64. More batch rows mean more programs, side by side.
SEQUENCE_BLOCK_B = 16
SEQUENCE_WARPS = {torch.float64: 4}  # else 8


def _sequence_meta(dtype, batch, hidden):
    """Grid and block sizes of a persistent kernel: tiles of SEQUENCE_BLOCK_B batch rows, all hidden
    units. The interpreter cannot run bf16/fp16 tl.dot correctly, so it gets float32 operands there."""
    block_h = max(16, triton.next_power_of_2(hidden))
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    dot = tl_compute_dtype(dtype) if interpreted or dtype in (torch.float32, torch.float64) \
        else tl_dtype(dtype)
    meta = {"COMPUTE": tl_compute_dtype(dtype), "DOT": dot, "BLOCK_B": SEQUENCE_BLOCK_B,
            "BLOCK_H": block_h, "num_warps": SEQUENCE_WARPS.get(dtype, 8)}
    return (triton.cdiv(batch, SEQUENCE_BLOCK_B),), meta


def run_sequence(kernel, rows_tensor, batch_sizes, tensors, batch, hidden, extra=(), **flags):
    """Launches persistent ``kernel`` (sequence.py) over ``batch`` state rows. Its arguments:
    ``rows_tensor`` (gx or dy), the steps' offsets and sizes, ``tensors``, then T, B, H, ``extra``,
    then ``flags`` and the block sizes. Nothing to do for an empty batch or sequence."""
    if batch == 0 or batch_sizes.numel() == 0:
        return
    sizes = batch_sizes.to(torch.long)
    offsets = torch.cumsum(sizes, 0) - sizes
    device = rows_tensor.device
    grid, meta = _sequence_meta(rows_tensor.dtype, batch, hidden)
    kernel[grid](rows_tensor, offsets.to(device), sizes.to(device), *tensors, batch_sizes.numel(),
                 batch, hidden, *extra, **flags, **meta)


def steps_with_rows(batch_sizes, reverse):
    """(first row, rows) of each step with rows, in processing order, as a list (walked both ways)."""
    return [(first, rows) for _, first, rows in time_steps(batch_sizes, reverse) if rows > 0]


def step_meta(rows, hidden):
    """Grid and block sizes of a per-step kernel of pointwise.py."""
    grid, block_r, block_h = tile(rows, hidden)
    return grid, {"BLOCK_R": block_r, "BLOCK_H": block_h}


def checked_saved(saved, rows, width):
    """``saved`` as the backward kernels read it, (rows, width) contiguous. They index it without
    bounds, so a wrong one (e.g. the empty one of a training=False call) must raise, not be read past
    its end (which crashed the process under the interpreter)."""
    if tuple(saved.shape) != (rows, width):
        raise RuntimeError(f"saved must have shape [{rows}, {width}], got {list(saved.shape)}")
    return saved.contiguous()


def input_grads(dgx, x, w_ih, b_ih, b_hh, need_dx, dgh_bias=None):
    """(dx, dw_ih, db_ih, db_hh) of a layer's input side from dgx (N, G), the gradient of its input
    pre-activations, as input_grads in csrc/layers.h: products in the tensors' dtype, an empty tensor
    for an absent bias or an unwanted dx; ``dgh_bias`` is GRU's gradient of W_hh h + b_hh."""
    dgx = dgx.to(x.dtype)
    dx = dgx.mm(w_ih) if need_dx else x.new_empty((0,))  # fresh empties: outputs must not alias
    db_ih = dgx.sum(0) if b_ih is not None else x.new_empty((0,))
    if b_hh is None:
        db_hh = x.new_empty((0,))
    elif dgh_bias is not None:
        db_hh = dgh_bias.to(x.dtype).sum(0)
    else:  # the same pre-activations as b_ih: one sum over the N rows, not two
        db_hh = db_ih.clone() if b_ih is not None else dgx.sum(0)
    return dx, dgx.t().mm(x), db_ih, db_hh
