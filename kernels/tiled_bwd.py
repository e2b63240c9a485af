"""Unit-tiled backward kernels: the dh recurrence of layers of any hidden size, one step body, two
launchers, as the forward's (tiled.py; grid, tiles and flags as there).

Program (u, bt) owns hidden units u of batch rows bt. The s-th step of backward (forward steps last
first) has two halves:
1. own units: dh_t = dh + dy_t, the cell's backward from the saved activations gives the gradients of
   the step's pre-activations dG_t (written to the dG rows, an output) and of c_{t-1} (LSTM, in place);
   dh keeps only the part of dh_{t-1} that does not go through W_hh (GRU's dh_t * z; 0 otherwise);
2. dh_{t-1}[b, u] += dG_t[b, :] @ W_hh[:, u], over all G*H gate rows: it reads every program's dG_t.
Only half 2 needs the other programs, so the body of step s runs half 2 of step s-1, then half 1 of
step s; between the two a step's programs meet (the persistent launcher's flags, or the end of a
per-step launch), and after the last step one more body runs half 2 alone. dh never leaves its owner:
only dG_t, an output anyway, is shared. Weight and input gradients stay GEMMs after the loop.
"""

import triton
import triton.language as tl

from .gate_math import gru_cell_bwd, lstm_cell_bwd, rnn_cell_bwd
from .pointwise import store_gru_grads
from .tiled import _publish_and_wait, _tile


@triton.jit
def _add_dh_product(dg_ptr, G: tl.constexpr, w_ptr, dh_ptr, s, offsets_ptr, sizes_ptr, T, B, H,
                    LAST_FIRST: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """Half 2 of the s-th step processed: dh[b, u] += dG[b, :] @ W[:, u] for this program's rows and
    units, dG the step's (N, G*H) rows (zero for rows inactive at the step), W_hh (G*H, H)."""
    b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, LAST_FIRST,
                                                  BLOCK_B, BLOCK_U)
    acc = tl.zeros((BLOCK_B, BLOCK_U), COMPUTE)
    for k0 in range(0, G * H, BLOCK_K):
        k_row = k0 + tl.arange(0, BLOCK_K)[None, :]
        k_col = k0 + tl.arange(0, BLOCK_K)[:, None]
        d = tl.load(dg_ptr + (first + b) * (G * H) + k_row, active & (k_row < G * H), other=0.0).to(DOT)
        w = tl.load(w_ptr + k_col * H + u, (k_col < G * H) & (u < H), other=0.0).to(DOT)
        acc += tl.dot(d, w, input_precision="ieee").to(COMPUTE)
    dh = dh_ptr + b * H + u
    tl.store(dh, tl.load(dh, state_mask, other=0.0) + acc, state_mask)


# ---- LSTM ---------------------------------------------------------------------------------------


@triton.jit
def lstm_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr, dg_ptr, s, T,
                       B, H, saved_stride, REVERSE: tl.constexpr, COMPUTE: tl.constexpr,
                       DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Half 2 of step s - 1, then half 1 of step s (s = T: half 2 only). dy (N, H), saved (N,
    saved_stride) COMPUTE: i f g o | c_prev | tanh(c) | ..., dh and dc (B, H) COMPUTE in: gradients of
    the final states, out: of h0 and c0, dg (N, 4H) COMPUTE out."""
    if s > 0:
        _add_dh_product(dg_ptr, 4, w_ptr, dh_ptr, s - 1, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                        COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        tl.debug_barrier()  # half 1 reads dh as half 2 of this program left it
    if s < T:
        b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                                                      BLOCK_B, BLOCK_U)
        sv = saved_ptr + (first + b) * saved_stride + u
        dh = tl.load(dh_ptr + b * H + u, state_mask, other=0.0)
        dc = tl.load(dc_ptr + b * H + u, state_mask, other=0.0)
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + u, mask, other=0.0).to(COMPUTE)
        d_i, d_f, d_g, d_o, dc_prev = lstm_cell_bwd(
            tl.load(sv, mask, other=0.0), tl.load(sv + H, mask, other=0.0),
            tl.load(sv + 2 * H, mask, other=0.0), tl.load(sv + 3 * H, mask, other=0.0),
            tl.load(sv + 4 * H, mask, other=0.0), tl.load(sv + 5 * H, mask, other=0.0), dh_t, dc)
        g = dg_ptr + (first + b) * 4 * H + u
        tl.store(g, d_i, mask)
        tl.store(g + H, d_f, mask)
        tl.store(g + 2 * H, d_g, mask)
        tl.store(g + 3 * H, d_o, mask)
        tl.store(dc_ptr + b * H + u, tl.where(active, dc_prev, dc), state_mask)
        tl.store(dh_ptr + b * H + u, tl.where(active, 0.0, dh), state_mask)


@triton.jit
def lstm_tiled_bwd_step_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr, dg_ptr,
                               s, T, B, H, saved_stride, REVERSE: tl.constexpr,
                               COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                               BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    lstm_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr, dg_ptr, s, T, B,
                       H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def lstm_tiled_bwd_sequence_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr,
                                   dg_ptr, flags_ptr, stalled_ptr, T, B, H, saved_stride,
                                   UNIT_BLOCKS, REVERSE: tl.constexpr, COMPUTE: tl.constexpr,
                                   DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                                   BLOCK_K: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        lstm_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr, dg_ptr, s,
                           T, B, H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)
    lstm_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dc_ptr, dg_ptr, T, T,
                       B, H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


# ---- GRU ----------------------------------------------------------------------------------------


@triton.jit
def gru_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr, dgh_ptr, s, T,
                      B, H, saved_stride, REVERSE: tl.constexpr, COMPUTE: tl.constexpr,
                      DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """As LSTM's, with saved (N, 5H) r z n | h_n | h_prev, dgx and dgh (N, 3H) COMPUTE out: the
    gradients of the input and hidden projections r, z, n; dh keeps dh_t * z after half 1."""
    if s > 0:
        _add_dh_product(dgh_ptr, 3, w_ptr, dh_ptr, s - 1, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                        COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        tl.debug_barrier()
    if s < T:
        b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                                                      BLOCK_B, BLOCK_U)
        sv = saved_ptr + (first + b) * saved_stride + u
        dh = tl.load(dh_ptr + b * H + u, state_mask, other=0.0)
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + u, mask, other=0.0).to(COMPUTE)
        dr, dz, dn, dhn, dh_direct = gru_cell_bwd(
            tl.load(sv, mask, other=0.0), tl.load(sv + H, mask, other=0.0),
            tl.load(sv + 2 * H, mask, other=0.0), tl.load(sv + 3 * H, mask, other=0.0),
            tl.load(sv + 4 * H, mask, other=0.0), dh_t)
        g = (first + b) * 3 * H + u
        store_gru_grads(dgx_ptr + g, dgh_ptr + g, H, mask, dr, dz, dn, dhn)
        tl.store(dh_ptr + b * H + u, tl.where(active, dh_direct, dh), state_mask)


@triton.jit
def gru_tiled_bwd_step_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr,
                              dgh_ptr, s, T, B, H, saved_stride, REVERSE: tl.constexpr,
                              COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    gru_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr, dgh_ptr, s, T,
                      B, H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def gru_tiled_bwd_sequence_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr,
                                  dgh_ptr, flags_ptr, stalled_ptr, T, B, H, saved_stride,
                                  UNIT_BLOCKS, REVERSE: tl.constexpr, COMPUTE: tl.constexpr,
                                  DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                                  BLOCK_K: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        gru_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr, dgh_ptr, s,
                          T, B, H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)
    gru_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dgx_ptr, dgh_ptr, T, T,
                      B, H, saved_stride, REVERSE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


# ---- RNN ----------------------------------------------------------------------------------------


@triton.jit
def rnn_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr, s, T, B, H,
                      saved_stride, REVERSE: tl.constexpr, RELU: tl.constexpr,
                      COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """As LSTM's, with saved (N, 2H) h | h_prev and dpre (N, H) COMPUTE out: the gradients of the
    pre-activations."""
    if s > 0:
        _add_dh_product(dpre_ptr, 1, w_ptr, dh_ptr, s - 1, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                        COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        tl.debug_barrier()
    if s < T:
        b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, not REVERSE,
                                                      BLOCK_B, BLOCK_U)
        dh = tl.load(dh_ptr + b * H + u, state_mask, other=0.0)
        dh_t = dh + tl.load(dy_ptr + (first + b) * H + u, mask, other=0.0).to(COMPUTE)
        h = tl.load(saved_ptr + (first + b) * saved_stride + u, mask, other=0.0)
        tl.store(dpre_ptr + (first + b) * H + u, rnn_cell_bwd(h, dh_t, RELU), mask)
        tl.store(dh_ptr + b * H + u, tl.where(active, 0.0, dh), state_mask)


@triton.jit
def rnn_tiled_bwd_step_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr, s, T,
                              B, H, saved_stride, REVERSE: tl.constexpr, RELU: tl.constexpr,
                              COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    rnn_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr, s, T, B, H,
                      saved_stride, REVERSE, RELU, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def rnn_tiled_bwd_sequence_kernel(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr,
                                  flags_ptr, stalled_ptr, T, B, H, saved_stride, UNIT_BLOCKS,
                                  REVERSE: tl.constexpr, RELU: tl.constexpr, COMPUTE: tl.constexpr,
                                  DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                                  BLOCK_K: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        rnn_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr, s, T, B, H,
                          saved_stride, REVERSE, RELU, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)
    rnn_tile_bwd_step(dy_ptr, offsets_ptr, sizes_ptr, w_ptr, saved_ptr, dh_ptr, dpre_ptr, T, T, B, H,
                      saved_stride, REVERSE, RELU, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
