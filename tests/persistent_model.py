"""A CPU model of the persistent tensor-core forward kernel (csrc/cuda/persistent.cu), run step by step.

Nothing executes CUDA here, so the kernel's indexing is checked through this model: every index it uses
comes from the kernel's own partition functions (csrc/include/fastcells/persistent_plan.h, tabulated by
``fastcells._C.persistent_plan``), and what the hardware does with a fragment comes from the PTX ISA's
description of mma.sync.m16n8k16, written below independently of that header. Each block, warp and lane
loads its registers where the kernel loads them, the MMA combines them as the tensor cores would, the
partial sums go where the kernel stores them, and the pointwise slots read them back and write y, hn,
cn and the saved rows where the kernel writes them. The model runs in float64, so any wrong index shows
as an error far above rounding. Blocks run one after another within a step: the kernel's
synchronization guarantees no block reads step t's h before every block wrote it, and no block ever
overwrites what another still reads (each step writes fresh rows of y).
"""

from dataclasses import dataclass

import numpy as np

from fastcells import _extension, saved_layout

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _ptx_fragments():
    """(row, column) of the tile element that register element e of a lane holds, per the PTX ISA
    (section "Matrix Fragments for mma.m16n8k16", 16-bit A and B, 32-bit C): groupID = lane / 4,
    threadID_in_group = lane % 4."""
    lanes = np.arange(32)[:, None]
    group, thread = lanes // 4, lanes % 4
    e8, e4 = np.arange(8)[None, :], np.arange(4)[None, :]
    # A: a0 a1 (group, 2t + 0/1), a2 a3 (group + 8, ...), a4 a5 (group, 2t + 8 + 0/1), a6 a7 (group + 8, ...)
    a = (group + 8 * np.isin(e8, (2, 3, 6, 7)), 2 * thread + e8 % 2 + 8 * (e8 >= 4))
    # B (k by n): b0 b1 (k = 2t + 0/1, n = group), b2 b3 (k = 2t + 8 + 0/1, n = group)
    b = (2 * thread + e4 % 2 + 8 * (e4 >= 2), np.broadcast_to(group, (32, 4)))
    # C: c0 c1 (group, 2t + 0/1), c2 c3 (group + 8, 2t + 0/1)
    c = (group + 8 * (e4 >= 2), 2 * thread + e4 % 2)
    return a, b, c


PTX_A, PTX_B, PTX_C = _ptx_fragments()


def mma(a_regs, b_regs, acc):
    """What mma.sync.m16n8k16 does to a warp's registers: a (32, 8), b (32, 4), acc (32, 4)."""
    a = np.zeros((16, 16))
    a[PTX_A] = a_regs
    b = np.zeros((16, 8))
    b[PTX_B] = b_regs
    return acc + (a @ b)[PTX_C]


@dataclass
class Plan:
    """The tables of ``fastcells._C.persistent_plan`` as numpy arrays in their shapes."""

    tables: dict

    def __getattr__(self, name):
        return self.tables[name]


def plan(gates, units, H, batch, steps, reverse):
    raw = _extension.C.persistent_plan(gates, units, H, batch, steps, reverse)
    t = {name: np.asarray(values, dtype=np.int64) for name, values in raw.items()}
    scalars = ("warps", "threads", "m_tiles", "k_tiles", "n_tiles", "blocks", "k_tiles_per_warp",
               "h_stride", "slots", "partial_size")
    t.update({name: int(t[name][0]) for name in scalars})
    rows, padded_batch = t["m_tiles"] * 16, t["n_tiles"] * 8
    shapes = {"a_row": (32, 8), "a_k": (32, 8), "b_k": (32, 4), "c_row": (32, 4), "c_n": (32, 4),
              "weight_row": (t["blocks"], rows), "unit": (t["blocks"], units),
              "k_tile": (t["warps"], t["k_tiles_per_warp"]),
              "partial_index": (t["warps"], rows, padded_batch), "local_row": (gates, units),
              "gate_column": (gates, H), "row": (steps, batch)}
    t.update({name: t[name].reshape(shape) for name, shape in shapes.items()})
    return Plan(t)


def _cell(family, gx, pre, b_hh, h_prev, c_prev):
    """The cell in float64 for a vector of slots: gx, pre (gates, slots); b_hh (gates, slots) for GRU.
    Returns (h, c, the saved columns {offset name or gate index: values})."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    if family == "lstm":
        a = gx + pre
        i, f, g, o = sigmoid(a[0]), sigmoid(a[1]), np.tanh(a[2]), sigmoid(a[3])
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        return h, c, {0: i, 1: f, 2: g, 3: o, "c_prev": c_prev, "tanh_c": np.tanh(c), "h_prev": h_prev}
    if family == "gru":
        hidden = pre + b_hh
        r, z = sigmoid(gx[0] + hidden[0]), sigmoid(gx[1] + hidden[1])
        n = np.tanh(gx[2] + r * hidden[2])
        h = (1 - z) * n + z * h_prev
        return h, None, {0: r, 1: z, 2: n, "h_n": hidden[2], "h_prev": h_prev}
    a = gx[0] + pre[0]
    h = np.maximum(a, 0) if family == "rnn_relu" else np.tanh(a)
    return h, None, {"h": h, "h_prev": h_prev}


def _saved_columns(family, H):
    if family == "lstm":
        return saved_layout.lstm_columns(H, H, False)
    return saved_layout.gru_columns(H) if family == "gru" else saved_layout.rnn_columns(H)


def forward(family, gx, w_hh, b_hh, h0, c0, reverse, units, training, tables=None):
    """One layer and direction as the kernel computes it. gx (T * B, G * H) input projections (b_hh in
    for LSTM and RNN), w_hh (G * H, H), b_hh (G * H) for GRU or None, h0 and c0 (B, H), all float64
    numpy arrays. Returns y (T * B, H), hn, cn (None but for LSTM), saved (T * B, width) or None.
    ``tables``: a plan to use instead of the kernel's (a test breaks one index with it)."""
    G, (B, H) = GATES[family], h0.shape
    T = gx.shape[0] // B
    p = tables or plan(G, units, H, B, T, reverse)
    gx_flat, w_flat = gx.reshape(-1), w_hh.reshape(-1)
    y = np.full(T * B * H, np.nan)  # NaN where nothing was written: a missed store shows
    width = _saved_columns(family, H)["width"]
    saved = np.full(T * B * width, np.nan) if training else None
    hn, cn = np.full(B * H, np.nan), np.full(B * H, np.nan)
    columns = _saved_columns(family, H)

    # Registers that hold each block's W_hh fragments for the whole sequence: (blocks, warps, m, j, 32, 8).
    w_regs = np.zeros((p.blocks, p.warps, p.m_tiles, p.k_tiles_per_warp, 32, 8))
    for block in range(p.blocks):
        for warp in range(p.warps):
            for mt in range(p.m_tiles):
                for j in range(p.k_tiles_per_warp):
                    rows = p.weight_row[block, mt * 16 + p.a_row]
                    ks = p.k_tile[warp, j] * 16 + p.a_k
                    valid = (rows >= 0) & (ks < H)
                    w_regs[block, warp, mt, j] = np.where(valid, w_flat[np.where(valid, rows * H + ks, 0)], 0)

    # The fp32 states of each block's slots (the kernel's shared memory), from h0 and c0.
    u = p.slot_unit
    batch_of = p.slot_batch
    units_of = p.unit[:, u]  # (blocks, slots)
    live = units_of < H
    h0_flat, c0_flat = h0.reshape(-1), (c0.reshape(-1) if c0 is not None else None)
    h_state = np.where(live, h0_flat[np.where(live, batch_of * H + units_of, 0)], np.nan)
    c_state = np.where(live, c0_flat[np.where(live, batch_of * H + units_of, 0)], np.nan) if c0 is not None else None

    for s in range(T):
        t, t_prev = p.time[s], p.prev_time[s]
        source = h0_flat if t_prev < 0 else y[p.row[t_prev, 0] * H:][: B * H]
        for block in range(p.blocks):
            stage = np.zeros(p.n_tiles * 8 * p.h_stride)
            b_idx, k_idx = np.divmod(np.arange(B * H), H)
            stage[b_idx * p.h_stride + k_idx] = source
            partial = np.zeros(p.partial_size)
            for warp in range(p.warps):
                for nt in range(p.n_tiles):
                    acc = np.zeros((p.m_tiles, 32, 4))
                    for j in range(p.k_tiles_per_warp):
                        kt = p.k_tile[warp, j]
                        if kt >= p.k_tiles:
                            break
                        b_regs = stage[(nt * 8 + p.b_n[:, None]) * p.h_stride + kt * 16 + p.b_k]
                        for mt in range(p.m_tiles):
                            acc[mt] = mma(w_regs[block, warp, mt, j], b_regs, acc[mt])
                    for mt in range(p.m_tiles):
                        partial[p.partial_index[warp, mt * 16 + p.c_row, nt * 8 + p.c_n]] = acc[mt]

            keep = live[block]
            slot_units, slot_batch, slot_u = units_of[block][keep], batch_of[keep], u[keep]
            pre = np.stack([partial[p.partial_index[:, p.local_row[g, slot_u], slot_batch]].sum(axis=0)
                            for g in range(G)])
            rows = p.row[t, slot_batch]
            gx_slots = np.stack([gx_flat[rows * G * H + p.gate_column[g, slot_units]] for g in range(G)])
            b_slots = (np.stack([b_hh[g * H + slot_units] for g in range(G)])
                       if b_hh is not None else np.zeros_like(pre))
            c_prev = c_state[block][keep] if c_state is not None else None
            h, c, save = _cell(family, gx_slots, pre, b_slots, h_state[block][keep], c_prev)
            if training:
                for key, values in save.items():
                    offset = key * H if isinstance(key, int) else columns[key]
                    saved[rows * width + offset + slot_units] = values
            h_state[block][keep] = h
            if c is not None:
                c_state[block][keep] = c
            y[rows * H + slot_units] = h
            if s == T - 1:
                hn[slot_batch * H + slot_units] = h
                if c is not None:
                    cn[slot_batch * H + slot_units] = c
    shape = lambda a, cols: a.reshape(-1, cols)  # noqa: E731
    return (shape(y, H), shape(hn, H), shape(cn, H) if family == "lstm" else None,
            shape(saved, width) if training else None)
