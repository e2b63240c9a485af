"""Fused step kernels: everything of one time step except the h @ W_hh^T product.

Each program handles a BLOCK_R x BLOCK_H tile of (rows of this step, hidden units). Row r of a step is
batch entry r, so the state buffers (B, H) are indexed by r directly. Every kernel reads a state element
and writes it back in the same program (load before store), so updating a state in place is safe.

Saved activations, per row (the cpu backend's layouts, in COMPUTE precision):
  LSTM  [i f g o (4H) | c_prev (H) | tanh(c) (H) | ...]       columns the Python side fills follow
  GRU   [r z n (3H) | h_n = W_hn h + b_hn (H) | h_prev (H)]
  RNN   [h (H) | h_prev (H)]
"""

import triton
import triton.language as tl

from .gate_math import gru_cell, gru_cell_bwd, lstm_cell, lstm_cell_bwd, rnn_cell, rnn_cell_bwd


@triton.jit
def _tile(rows, H, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    j = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :]
    return r, j, (r < rows) & (j < H)


# ---- LSTM ---------------------------------------------------------------------------------------


@triton.jit
def store_lstm_saved(row_ptr, H, mask, i, f, g, o, c_prev, tanh_c):
    """Stores what LSTM backward needs at columns [0, 6H) of a saved row (row_ptr at unit 0)."""
    tl.store(row_ptr, i, mask)
    tl.store(row_ptr + H, f, mask)
    tl.store(row_ptr + 2 * H, g, mask)
    tl.store(row_ptr + 3 * H, o, mask)
    tl.store(row_ptr + 4 * H, c_prev, mask)
    tl.store(row_ptr + 5 * H, tanh_c, mask)


@triton.jit
def lstm_step_fwd_kernel(
    gx_ptr,  # (R, 4H) input projections with both biases
    gh_ptr,  # (R, 4H) h_prev @ W_hh^T
    c_ptr,  # (B, H) COMPUTE: cell state, rows < R updated in place
    h_ptr,  # (R, h_stride) hidden state before any projection, columns [0, H) written
    y_ptr,  # (R, y_stride) output rows, columns [0, H) written (may equal h_ptr)
    saved_ptr,  # (R, saved_stride) COMPUTE, when SAVE: columns [0, 6H) written
    rows, H, h_stride, y_stride, saved_stride,
    SAVE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    g = r * 4 * H + j
    a_i = tl.load(gx_ptr + g, mask).to(COMPUTE) + tl.load(gh_ptr + g, mask).to(COMPUTE)
    a_f = tl.load(gx_ptr + g + H, mask).to(COMPUTE) + tl.load(gh_ptr + g + H, mask).to(COMPUTE)
    a_g = tl.load(gx_ptr + g + 2 * H, mask).to(COMPUTE) + tl.load(gh_ptr + g + 2 * H, mask).to(COMPUTE)
    a_o = tl.load(gx_ptr + g + 3 * H, mask).to(COMPUTE) + tl.load(gh_ptr + g + 3 * H, mask).to(COMPUTE)
    c_prev = tl.load(c_ptr + r * H + j, mask)
    i, f, gg, o, c, tanh_c, h = lstm_cell(a_i, a_f, a_g, a_o, c_prev)
    tl.store(c_ptr + r * H + j, c, mask)
    tl.store(h_ptr + r * h_stride + j, h.to(h_ptr.dtype.element_ty), mask)
    tl.store(y_ptr + r * y_stride + j, h.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        store_lstm_saved(saved_ptr + r * saved_stride + j, H, mask, i, f, gg, o, c_prev, tanh_c)


@triton.jit
def lstm_step_bwd_kernel(
    saved_ptr,  # (R, saved_stride) COMPUTE: the forward's saved row
    dh_ptr,  # (R, H) COMPUTE: gradient of this step's h (before any projection)
    dc_ptr,  # (B, H) COMPUTE: gradient of this step's c, rows < R replaced by that of c_prev
    dg_ptr,  # (R, 4H) COMPUTE out: gradients of the pre-activations i, f, g, o
    rows, H, saved_stride,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    s = saved_ptr + r * saved_stride + j
    i = tl.load(s, mask)
    f = tl.load(s + H, mask)
    gg = tl.load(s + 2 * H, mask)
    o = tl.load(s + 3 * H, mask)
    c_prev = tl.load(s + 4 * H, mask)
    tanh_c = tl.load(s + 5 * H, mask)
    dh = tl.load(dh_ptr + r * H + j, mask)
    d_i, d_f, d_g, d_o, dc_prev = lstm_cell_bwd(i, f, gg, o, c_prev, tanh_c, dh,
                                                 tl.load(dc_ptr + r * H + j, mask))
    g = dg_ptr + r * 4 * H + j
    tl.store(g, d_i, mask)
    tl.store(g + H, d_f, mask)
    tl.store(g + 2 * H, d_g, mask)
    tl.store(g + 3 * H, d_o, mask)
    tl.store(dc_ptr + r * H + j, dc_prev, mask)


# ---- GRU ----------------------------------------------------------------------------------------


@triton.jit
def store_gru_grads(dgx_row, dgh_row, H, mask, dr, dz, dn, dhn):
    """Stores the gradients of the input projections (r, z, n) and of the hidden ones (r, z, h_n) of a
    row (pointers at unit 0 of the row)."""
    tl.store(dgx_row, dr, mask)
    tl.store(dgx_row + H, dz, mask)
    tl.store(dgx_row + 2 * H, dn, mask)
    tl.store(dgh_row, dr, mask)
    tl.store(dgh_row + H, dz, mask)
    tl.store(dgh_row + 2 * H, dhn, mask)


@triton.jit
def gru_step_fwd_kernel(
    gx_ptr,  # (R, 3H) input projections with b_ih
    gh_ptr,  # (R, 3H) h_prev @ W_hh^T + b_hh
    h_ptr,  # (B, H) COMPUTE: hidden state, rows < R updated in place
    y_ptr,  # (R, H) output rows
    saved_ptr,  # (R, saved_stride = 5H) COMPUTE, when SAVE
    rows, H, saved_stride,
    SAVE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    g = r * 3 * H + j
    h_n = tl.load(gh_ptr + g + 2 * H, mask).to(COMPUTE)
    h_prev = tl.load(h_ptr + r * H + j, mask)
    rr, z, n, h = gru_cell(
        tl.load(gx_ptr + g, mask).to(COMPUTE), tl.load(gx_ptr + g + H, mask).to(COMPUTE),
        tl.load(gx_ptr + g + 2 * H, mask).to(COMPUTE), tl.load(gh_ptr + g, mask).to(COMPUTE),
        tl.load(gh_ptr + g + H, mask).to(COMPUTE), h_n, h_prev)
    tl.store(h_ptr + r * H + j, h, mask)
    tl.store(y_ptr + r * H + j, h.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        s = saved_ptr + r * saved_stride + j
        tl.store(s, rr, mask)
        tl.store(s + H, z, mask)
        tl.store(s + 2 * H, n, mask)
        tl.store(s + 3 * H, h_n, mask)
        tl.store(s + 4 * H, h_prev, mask)


@triton.jit
def gru_step_bwd_kernel(
    saved_ptr,  # (R, saved_stride = 5H) COMPUTE
    dy_ptr,  # (R, H): gradient of this step's output
    dh_ptr,  # (B, H) COMPUTE: gradient of this step's h from later steps; rows < R replaced by
    #          the direct part of the gradient of h_prev (the part through W_hh is added after)
    dgx_ptr,  # (R, 3H) COMPUTE out: gradients of the input projections r, z, n
    dgh_ptr,  # (R, 3H) COMPUTE out: gradients of the hidden projections r, z, n
    rows, H, saved_stride,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    s = saved_ptr + r * saved_stride + j
    rr = tl.load(s, mask)
    z = tl.load(s + H, mask)
    n = tl.load(s + 2 * H, mask)
    h_n = tl.load(s + 3 * H, mask)
    h_prev = tl.load(s + 4 * H, mask)
    dh = tl.load(dh_ptr + r * H + j, mask) + tl.load(dy_ptr + r * H + j, mask).to(dh_ptr.dtype.element_ty)
    dr, dz, dn, dhn, dh_direct = gru_cell_bwd(rr, z, n, h_n, h_prev, dh)
    store_gru_grads(dgx_ptr + r * 3 * H + j, dgh_ptr + r * 3 * H + j, H, mask, dr, dz, dn, dhn)
    tl.store(dh_ptr + r * H + j, dh_direct, mask)


# ---- RNN (tanh or relu) ---------------------------------------------------------------------------


@triton.jit
def rnn_step_fwd_kernel(
    gx_ptr,  # (R, H) input projections with both biases
    gh_ptr,  # (R, H) h_prev @ W_hh^T
    h_ptr,  # (B, H) COMPUTE: hidden state, rows < R updated in place
    y_ptr,  # (R, H) output rows
    saved_ptr,  # (R, saved_stride = 2H) COMPUTE, when SAVE
    rows, H, saved_stride,
    RELU: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    a = tl.load(gx_ptr + r * H + j, mask).to(COMPUTE) + tl.load(gh_ptr + r * H + j, mask).to(COMPUTE)
    h = rnn_cell(a, RELU)
    h_prev = tl.load(h_ptr + r * H + j, mask)
    tl.store(h_ptr + r * H + j, h, mask)
    tl.store(y_ptr + r * H + j, h.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        s = saved_ptr + r * saved_stride + j
        tl.store(s, h, mask)
        tl.store(s + H, h_prev, mask)


@triton.jit
def rnn_step_bwd_kernel(
    saved_ptr,  # (R, saved_stride = 2H) COMPUTE
    dy_ptr,  # (R, H): gradient of this step's output
    dh_ptr,  # (B, H) COMPUTE: gradient of this step's h from later steps
    dpre_ptr,  # (R, H) COMPUTE out: gradient of the pre-activation
    rows, H, saved_stride,
    RELU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    r, j, mask = _tile(rows, H, BLOCK_R, BLOCK_H)
    h = tl.load(saved_ptr + r * saved_stride + j, mask)
    dh = tl.load(dh_ptr + r * H + j, mask) + tl.load(dy_ptr + r * H + j, mask).to(dh_ptr.dtype.element_ty)
    tl.store(dpre_ptr + r * H + j, rnn_cell_bwd(h, dh, RELU), mask)
