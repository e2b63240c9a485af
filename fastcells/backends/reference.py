"""The reference backend: plain PyTorch ops, one time step at a time.

It is the ground truth in the tests and the "naive loop" in the benchmarks, so it is written for clarity,
not speed. Autograd differentiates it; it runs on any device and dtype.

Layer functions take the flattened sequence layout shared by every backend (see ``functional.py``):
``x (N, I)`` holds the input rows of all N rows, ``batch_sizes (T)`` how many rows each time step owns
(non-increasing); the state of batch entry ``b`` is row ``b`` of ``h0 (B, P)``. Weights as torch.nn's:
``w_ih (G, I)``, ``b_ih`` and ``b_hh (G)`` or None, ``w_hh (G, P)``, with G = 4H (LSTM), 3H (GRU),
H (RNN).
"""

import sys

import torch
import torch.nn.functional as F

from .layer_ops import input_bias

NAME = "reference"


def functions():
    """The backend's layer and step functions: this module's."""
    return sys.modules[__name__]


def unusable_reason(device_type, dtype=None):
    """Why this backend cannot run on ``device_type`` tensors of ``dtype``, or None: it runs everywhere."""
    return None


def time_steps(batch_sizes, reverse):
    """Yields (t, first_row, rows) in processing order."""
    sizes = batch_sizes.tolist()
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        yield t, offsets[t], sizes[t]


def _run_layer(cell, gx, states, batch_sizes, reverse):
    """Runs ``cell(gx_rows, *state_rows) -> (y_rows, *new_state_rows)`` over time with a shrinking batch.

    Rows of a state beyond the step's batch keep their value: finished sequences keep their final
    state, and in reverse direction sequences that have not started yet keep the initial state.
    """
    outputs = [None] * batch_sizes.numel()
    for t, first, rows in time_steps(batch_sizes, reverse):
        y, *new_states = cell(gx[first : first + rows], *(s[:rows] for s in states))
        states = [torch.cat([new, old[rows:]]) for new, old in zip(new_states, states)]
        outputs[t] = y
    return torch.cat(outputs), states


def _lstm_cell(gates, c, proj):
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if proj is not None:
        h_new = h_new @ proj.t()
    return h_new, c_new


def _gru_cell(gx, gh, h):
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def _rnn_cell(pre, relu):
    return torch.relu(pre) if relu else torch.tanh(pre)


def lstm_layer(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse):
    """h0 (B, P), c0 (B, H), w_hr (P, H) or None -> y (N, P), hn (B, P), cn (B, H)."""
    gx = F.linear(x, w_ih, input_bias(b_ih, b_hh, adds_b_hh=True))

    def step(gx_t, h, c):
        h_new, c_new = _lstm_cell(gx_t + h @ w_hh.t(), c, w_hr)
        return h_new, h_new, c_new

    y, (hn, cn) = _run_layer(step, gx, [h0, c0], batch_sizes, reverse)
    return y, hn, cn


def gru_layer(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, reverse):
    """h0 (B, H) -> y (N, H), hn (B, H)."""
    gx = F.linear(x, w_ih, input_bias(b_ih, b_hh, adds_b_hh=False))

    def step(gx_t, h):
        h_new = _gru_cell(gx_t, F.linear(h, w_hh, b_hh), h)
        return h_new, h_new

    y, (hn,) = _run_layer(step, gx, [h0], batch_sizes, reverse)
    return y, hn


def rnn_layer(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, relu, reverse):
    """h0 (B, H) -> y (N, H), hn (B, H)."""
    gx = F.linear(x, w_ih, input_bias(b_ih, b_hh, adds_b_hh=True))

    def step(gx_t, h):
        h_new = _rnn_cell(gx_t + h @ w_hh.t(), relu)
        return h_new, h_new

    y, (hn,) = _run_layer(step, gx, [h0], batch_sizes, reverse)
    return y, hn


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """x (B, I), h (B, H), c (B, H) -> (h', c')."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return _lstm_cell(gates, c, None)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """x (B, I), h (B, H) -> h'."""
    gx = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    return _gru_cell(gx, gh, h)


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, relu):
    """x (B, I), h (B, H) -> h'."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return _rnn_cell(pre, relu)
