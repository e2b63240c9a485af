"""Unit-tiled forward kernels for layers of any hidden size: one step body, two launchers (issue 15).

Program (u, bt) of the grid owns hidden units [u * BLOCK_U, (u + 1) * BLOCK_U) of batch rows
[bt * BLOCK_B, (bt + 1) * BLOCK_B), with all their gate rows, so the gate math and the state update of
its units happen in place. What it needs from the others is h_{t-1} over all H units: the programs
exchange h through a double buffer in global memory, hbuf (2, B, H) in COMPUTE precision, slot s % 2
holding h before the s-th step processed. Each step a program computes h_{t-1} @ W_gᵀ for its units with
tl.dot over BLOCK_K chunks of H (the batch padded to BLOCK_B >= 16 rows, fp32 or fp64 accumulation);
c (LSTM) is read and written by its owner only.

The step body (``*_tile_step``) is one @triton.jit function, run by two launchers:
- ``*_tiled_step_kernel``: one launch per time step; the programs of a step are independent (they read
  slot s % 2 and write slot (s + 1) % 2), so Triton's interpreter, which runs programs one after
  another, runs it too: that is how CI tests the step body.
- ``*_tiled_sequence_kernel``: one launch for the whole sequence. After each step a program publishes
  the number of steps it has finished in its flag (release) and waits until every program of its batch
  tile has finished the same step (acquire): one flag per program, polled by the programs of its batch
  tile, never one counter everyone spins on. All programs must be resident at once (checked before
  launch, tiled_launch.py). Under the interpreter it can run only where the grid has one program per
  batch tile (H <= BLOCK_U), where a program waits for itself.

W_hh is read from global memory at every step (its slices stay in L2, 4.5 MiB for an LSTM at H=768 in
16 bits) rather than held in registers: a program's slice over all H columns of 4 gates does not fit
them at H = 1024. Rows and the packing of sequences as in sequence.py: step t owns rows offsets[t] ..
offsets[t] + sizes[t], batch row b is active iff b < sizes[t], inactive rows keep their state. Saved
rows have the layout of the other forward kernels (fastcells/saved_layout.py).
"""

import triton
import triton.language as tl

from .gate_math import gru_cell, lstm_cell, rnn_cell
from .pointwise import store_lstm_saved


@triton.jit
def _tile(s, offsets_ptr, sizes_ptr, T, B, H, REVERSE: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_U: tl.constexpr):
    """This program's rows b (BLOCK_B, 1) and units u (1, BLOCK_U) at the s-th step processed: (b, u,
    first row of the step, mask of its active rows, that mask over real units, mask of real state)."""
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)[None, :]
    t = T - 1 - s if REVERSE else s
    active = b < tl.load(sizes_ptr + t)
    return b, u, tl.load(offsets_ptr + t), active, active & (u < H), (b < B) & (u < H)


@triton.jit
def _gate_product(h_ptr, w_ptr, gate, b, u, B, H, COMPUTE: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """h (B, H) @ W[gate * H + u, :]ᵀ for rows b and units u: (BLOCK_B, BLOCK_U) in COMPUTE."""
    acc = tl.zeros((BLOCK_B, BLOCK_U), COMPUTE)
    for k0 in range(0, H, BLOCK_K):
        k_row = k0 + tl.arange(0, BLOCK_K)[None, :]
        k_col = k0 + tl.arange(0, BLOCK_K)[:, None]
        h = tl.load(h_ptr + b * H + k_row, (b < B) & (k_row < H), other=0.0).to(DOT)
        w = tl.load(w_ptr + (gate * H + u) * H + k_col, (k_col < H) & (u < H), other=0.0).to(DOT)
        acc += tl.dot(h, w, input_precision="ieee").to(COMPUTE)
    return acc


# Polls of the flags before a waiting program gives up (about a second on a GPU): a synchronization
# bug then ends the launch with an error the launcher raises, instead of hanging the GPU.
MAX_POLLS = tl.constexpr(1 << 20)


@triton.jit
def _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS: tl.constexpr):
    """Publishes that this program finished step s (its h stores before, released) and waits until
    every program of its batch tile has (acquired), so the next step reads all of h_s. Sets
    *stalled_ptr if the wait outlasts MAX_POLLS polls."""
    row = flags_ptr + tl.program_id(1) * UNIT_BLOCKS
    tl.debug_barrier()  # all of this program's threads have stored their part of h
    tl.atomic_xchg(row + tl.program_id(0), s + 1, sem="release", scope="gpu")
    others = tl.arange(0, BLOCK_FLAGS)
    real = others < UNIT_BLOCKS
    done = tl.min(tl.where(real, tl.atomic_add(row + others, 0, real, sem="acquire", scope="gpu"), s + 1))
    polls = 0
    while (done < s + 1) & (polls < MAX_POLLS):
        done = tl.min(tl.where(real, tl.atomic_add(row + others, 0, real, sem="acquire", scope="gpu"),
                               s + 1))
        polls += 1
    if done < s + 1:
        tl.atomic_xchg(stalled_ptr, 1)
    tl.debug_barrier()  # no thread reads h_s before the wait is over


# ---- LSTM ---------------------------------------------------------------------------------------


@triton.jit
def lstm_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, c_ptr, y_ptr, saved_ptr, s, T, B,
                   H, saved_stride, REVERSE: tl.constexpr, SAVE: tl.constexpr,
                   COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """The s-th step processed, for this program's tile. gx (N, 4H) holds the input projections with
    both biases, c (B, H) COMPUTE the cell state, y (N, H) the output rows, saved (N, saved_stride)
    COMPUTE when SAVE: i f g o | c_prev | tanh(c) | h_prev."""
    b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, REVERSE,
                                                  BLOCK_B, BLOCK_U)
    h_in = hbuf_ptr + (s % 2) * B * H
    a_i = _gate_product(h_in, w_ptr, 0, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    a_f = _gate_product(h_in, w_ptr, 1, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    a_g = _gate_product(h_in, w_ptr, 2, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    a_o = _gate_product(h_in, w_ptr, 3, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    h_prev = tl.load(h_in + b * H + u, state_mask, other=0.0)
    c = tl.load(c_ptr + b * H + u, state_mask, other=0.0)
    g = gx_ptr + (first + b) * 4 * H + u
    i, f, gg, o, c_new, tanh_c, h_new = lstm_cell(
        tl.load(g, mask, other=0.0).to(COMPUTE) + a_i, tl.load(g + H, mask, other=0.0).to(COMPUTE) + a_f,
        tl.load(g + 2 * H, mask, other=0.0).to(COMPUTE) + a_g,
        tl.load(g + 3 * H, mask, other=0.0).to(COMPUTE) + a_o, c)
    tl.store(y_ptr + (first + b) * H + u, h_new.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        sv = saved_ptr + (first + b) * saved_stride + u
        store_lstm_saved(sv, H, mask, i, f, gg, o, c, tanh_c)
        tl.store(sv + 6 * H, h_prev, mask)
    tl.store(c_ptr + b * H + u, tl.where(active, c_new, c), state_mask)
    tl.store(hbuf_ptr + ((s + 1) % 2) * B * H + b * H + u, tl.where(active, h_new, h_prev), state_mask)


@triton.jit
def lstm_tiled_step_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, c_ptr, y_ptr, saved_ptr,
                           s, T, B, H, saved_stride, REVERSE: tl.constexpr, SAVE: tl.constexpr,
                           COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                           BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    lstm_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, c_ptr, y_ptr, saved_ptr, s, T, B, H,
                   saved_stride, REVERSE, SAVE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def lstm_tiled_sequence_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, c_ptr, y_ptr,
                               saved_ptr, flags_ptr, stalled_ptr, T, B, H, saved_stride, UNIT_BLOCKS,
                               REVERSE: tl.constexpr, SAVE: tl.constexpr, COMPUTE: tl.constexpr,
                               DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                               BLOCK_K: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        lstm_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, c_ptr, y_ptr, saved_ptr, s, T, B,
                       H, saved_stride, REVERSE, SAVE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)


# ---- GRU ----------------------------------------------------------------------------------------


@triton.jit
def gru_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, bias_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T,
                  B, H, saved_stride, REVERSE: tl.constexpr, SAVE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """The s-th step processed: gx (N, 3H) with b_ih, bias (3H,) b_hh when HAS_BIAS, saved (N, 5H)
    COMPUTE when SAVE: r z n | h_n | h_prev."""
    b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, REVERSE,
                                                  BLOCK_B, BLOCK_U)
    h_in = hbuf_ptr + (s % 2) * B * H
    h_r = _gate_product(h_in, w_ptr, 0, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    h_z = _gate_product(h_in, w_ptr, 1, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    h_n = _gate_product(h_in, w_ptr, 2, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    if HAS_BIAS:
        h_r += tl.load(bias_ptr + u, u < H, other=0.0).to(COMPUTE)
        h_z += tl.load(bias_ptr + H + u, u < H, other=0.0).to(COMPUTE)
        h_n += tl.load(bias_ptr + 2 * H + u, u < H, other=0.0).to(COMPUTE)
    h_prev = tl.load(h_in + b * H + u, state_mask, other=0.0)
    g = gx_ptr + (first + b) * 3 * H + u
    r, z, n, h_new = gru_cell(tl.load(g, mask, other=0.0).to(COMPUTE),
                              tl.load(g + H, mask, other=0.0).to(COMPUTE),
                              tl.load(g + 2 * H, mask, other=0.0).to(COMPUTE), h_r, h_z, h_n, h_prev)
    tl.store(y_ptr + (first + b) * H + u, h_new.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        sv = saved_ptr + (first + b) * saved_stride + u
        tl.store(sv, r, mask)
        tl.store(sv + H, z, mask)
        tl.store(sv + 2 * H, n, mask)
        tl.store(sv + 3 * H, h_n, mask)
        tl.store(sv + 4 * H, h_prev, mask)
    tl.store(hbuf_ptr + ((s + 1) % 2) * B * H + b * H + u, tl.where(active, h_new, h_prev), state_mask)


@triton.jit
def gru_tiled_step_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, bias_ptr, hbuf_ptr, y_ptr, saved_ptr,
                          s, T, B, H, saved_stride, REVERSE: tl.constexpr, SAVE: tl.constexpr,
                          HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    gru_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, bias_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T, B,
                  H, saved_stride, REVERSE, SAVE, HAS_BIAS, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def gru_tiled_sequence_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, bias_ptr, hbuf_ptr, y_ptr,
                              saved_ptr, flags_ptr, stalled_ptr, T, B, H, saved_stride, UNIT_BLOCKS,
                              REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_BIAS: tl.constexpr,
                              COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr,
                              BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        gru_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, bias_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T,
                      B, H, saved_stride, REVERSE, SAVE, HAS_BIAS, COMPUTE, DOT, BLOCK_B, BLOCK_U,
                      BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)


# ---- RNN ----------------------------------------------------------------------------------------


@triton.jit
def rnn_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T, B, H,
                  saved_stride, REVERSE: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
                  COMPUTE: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """The s-th step processed: gx (N, H) with both biases, saved (N, 2H) COMPUTE when SAVE: h |
    h_prev."""
    b, u, first, active, mask, state_mask = _tile(s, offsets_ptr, sizes_ptr, T, B, H, REVERSE,
                                                  BLOCK_B, BLOCK_U)
    h_in = hbuf_ptr + (s % 2) * B * H
    a = _gate_product(h_in, w_ptr, 0, b, u, B, H, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
    h_prev = tl.load(h_in + b * H + u, state_mask, other=0.0)
    h_new = rnn_cell(tl.load(gx_ptr + (first + b) * H + u, mask, other=0.0).to(COMPUTE) + a, RELU)
    tl.store(y_ptr + (first + b) * H + u, h_new.to(y_ptr.dtype.element_ty), mask)
    if SAVE:
        sv = saved_ptr + (first + b) * saved_stride + u
        tl.store(sv, h_new, mask)
        tl.store(sv + H, h_prev, mask)
    tl.store(hbuf_ptr + ((s + 1) % 2) * B * H + b * H + u, tl.where(active, h_new, h_prev), state_mask)


@triton.jit
def rnn_tiled_step_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T, B, H,
                          saved_stride, REVERSE: tl.constexpr, RELU: tl.constexpr,
                          SAVE: tl.constexpr, COMPUTE: tl.constexpr, DOT: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    rnn_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T, B, H,
                  saved_stride, REVERSE, RELU, SAVE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)


@triton.jit
def rnn_tiled_sequence_kernel(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, y_ptr, saved_ptr,
                              flags_ptr, stalled_ptr, T, B, H, saved_stride, UNIT_BLOCKS,
                              REVERSE: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
                              COMPUTE: tl.constexpr,
                              DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                              BLOCK_K: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    for s in range(T):
        rnn_tile_step(gx_ptr, offsets_ptr, sizes_ptr, w_ptr, hbuf_ptr, y_ptr, saved_ptr, s, T, B, H,
                      saved_stride, REVERSE, RELU, SAVE, COMPUTE, DOT, BLOCK_B, BLOCK_U, BLOCK_K)
        _publish_and_wait(flags_ptr, stalled_ptr, s, UNIT_BLOCKS, BLOCK_FLAGS)
