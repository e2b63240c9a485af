"""Persistent whole-sequence kernels: one launch runs all T steps of one layer and direction.

Each program owns a tile of BLOCK_B batch rows and *all* hidden units: it loads W_hh once, keeps it
on chip (registers) for the whole sequence, and loops over time inside the kernel with h and c in
COMPUTE precision, doing the recurrent product with tl.dot. Programs never wait for each other (no
grid-wide barrier, which Triton's interpreter, running programs one after another, could not run
either). The cost is the size limit: the four W_g tiles (BLOCK_H x BLOCK_H each) must fit in the
registers of one program, see MAX_HIDDEN in launch.py; larger layers use the
alternating mode (torch GEMM + fused step kernel).

Rows of the flattened sequence: step t owns rows offsets[t] .. offsets[t] + sizes[t], sizes
non-increasing (packed sequences); batch row b is active at step t iff b < sizes[t], and inactive rows
keep their state (finished sequences keep their final state; in reverse, late starters keep h0).
tl.dot needs at least 16 rows and columns: BLOCK_B and BLOCK_H are >= 16 and masked.
"""

import triton
import triton.language as tl

from .gate_math import gru_cell, gru_cell_bwd, lstm_cell, lstm_cell_bwd, rnn_cell, rnn_cell_bwd
from .pointwise import store_gru_grads, store_lstm_saved


@triton.jit
def _w_tile(w_ptr, gate, H, TRANSPOSE: tl.constexpr, BLOCK_H: tl.constexpr, DOT: tl.constexpr):
    """Gate ``gate``'s block of W_hh (gates * H, H) as a (BLOCK_H, BLOCK_H) tile in DOT precision:
    [k, j] = W[gate * H + j, k] when TRANSPOSE (for h @ W_g^T), else [j, k] = W[gate * H + j, k]."""
    a = tl.arange(0, BLOCK_H)[:, None]
    b = tl.arange(0, BLOCK_H)[None, :]
    mask = (a < H) & (b < H)
    if TRANSPOSE:
        tile = tl.load(w_ptr + (gate * H + b) * H + a, mask, other=0.0)
    else:
        tile = tl.load(w_ptr + (gate * H + a) * H + b, mask, other=0.0)
    return tile.to(DOT)


@triton.jit
def _dot(x, w_tile, DOT: tl.constexpr, COMPUTE: tl.constexpr):
    """x (BLOCK_B, BLOCK_H) @ w_tile, operands in DOT precision, the result in COMPUTE (float32 inputs
    stay IEEE float32: no TF32, as torch.nn's float32 matmuls)."""
    return tl.dot(x.to(DOT), w_tile, input_precision="ieee").to(COMPUTE)


@triton.jit
def _batch_tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's batch rows b (BLOCK_B, 1), units j (1, BLOCK_H) and the mask of real ones."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    j = tl.arange(0, BLOCK_H)[None, :]
    return b, j, (b < B) & (j < H)


@triton.jit
def _step(offsets_ptr, sizes_ptr, s, T, b, j, H, LAST_FIRST: tl.constexpr):
    """The s-th step processed (time T-1-s when LAST_FIRST, else s): (its first row, the mask of
    this program's active rows (BLOCK_B, 1), that mask over real units (BLOCK_B, BLOCK_H))."""
    t = T - 1 - s if LAST_FIRST else s
    first = tl.load(offsets_ptr + t)
    active = b < tl.load(sizes_ptr + t)
    return first, active, active & (j < H)


@triton.jit
def lstm_sequence_fwd_kernel(
    gx_ptr,  # (N, 4H) input projections with both biases
    offsets_ptr,  # (T,) int64: first row of each step
    sizes_ptr,  # (T,) int64: rows of each step
    w_ptr,  # (4H, H) W_hh
    h_ptr,  # (B, H) in: h0, out: final h
    c_ptr,  # (B, H) COMPUTE in: c0, out: final c
    y_ptr,  # (N, H) output rows
    saved_ptr,  # (N, saved_stride) COMPUTE when SAVE: i f g o | c_prev | tanh(c) | h_prev
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w_i = _w_tile(w_ptr, 0, H, True, BLOCK_H, DOT)
    w_f = _w_tile(w_ptr, 1, H, True, BLOCK_H, DOT)
    w_g = _w_tile(w_ptr, 2, H, True, BLOCK_H, DOT)
    w_o = _w_tile(w_ptr, 3, H, True, BLOCK_H, DOT)
    h = tl.load(h_ptr + b * H + j, state_mask, other=0.0).to(COMPUTE)
    c = tl.load(c_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, REVERSE)
        g = gx_ptr + (first + b) * 4 * H + j
        i, f, gg, o, c_new, tanh_c, h_new = lstm_cell(
            tl.load(g, mask, other=0.0).to(COMPUTE) + _dot(h, w_i, DOT, COMPUTE),
            tl.load(g + H, mask, other=0.0).to(COMPUTE) + _dot(h, w_f, DOT, COMPUTE),
            tl.load(g + 2 * H, mask, other=0.0).to(COMPUTE) + _dot(h, w_g, DOT, COMPUTE),
            tl.load(g + 3 * H, mask, other=0.0).to(COMPUTE) + _dot(h, w_o, DOT, COMPUTE), c)
        tl.store(y_ptr + (first + b) * H + j, h_new.to(y_ptr.dtype.element_ty), mask)
        if SAVE:
            sv = saved_ptr + (first + b) * saved_stride + j
            store_lstm_saved(sv, H, mask, i, f, gg, o, c, tanh_c)
            tl.store(sv + 6 * H, h, mask)
        c = tl.where(active, c_new, c)
        h = tl.where(active, h_new, h)
    tl.store(h_ptr + b * H + j, h.to(h_ptr.dtype.element_ty), state_mask)
    tl.store(c_ptr + b * H + j, c, state_mask)


@triton.jit
def lstm_sequence_bwd_kernel(
    dy_ptr,  # (N, H) gradient of the output rows
    offsets_ptr,  # (T,) int64
    sizes_ptr,  # (T,) int64
    w_ptr,  # (4H, H) W_hh
    saved_ptr,  # (N, saved_stride) COMPUTE: the forward's saved rows
    dh_ptr,  # (B, H) COMPUTE in: gradient of the final h, out: of h0
    dc_ptr,  # (B, H) COMPUTE in: gradient of the final c, out: of c0
    dg_ptr,  # (N, 4H) COMPUTE out: gradients of the pre-activations
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w_i = _w_tile(w_ptr, 0, H, False, BLOCK_H, DOT)
    w_f = _w_tile(w_ptr, 1, H, False, BLOCK_H, DOT)
    w_g = _w_tile(w_ptr, 2, H, False, BLOCK_H, DOT)
    w_o = _w_tile(w_ptr, 3, H, False, BLOCK_H, DOT)
    dh = tl.load(dh_ptr + b * H + j, state_mask, other=0.0)
    dc = tl.load(dc_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):  # the forward's steps, last first
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, not REVERSE)
        sv = saved_ptr + (first + b) * saved_stride + j
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + j, mask, other=0.0).to(COMPUTE)
        d_i, d_f, d_g, d_o, dc_prev = lstm_cell_bwd(
            tl.load(sv, mask, other=0.0), tl.load(sv + H, mask, other=0.0),
            tl.load(sv + 2 * H, mask, other=0.0), tl.load(sv + 3 * H, mask, other=0.0),
            tl.load(sv + 4 * H, mask, other=0.0), tl.load(sv + 5 * H, mask, other=0.0), dh_t, dc)
        # Zero outside the mask: padded rows and units must add nothing to the products below.
        d_i = tl.where(mask, d_i, 0.0)
        d_f = tl.where(mask, d_f, 0.0)
        d_g = tl.where(mask, d_g, 0.0)
        d_o = tl.where(mask, d_o, 0.0)
        g = dg_ptr + (first + b) * 4 * H + j
        tl.store(g, d_i, mask)
        tl.store(g + H, d_f, mask)
        tl.store(g + 2 * H, d_g, mask)
        tl.store(g + 3 * H, d_o, mask)
        dh_prev = (_dot(d_i, w_i, DOT, COMPUTE) + _dot(d_f, w_f, DOT, COMPUTE)
                   + _dot(d_g, w_g, DOT, COMPUTE) + _dot(d_o, w_o, DOT, COMPUTE))
        dh = tl.where(active, dh_prev, dh)
        dc = tl.where(active, dc_prev, dc)
    tl.store(dh_ptr + b * H + j, dh, state_mask)
    tl.store(dc_ptr + b * H + j, dc, state_mask)


@triton.jit
def gru_sequence_fwd_kernel(
    gx_ptr,  # (N, 3H) input projections with b_ih
    offsets_ptr,  # (T,) int64
    sizes_ptr,  # (T,) int64
    w_ptr,  # (3H, H) W_hh
    bias_ptr,  # (3H,) b_hh when HAS_BIAS
    h_ptr,  # (B, H) COMPUTE in: h0, out: final h
    y_ptr,  # (N, H) output rows
    saved_ptr,  # (N, saved_stride = 5H) COMPUTE when SAVE: r z n | h_n | h_prev
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
    DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w_r = _w_tile(w_ptr, 0, H, True, BLOCK_H, DOT)
    w_z = _w_tile(w_ptr, 1, H, True, BLOCK_H, DOT)
    w_n = _w_tile(w_ptr, 2, H, True, BLOCK_H, DOT)
    b_r = tl.zeros((1, BLOCK_H), COMPUTE)
    b_z = b_r
    b_n = b_r
    if HAS_BIAS:
        b_r = tl.load(bias_ptr + j, j < H, other=0.0).to(COMPUTE)
        b_z = tl.load(bias_ptr + H + j, j < H, other=0.0).to(COMPUTE)
        b_n = tl.load(bias_ptr + 2 * H + j, j < H, other=0.0).to(COMPUTE)
    h = tl.load(h_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, REVERSE)
        g = gx_ptr + (first + b) * 3 * H + j
        h_n = _dot(h, w_n, DOT, COMPUTE) + b_n
        r, z, n, h_new = gru_cell(
            tl.load(g, mask, other=0.0).to(COMPUTE), tl.load(g + H, mask, other=0.0).to(COMPUTE),
            tl.load(g + 2 * H, mask, other=0.0).to(COMPUTE), _dot(h, w_r, DOT, COMPUTE) + b_r,
            _dot(h, w_z, DOT, COMPUTE) + b_z, h_n, h)
        tl.store(y_ptr + (first + b) * H + j, h_new.to(y_ptr.dtype.element_ty), mask)
        if SAVE:
            sv = saved_ptr + (first + b) * saved_stride + j
            tl.store(sv, r, mask)
            tl.store(sv + H, z, mask)
            tl.store(sv + 2 * H, n, mask)
            tl.store(sv + 3 * H, h_n, mask)
            tl.store(sv + 4 * H, h, mask)
        h = tl.where(active, h_new, h)
    tl.store(h_ptr + b * H + j, h, state_mask)


@triton.jit
def gru_sequence_bwd_kernel(
    dy_ptr,  # (N, H) gradient of the output rows
    offsets_ptr,  # (T,) int64
    sizes_ptr,  # (T,) int64
    w_ptr,  # (3H, H) W_hh
    saved_ptr,  # (N, saved_stride = 5H) COMPUTE
    dh_ptr,  # (B, H) COMPUTE in: gradient of the final h, out: of h0
    dgx_ptr,  # (N, 3H) COMPUTE out: gradients of the input projections r, z, n
    dgh_ptr,  # (N, 3H) COMPUTE out: gradients of the hidden projections r, z, n
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w_r = _w_tile(w_ptr, 0, H, False, BLOCK_H, DOT)
    w_z = _w_tile(w_ptr, 1, H, False, BLOCK_H, DOT)
    w_n = _w_tile(w_ptr, 2, H, False, BLOCK_H, DOT)
    dh = tl.load(dh_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):  # the forward's steps, last first
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, not REVERSE)
        sv = saved_ptr + (first + b) * saved_stride + j
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + j, mask, other=0.0).to(COMPUTE)
        dr, dz, dn, dhn, dh_direct = gru_cell_bwd(
            tl.load(sv, mask, other=0.0), tl.load(sv + H, mask, other=0.0),
            tl.load(sv + 2 * H, mask, other=0.0), tl.load(sv + 3 * H, mask, other=0.0),
            tl.load(sv + 4 * H, mask, other=0.0), dh_t)
        dr = tl.where(mask, dr, 0.0)  # padded rows and units add nothing to the products below
        dz = tl.where(mask, dz, 0.0)
        dhn = tl.where(mask, dhn, 0.0)
        g = (first + b) * 3 * H + j
        store_gru_grads(dgx_ptr + g, dgh_ptr + g, H, mask, dr, dz, dn, dhn)
        dh_prev = (dh_direct + _dot(dr, w_r, DOT, COMPUTE) + _dot(dz, w_z, DOT, COMPUTE)
                   + _dot(dhn, w_n, DOT, COMPUTE))
        dh = tl.where(active, dh_prev, dh)
    tl.store(dh_ptr + b * H + j, dh, state_mask)


@triton.jit
def rnn_sequence_fwd_kernel(
    gx_ptr,  # (N, H) input projections with both biases
    offsets_ptr,  # (T,) int64
    sizes_ptr,  # (T,) int64
    w_ptr,  # (H, H) W_hh
    h_ptr,  # (B, H) COMPUTE in: h0, out: final h
    y_ptr,  # (N, H) output rows
    saved_ptr,  # (N, saved_stride = 2H) COMPUTE when SAVE: h | h_prev
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
    DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w = _w_tile(w_ptr, 0, H, True, BLOCK_H, DOT)
    h = tl.load(h_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, REVERSE)
        gx = tl.load(gx_ptr + (first + b) * H + j, mask, other=0.0).to(COMPUTE)
        h_new = rnn_cell(gx + _dot(h, w, DOT, COMPUTE), RELU)
        tl.store(y_ptr + (first + b) * H + j, h_new.to(y_ptr.dtype.element_ty), mask)
        if SAVE:
            sv = saved_ptr + (first + b) * saved_stride + j
            tl.store(sv, h_new, mask)
            tl.store(sv + H, h, mask)
        h = tl.where(active, h_new, h)
    tl.store(h_ptr + b * H + j, h, state_mask)


@triton.jit
def rnn_sequence_bwd_kernel(
    dy_ptr,  # (N, H) gradient of the output rows
    offsets_ptr,  # (T,) int64
    sizes_ptr,  # (T,) int64
    w_ptr,  # (H, H) W_hh
    saved_ptr,  # (N, saved_stride = 2H) COMPUTE
    dh_ptr,  # (B, H) COMPUTE in: gradient of the final h, out: of h0
    dpre_ptr,  # (N, H) COMPUTE out: gradients of the pre-activations
    T, B, H, saved_stride,
    REVERSE: tl.constexpr, RELU: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b, j, state_mask = _batch_tile(B, H, BLOCK_B, BLOCK_H)
    w = _w_tile(w_ptr, 0, H, False, BLOCK_H, DOT)
    dh = tl.load(dh_ptr + b * H + j, state_mask, other=0.0)
    for s in range(T):  # the forward's steps, last first
        first, active, mask = _step(offsets_ptr, sizes_ptr, s, T, b, j, H, not REVERSE)
        h = tl.load(saved_ptr + (first + b) * saved_stride + j, mask, other=0.0)
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + j, mask, other=0.0).to(COMPUTE)
        dpre = tl.where(mask, rnn_cell_bwd(h, dh_t, RELU), 0.0)
        tl.store(dpre_ptr + (first + b) * H + j, dpre, mask)
        dh = tl.where(active, _dot(dpre, w, DOT, COMPUTE), dh)
    tl.store(dh_ptr + b * H + j, dh, state_mask)
