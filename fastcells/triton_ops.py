"""The Triton backend's layer ops: ``torch.ops.fastcells.triton_{lstm,gru,rnn}_layer_{fwd,bwd}``.

Same schemas, saved layouts and autograd as the compiled layer ops (fastcells/ops.py), implemented in
Python around the kernels of ``fastcells.kernels`` in one of two modes, chosen by size (MAX_HIDDEN):
  persistent   one launch of a sequence kernel (kernels/sequence.py) runs all T steps, W_hh on chip;
  alternating  per time step one ``h @ W_hh^T`` product through torch (cuBLAS on GPU), then one fused
               step kernel (kernels/pointwise.py) for everything else. Works for any hidden size.

They are opaque ``torch.library.custom_op``s with fake implementations, so torch.compile(fullgraph=True)
traces a model through them without a graph break. (``triton_op``/``wrap_triton`` would let inductor see
the kernels, but would unroll the Python time loop into the graph, and under TRITON_INTERPRET=1 fake
tensors reach the interpreter's launcher and fail.)

Precision: states, gate math and saved activations are kept in float32 for float16/bfloat16 tensors
(float64 for float64). Recurrent products take operands in the tensors' dtype with float32
accumulation, as torch.nn's do (float32 operands stay IEEE: no TF32), except the alternating
backward's, which runs in float32.

Shapes as in csrc/ops.cpp: N rows, B batch, H hidden, P = proj_size or H, G gate columns.
"""

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from . import ops
from .backends.reference import time_steps
from .kernels import launch, pointwise, sequence

# Largest hidden size run by the persistent sequence kernels (kernels/sequence.py), by dtype: one
# program keeps the four (BLOCK_H x BLOCK_H) gate tiles of W_hh in registers, 4 x 64 x 64 x 2 bytes =
# 32 KiB for 16-bit weights, twice that for float32. Larger layers, and layers with a projection, run
# in alternating mode. (Register budgets are Hopper/Ampere estimates, not yet tuned on a GPU.)
MAX_HIDDEN = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32, torch.float64: 32}


def _persistent(dtype, hidden, projected):
    return not projected and hidden <= MAX_HIDDEN.get(dtype, 0)


def _sequence_meta(dtype, batch, hidden):
    """Grid and block sizes of a persistent kernel: tiles of batch rows, all hidden units. tl.dot
    wants blocks of at least 16; the interpreter cannot run bf16/fp16 tl.dot correctly, so it gets
    float32 operands there."""
    block_h = max(16, triton.next_power_of_2(hidden))
    block_b = max(16, min(64, triton.next_power_of_2(max(batch, 1))))
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    dot = launch.tl_compute_dtype(dtype) if interpreted or dtype in (torch.float32, torch.float64) \
        else launch.tl_dtype(dtype)
    meta = {"COMPUTE": launch.tl_compute_dtype(dtype), "DOT": dot, "BLOCK_B": block_b,
            "BLOCK_H": block_h}
    return (triton.cdiv(batch, block_b),), meta


def _run_sequence(kernel, rows_tensor, batch_sizes, tensors, batch, hidden, extra=(), **flags):
    """Launches persistent ``kernel`` (kernels/sequence.py) over ``batch`` state rows. Its arguments:
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


def _time_steps(batch_sizes, reverse):
    """(first row, rows) of each step with rows, in processing order, as a list (walked both ways)."""
    return [(first, rows) for _, first, rows in time_steps(batch_sizes, reverse) if rows > 0]


def _meta(rows, hidden):
    grid, block_r, block_h = launch.tile(rows, hidden)
    return grid, {"BLOCK_R": block_r, "BLOCK_H": block_h}


# ---- LSTM ---------------------------------------------------------------------------------------


@torch.library.custom_op("fastcells::triton_lstm_layer_fwd", mutates_args=())
def lstm_layer_fwd(gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                   batch_sizes: Tensor, reverse: bool, training: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    N, H, P = gx.shape[0], c0.shape[1], h0.shape[1]
    compute = launch.compute_dtype(gx.dtype)
    width = ops.lstm_saved_width(H, P, w_hr is not None)
    gx = gx.contiguous()
    h = h0.contiguous().clone()
    c = c0.to(compute, copy=True).contiguous()
    y = gx.new_empty((N, P))
    saved = gx.new_empty((N, width) if training else (0,), dtype=compute)
    if _persistent(gx.dtype, H, w_hr is not None):
        _run_sequence(sequence.lstm_sequence_fwd_kernel, gx, batch_sizes,
                      (w_hh.contiguous(), h, c, y, saved), h.shape[0], H, (width,),
                      REVERSE=reverse, SAVE=training)
        return y, h, c.to(c0.dtype), saved
    h_raw = gx.new_empty((h.shape[0], H)) if w_hr is not None else None
    for row0, rows in _time_steps(batch_sizes, reverse):
        gh = torch.mm(h[:rows], w_hh.t())
        if training:
            saved[row0:row0 + rows, 6 * H:6 * H + P] = h[:rows]
        grid, meta = _meta(rows, H)
        # Without a projection the kernel writes h straight into the state and the output rows.
        h_dst, y_dst = (h_raw, h_raw) if w_hr is not None else (h, y[row0:])
        pointwise.lstm_step_fwd_kernel[grid](
            gx[row0:], gh, c, h_dst, y_dst, saved[row0:] if training else saved,
            rows, H, h_dst.stride(0), y_dst.stride(0), width,
            SAVE=training, COMPUTE=launch.tl_compute_dtype(gx.dtype), **meta)
        if w_hr is not None:
            projected = torch.mm(h_raw[:rows], w_hr.t())
            y[row0:row0 + rows] = projected
            h[:rows] = projected
            if training:
                saved[row0:row0 + rows, 6 * H + P:] = h_raw[:rows]
    return y, h, c.to(c0.dtype), saved


def _checked_saved(saved, rows, width):
    """``saved`` as the backward kernels read it, (rows, width) contiguous. They index it without
    bounds, so a wrong one (e.g. the empty one of a training=False call) must raise, not be read past
    its end (which crashed the process under the interpreter)."""
    if tuple(saved.shape) != (rows, width):
        raise RuntimeError(f"saved must have shape [{rows}, {width}], got {list(saved.shape)}")
    return saved.contiguous()


@torch.library.custom_op("fastcells::triton_lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd(dy: Tensor, dhn: Tensor, dcn: Tensor, saved: Tensor, w_hh: Tensor,
                   w_hr: Optional[Tensor], batch_sizes: Tensor, reverse: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    N, H, P = dy.shape[0], dcn.shape[1], dhn.shape[1]
    saved = _checked_saved(saved, N, ops.lstm_saved_width(H, P, w_hr is not None))
    compute = saved.dtype
    dh = dhn.to(compute, copy=True).contiguous()
    dc = dcn.to(compute, copy=True).contiguous()
    dg = torch.empty((N, 4 * H), dtype=compute, device=dy.device)
    dw_hr = dy.new_empty((0,))
    if _persistent(dy.dtype, H, w_hr is not None):
        _run_sequence(sequence.lstm_sequence_bwd_kernel, dy.contiguous(), batch_sizes,
                      (w_hh.contiguous(), saved, dh, dc, dg), dh.shape[0], H, (saved.shape[1],),
                      REVERSE=reverse)
    else:
        dy_c = dy.to(compute)
        w = w_hh.to(compute)
        w_r = w_hr.to(compute) if w_hr is not None else None
        dh_rows = torch.empty((N, P), dtype=compute, device=dy.device) if w_hr is not None else None
        for row0, rows in reversed(_time_steps(batch_sizes, reverse)):
            dh_step = dh[:rows] + dy_c[row0:row0 + rows]
            if w_r is not None:
                dh_rows[row0:row0 + rows] = dh_step
                dh_step = torch.mm(dh_step, w_r)
            grid, meta = _meta(rows, H)
            pointwise.lstm_step_bwd_kernel[grid](
                saved[row0:], dh_step, dc, dg[row0:], rows, H, saved.shape[1], **meta)
            torch.mm(dg[row0:row0 + rows], w, out=dh[:rows])
        if w_hr is not None:
            dw_hr = torch.mm(dh_rows.t(), saved[:, 6 * H + P:]).to(w_hr.dtype)
    dw_hh = torch.mm(dg.t(), saved[:, 6 * H:6 * H + P])
    return dg.to(dy.dtype), dh.to(dhn.dtype), dc.to(dcn.dtype), dw_hh.to(w_hh.dtype), dw_hr


# ---- GRU and RNN: one state h, kept in COMPUTE precision -----------------------------------------


def _single_state_buffers(gx, h0, saved_width, training):
    """(gx contiguous, h (B, H) COMPUTE copy of h0, y (N, H), saved (N, saved_width) COMPUTE or an
    empty tensor when not training)."""
    compute = launch.compute_dtype(gx.dtype)
    h = h0.to(compute, copy=True).contiguous()
    y = gx.new_empty((gx.shape[0], h0.shape[1]))
    saved = gx.new_empty((gx.shape[0], saved_width) if training else (0,), dtype=compute)
    return gx.contiguous(), h, y, saved


# ---- GRU ----------------------------------------------------------------------------------------


@torch.library.custom_op("fastcells::triton_gru_layer_fwd", mutates_args=())
def gru_layer_fwd(gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], batch_sizes: Tensor,
                  reverse: bool, training: bool) -> tuple[Tensor, Tensor, Tensor]:
    H = h0.shape[1]
    gx, h, y, saved = _single_state_buffers(gx, h0, ops.gru_saved_width(H), training)
    if _persistent(gx.dtype, H, False):
        bias = b_hh if b_hh is not None else w_hh  # any pointer when there is no bias
        _run_sequence(sequence.gru_sequence_fwd_kernel, gx, batch_sizes,
                      (w_hh.contiguous(), bias, h, y, saved), h.shape[0], H,
                      REVERSE=reverse, SAVE=training, HAS_BIAS=b_hh is not None)
        return y, h.to(h0.dtype), saved
    for row0, rows in _time_steps(batch_sizes, reverse):
        gh = F.linear(h[:rows].to(gx.dtype), w_hh, b_hh).contiguous()
        grid, meta = _meta(rows, H)
        pointwise.gru_step_fwd_kernel[grid](
            gx[row0:], gh, h, y[row0:], saved[row0:] if training else saved, rows, H,
            SAVE=training, COMPUTE=launch.tl_compute_dtype(gx.dtype), **meta)
    return y, h.to(h0.dtype), saved


@torch.library.custom_op("fastcells::triton_gru_layer_bwd", mutates_args=())
def gru_layer_bwd(dy: Tensor, dhn: Tensor, saved: Tensor, w_hh: Tensor, batch_sizes: Tensor,
                  reverse: bool, has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    N, H = dy.shape[0], dhn.shape[1]
    saved = _checked_saved(saved, N, ops.gru_saved_width(H))
    compute = saved.dtype
    dh = dhn.to(compute, copy=True).contiguous()
    dgx = torch.empty((N, 3 * H), dtype=compute, device=dy.device)
    dgh = torch.empty((N, 3 * H), dtype=compute, device=dy.device)
    dy = dy.contiguous()
    if _persistent(dy.dtype, H, False):
        _run_sequence(sequence.gru_sequence_bwd_kernel, dy, batch_sizes,
                      (w_hh.contiguous(), saved, dh, dgx, dgh), dh.shape[0], H, REVERSE=reverse)
    else:
        w = w_hh.to(compute)
        for row0, rows in reversed(_time_steps(batch_sizes, reverse)):
            grid, meta = _meta(rows, H)
            pointwise.gru_step_bwd_kernel[grid](saved[row0:], dy[row0:], dh, dgx[row0:],
                                                dgh[row0:], rows, H, **meta)
            dh[:rows].addmm_(dgh[row0:row0 + rows], w)
    dw_hh = torch.mm(dgh.t(), saved[:, 4 * H:5 * H]).to(w_hh.dtype)
    db_hh = dgh.sum(0).to(dy.dtype) if has_bias else dy.new_empty((0,))
    return dgx.to(dy.dtype), dh.to(dhn.dtype), dw_hh, db_hh


# ---- RNN ----------------------------------------------------------------------------------------


@torch.library.custom_op("fastcells::triton_rnn_layer_fwd", mutates_args=())
def rnn_layer_fwd(gx: Tensor, h0: Tensor, w_hh: Tensor, batch_sizes: Tensor, relu: bool,
                  reverse: bool, training: bool) -> tuple[Tensor, Tensor, Tensor]:
    H = h0.shape[1]
    gx, h, y, saved = _single_state_buffers(gx, h0, ops.rnn_saved_width(H), training)
    if _persistent(gx.dtype, H, False):
        _run_sequence(sequence.rnn_sequence_fwd_kernel, gx, batch_sizes,
                      (w_hh.contiguous(), h, y, saved), h.shape[0], H,
                      REVERSE=reverse, RELU=relu, SAVE=training)
        return y, h.to(h0.dtype), saved
    for row0, rows in _time_steps(batch_sizes, reverse):
        gh = torch.mm(h[:rows].to(gx.dtype), w_hh.t())
        grid, meta = _meta(rows, H)
        pointwise.rnn_step_fwd_kernel[grid](
            gx[row0:], gh, h, y[row0:], saved[row0:] if training else saved, rows, H,
            RELU=relu, SAVE=training, COMPUTE=launch.tl_compute_dtype(gx.dtype), **meta)
    return y, h.to(h0.dtype), saved


@torch.library.custom_op("fastcells::triton_rnn_layer_bwd", mutates_args=())
def rnn_layer_bwd(dy: Tensor, dhn: Tensor, saved: Tensor, w_hh: Tensor, batch_sizes: Tensor,
                  relu: bool, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    N, H = dy.shape[0], dhn.shape[1]
    saved = _checked_saved(saved, N, ops.rnn_saved_width(H))
    compute = saved.dtype
    dh = dhn.to(compute, copy=True).contiguous()
    dpre = torch.empty((N, H), dtype=compute, device=dy.device)
    dy = dy.contiguous()
    if _persistent(dy.dtype, H, False):
        _run_sequence(sequence.rnn_sequence_bwd_kernel, dy, batch_sizes,
                      (w_hh.contiguous(), saved, dh, dpre), dh.shape[0], H,
                      REVERSE=reverse, RELU=relu)
    else:
        w = w_hh.to(compute)
        for row0, rows in reversed(_time_steps(batch_sizes, reverse)):
            grid, meta = _meta(rows, H)
            pointwise.rnn_step_bwd_kernel[grid](saved[row0:], dy[row0:], dh, dpre[row0:], rows, H,
                                                RELU=relu, **meta)
            torch.mm(dpre[row0:row0 + rows], w, out=dh[:rows])
    dw_hh = torch.mm(dpre.t(), saved[:, H:2 * H]).to(w_hh.dtype)
    return dpre.to(dy.dtype), dh.to(dhn.dtype), dw_hh


ops.register_layer_ops("triton_", launch.compute_dtype)
