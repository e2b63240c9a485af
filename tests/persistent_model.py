"""A CPU model of the persistent tensor-core kernels (csrc/cuda/persistent.cu forward, persistent_bwd.cu
backward), run step by step.

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
    (sections "Matrix Fragments for mma.m16n8k16" with 16-bit A and B, and "for mma.m16n8k8" with
    .tf32 A and B; 32-bit C in both): groupID = lane / 4, threadID_in_group = lane % 4."""
    lanes = np.arange(32)[:, None]
    group, thread = lanes // 4, lanes % 4
    e8, e4, e2 = np.arange(8)[None, :], np.arange(4)[None, :], np.arange(2)[None, :]
    # m16n8k16 A: a0 a1 (group, 2t + 0/1), a2 a3 (group + 8, ...), a4 a5 (group, 2t + 8 + 0/1), a6 a7
    # (group + 8, ...); B (k by n): b0 b1 (k = 2t + 0/1, n = group), b2 b3 (k = 2t + 8 + 0/1, n = group)
    a16 = (group + 8 * np.isin(e8, (2, 3, 6, 7)), 2 * thread + e8 % 2 + 8 * (e8 >= 4))
    b16 = (2 * thread + e4 % 2 + 8 * (e4 >= 2), np.broadcast_to(group, (32, 4)))
    # m16n8k8 tf32 A: a0 (group, t), a1 (group + 8, t), a2 (group, t + 4), a3 (group + 8, t + 4);
    # B: b0 (k = t, n = group), b1 (k = t + 4, n = group)
    a_tf32 = (group + 8 * (e4 % 2), thread + 4 * (e4 >= 2))
    b_tf32 = (thread + 4 * e2, np.broadcast_to(group, (32, 2)))
    # C: c0 c1 (group, 2t + 0/1), c2 c3 (group + 8, 2t + 0/1)
    c = (group + 8 * (e4 >= 2), 2 * thread + e4 % 2)
    return {False: (a16, b16), True: (a_tf32, b_tf32)}, c


PTX_AB, PTX_C = _ptx_fragments()


def mma(a_regs, b_regs, acc, tf32=False):
    """What mma.sync does to a warp's registers, m16n8k16 with 16-bit A and B (a (32, 8), b (32, 4))
    or m16n8k8 with tf32 A and B (a (32, 4), b (32, 2)); acc (32, 4)."""
    (a_at, b_at), k = PTX_AB[tf32], (8 if tf32 else 16)
    a = np.zeros((16, k))
    a[a_at] = a_regs
    b = np.zeros((k, 8))
    b[b_at] = b_regs
    return acc + (a @ b)[PTX_C]


@dataclass
class Plan:
    """The tables of ``fastcells._C.persistent_plan`` as numpy arrays in their shapes."""

    tables: dict

    def __getattr__(self, name):
        return self.tables[name]


def plan(gates, units, H, batch, steps, reverse, backward=False, sizes=None, tf32=False):
    raw = _extension.C.persistent_plan(gates, units, H, batch, steps, reverse, backward, list(sizes or []),
                                       tf32)
    t = {name: np.asarray(values, dtype=np.int64) for name, values in raw.items()}
    scalars = ("warps", "threads", "m_tiles", "k_tiles", "n_tiles", "blocks", "k_tiles_per_warp",
               "h_stride", "slots", "partial_size")
    t.update({name: int(t[name][0]) for name in scalars})
    rows, padded_batch = t["m_tiles"] * 16, t["n_tiles"] * 8
    shapes = {"a_row": (32, -1), "a_k": (32, -1), "b_k": (32, -1), "c_row": (32, 4), "c_n": (32, 4),
              "weight_index": (t["blocks"], rows, -1), "unit": (t["blocks"], units),
              "k_tile": (t["warps"], t["k_tiles_per_warp"]),
              "partial_index": (t["warps"], rows, padded_batch), "local_row": (gates, units),
              "gate_column": (gates, H), "row": (steps, batch)}
    shapes.update({name: (int(name.split("_")[2]), -1) for name in t if name.startswith("staged_")})
    t.update({name: t[name].reshape(shape) for name, shape in shapes.items()})
    t["tf32"], t["tile_k"] = tf32, int(t["tile"][2])
    return Plan(t)


def _load(values, index):
    """values[index], zero where index is -1 (the kernel's padding)."""
    return np.where(index >= 0, values[np.maximum(index, 0)], 0.0)


def _weight_registers(p, w_flat):
    """The A fragments every block's warps load once, (blocks, warps, m tiles, k tiles a warp, 32, A
    elements a lane)."""
    w_regs = np.zeros((p.blocks, p.warps, p.m_tiles, p.k_tiles_per_warp, 32, p.a_row.shape[1]))
    for block in range(p.blocks):
        for warp in range(p.warps):
            for mt in range(p.m_tiles):
                for j in range(p.k_tiles_per_warp):
                    w_regs[block, warp, mt, j] = _load(w_flat, p.weight_index[
                        block, mt * 16 + p.a_row, p.k_tile[warp, j] * p.tile_k + p.a_k])
    return w_regs


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


def _cluster_stage(p, cluster, per, source, B, width):
    """The stage that every block of a cluster of ``cluster`` blocks holds after the kernel's cluster
    staging of ``source`` (B rows of ``width`` values: h_{t-1}, or dG of the step before): each rank
    stores its column groups of ``per`` elements into every block. Fails where a rank stages a column
    whose writer's flag it did not wait for (on the GPU it would read a stale value) or where a column
    is staged twice or never."""
    stage = np.zeros(p.n_tiles * 8 * p.h_stride)
    times_staged = np.zeros(width, dtype=np.int64)
    firsts, awaited = p.tables[f"staged_column_{cluster}_{per}"], p.tables[f"staged_block_{cluster}"]
    H = p.gate_column.shape[1]
    writer = np.full(H, -1)  # the block whose cell writes unit u (of every gate's columns): p.unit's
    for block in range(p.blocks):
        live = p.unit[block] < H
        writer[p.unit[block][live]] = block
    for rank in range(cluster):
        for first in firsts[rank][firsts[rank] >= 0]:
            columns = np.arange(first, first + per)
            assert set(writer[columns % H]) <= set(awaited[rank]), "staged without waiting for its writer"
            times_staged[columns] += 1
            for b in range(B):
                stage[b * p.h_stride + columns] = source[b * width + columns]
    assert (times_staged == 1).all(), "a column staged twice or never"
    return stage


def _partials_from_stage(p, w_regs, block, stage):
    """The warps' partial products of ``block`` (the kernel's ``partial``) with B fragments read from
    ``stage`` (the shared-memory stage of the product's B operand, rows h_stride apart)."""
    partial = np.zeros(p.partial_size)
    for warp in range(p.warps):
        for nt in range(p.n_tiles):
            acc = np.zeros((p.m_tiles, 32, 4))
            for j in range(p.k_tiles_per_warp):
                kt = p.k_tile[warp, j]
                if kt >= p.k_tiles:
                    break
                b_regs = stage[(nt * 8 + p.b_n[:, None]) * p.h_stride + kt * p.tile_k + p.b_k]
                for mt in range(p.m_tiles):
                    acc[mt] = mma(w_regs[block, warp, mt, j], b_regs, acc[mt], p.tf32)
            for mt in range(p.m_tiles):
                partial[p.partial_index[warp, mt * 16 + p.c_row, nt * 8 + p.c_n]] = acc[mt]
    return partial


def forward(family, gx, w_hh, b_hh, h0, c0, reverse, units, training, tables=None, sizes=None, tf32=False,
            cluster=1, per=1):
    """One layer and direction as the kernel computes it. gx (N, G * H) input projections (b_hh in
    for LSTM and RNN), w_hh (G * H, H), b_hh (G * H) for GRU or None, h0 and c0 (B, H), all float64
    numpy arrays; ``sizes``: the steps' batch sizes of a packed sequence (None: B at each of the
    N / B steps); ``tf32``: the float32 kernel's plan (tf32 fragments); ``cluster``: blocks a
    thread-block cluster (1: none), whose ranks stage h_{t-1} ``per`` elements at a time (1, or a
    16-byte chunk's, where H is a multiple of it). Returns y (N, H), hn, cn (None
    but for LSTM), saved (N, width) or None. ``tables``: a plan to use instead of the kernel's (a test
    breaks one index with it)."""
    G, (B, H) = GATES[family], h0.shape
    N = gx.shape[0]
    T = len(sizes) if sizes is not None else N // B
    p = tables or plan(G, units, H, B, T, reverse, sizes=sizes, tf32=tf32)
    gx_flat, w_flat = gx.reshape(-1), w_hh.reshape(-1)
    y = np.full(N * H, np.nan)  # NaN where nothing was written: a missed store shows
    width = _saved_columns(family, H)["width"]
    saved = np.full(N * width, np.nan) if training else None
    hn, cn = np.full(B * H, np.nan), np.full(B * H, np.nan)
    columns = _saved_columns(family, H)

    w_regs = _weight_registers(p, w_flat)

    # The fp32 states of each block's slots (the kernel's shared memory), from h0 and c0.
    u = p.slot_unit
    batch_of = p.slot_batch
    units_of = p.unit[:, u]  # (blocks, slots)
    live = units_of < H
    h0_flat, c0_flat = h0.reshape(-1), (c0.reshape(-1) if c0 is not None else None)
    h_state = np.where(live, h0_flat[np.where(live, batch_of * H + units_of, 0)], np.nan)
    c_state = (np.where(live, c0_flat[np.where(live, batch_of * H + units_of, 0)], np.nan)
               if c0 is not None else None)

    for s in range(T):
        t, t_prev = p.time[s], p.prev_time[s]
        bs, bs_prev = p.step_batch[t], (0 if t_prev < 0 else p.step_batch[t_prev])
        b_idx, k_idx = np.divmod(np.arange(B * H), H)
        y_prev = y[(0 if t_prev < 0 else p.row[t_prev, 0]) * H:]  # batch entry b at b * H, as h0
        source = np.where(b_idx < bs_prev, y_prev[np.minimum(np.arange(B * H), y_prev.size - 1)], h0_flat)
        if cluster > 1:  # the same in every block of every cluster
            assert p.blocks % cluster == 0, "the kernel runs in clusters only where they split the grid"
            cluster_stage = _cluster_stage(p, cluster, per, source, B, H)
        for block in range(p.blocks):
            if cluster > 1:
                stage = cluster_stage
            else:
                stage = np.zeros(p.n_tiles * 8 * p.h_stride)
                stage[b_idx * p.h_stride + k_idx] = source
            partial = _partials_from_stage(p, w_regs, block, stage)

            keep = live[block] & (batch_of < bs)  # idle entries keep their state
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
    for block in range(p.blocks):  # final states from each block's states
        keep = live[block]
        hn[batch_of[keep] * H + units_of[block][keep]] = h_state[block][keep]
        if c_state is not None:
            cn[batch_of[keep] * H + units_of[block][keep]] = c_state[block][keep]
    shape = lambda a, cols: a.reshape(-1, cols)  # noqa: E731
    return (shape(y, H), shape(hn, H), shape(cn, H) if family == "lstm" else None,
            shape(saved, width) if training else None)


def _cell_backward(family, saved, dh, dc):
    """The cell's backward in float64 for a vector of slots, from its saved values (name: values).
    Returns (dgx rows (gates, slots), dgh rows or None, dc_prev or None, the part of dh_prev carried
    past the recurrent product)."""
    if family == "lstm":
        i, f, g, o = (saved[k] for k in range(4))
        dc_total = dc + dh * o * (1 - saved["tanh_c"] ** 2)
        d = np.stack([dc_total * g * i * (1 - i), dc_total * saved["c_prev"] * f * (1 - f),
                      dc_total * i * (1 - g * g), dh * saved["tanh_c"] * o * (1 - o)])
        return d, None, dc_total * f, np.zeros_like(dh)
    if family == "gru":
        r, z, n = (saved[k] for k in range(3))
        dn = dh * (1 - z) * (1 - n * n)
        dr, dz = dn * saved["h_n"] * r * (1 - r), dh * (saved["h_prev"] - n) * z * (1 - z)
        return np.stack([dr, dz, dn]), np.stack([dr, dz, dn * r]), None, dh * z
    h = saved["h"]
    d = np.where(h > 0, dh, 0.0) if family == "rnn_relu" else dh * (1 - h * h)
    return d[None], None, None, np.zeros_like(dh)


_SAVED_NAMES = {"lstm": [0, 1, 2, 3, "c_prev", "tanh_c"], "gru": [0, 1, 2, "h_n", "h_prev"],
                "rnn_tanh": ["h"], "rnn_relu": ["h"]}


def backward(family, dy, saved, w_hh, dhn, dcn, reverse, units, tables=None, sizes=None, tf32=False,
             cluster=1, per=1):
    """The sequential part of one layer's backward as the kernel computes it. dy (N, H), saved
    (N, width) of the training forward, w_hh (G * H, H), dhn and dcn (B, H; dcn None but for LSTM),
    float64 numpy arrays; ``reverse``: the forward ran backwards in time; ``sizes``, ``cluster`` and
    ``per`` as in forward (in clusters, dG of the step before is staged in shared memory).
    Returns dgx (N, G * H), dgh (GRU) or None, dh0, dc0 (LSTM) or None."""
    G, (B, H) = GATES[family], dhn.shape
    N, K = dy.shape[0], G * H
    T = len(sizes) if sizes is not None else N // B
    # The kernel walks time the other way round: its plan is the reverse direction's.
    p = tables or plan(G, units, H, B, T, not reverse, backward=True, sizes=sizes, tf32=tf32)
    w_flat, dy_flat, saved_flat = w_hh.reshape(-1), dy.reshape(-1), saved.reshape(-1)
    width = _saved_columns(family, H)["width"]
    columns = _saved_columns(family, H)
    dgx = np.full(N * K, np.nan)  # NaN where nothing was written: a missed store shows
    dgh = np.full(N * K, np.nan) if family == "gru" else None
    exchange = dgh if family == "gru" else dgx
    # dh and dc are in-out buffers: dhn and dcn in; entries a packed sequence never reaches keep them.
    dh0 = dhn.reshape(-1).copy()
    dc0 = dcn.reshape(-1).copy() if dcn is not None else np.full(B * H, np.nan)

    w_regs = _weight_registers(p, w_flat)

    u, batch_of = p.slot_unit, p.slot_batch
    units_of = p.unit[:, u]
    live = units_of < H
    index = np.where(live, batch_of * H + units_of, 0)
    carried = np.where(live, dhn.reshape(-1)[index], np.nan)
    dc_state = np.where(live, dcn.reshape(-1)[index], np.nan) if dcn is not None else None

    for s in range(T + 1):
        last = s == T
        t, t_before = (None if last else p.time[s]), p.prev_time[s]
        bs = 0 if last else p.step_batch[t]
        bs_before = 0 if t_before < 0 else p.step_batch[t_before]
        if cluster > 1 and t_before >= 0:  # the same stage in every block of every cluster
            assert p.blocks % cluster == 0, "the kernel runs in clusters only where they split the grid"
            n = np.arange(B)
            before = np.where((n < bs_before)[:, None], exchange[(p.row[t_before, np.where(n < bs_before, n, 0)]
                                                                  * K)[:, None] + np.arange(K)], 0.0)
            stage = _cluster_stage(p, cluster, per, before.reshape(-1), B, K)
        for block in range(p.blocks):
            partial = np.zeros(p.partial_size)
            if t_before >= 0 and cluster > 1:
                partial = _partials_from_stage(p, w_regs, block, stage)
            elif t_before >= 0:
                for warp in range(p.warps):
                    for nt in range(p.n_tiles):
                        n = nt * 8 + p.b_n
                        rows = p.row[t_before, np.where(n < bs_before, n, 0)]
                        acc = np.zeros((p.m_tiles, 32, 4))
                        for j in range(p.k_tiles_per_warp):
                            kt = p.k_tile[warp, j]
                            if kt >= p.k_tiles:
                                break
                            k = kt * p.tile_k + p.b_k
                            valid = (n < bs_before)[:, None] & (k < K)
                            b_regs = np.where(valid, exchange[np.where(valid, rows[:, None] * K + k, 0)], 0.0)
                            for mt in range(p.m_tiles):
                                acc[mt] = mma(w_regs[block, warp, mt, j], b_regs, acc[mt], p.tf32)
                        for mt in range(p.m_tiles):
                            partial[p.partial_index[warp, mt * 16 + p.c_row, nt * 8 + p.c_n]] = acc[mt]

            keep = live[block] & ((batch_of < bs) | (batch_of < bs_before))  # idle in both: skipped
            slot_units, slot_batch, slot_u = units_of[block][keep], batch_of[keep], u[keep]
            dh = carried[block][keep].copy()
            if t_before >= 0:
                dh += partial[p.partial_index[:, p.local_row[0, slot_u], slot_batch]].sum(axis=0)
            done = slot_batch >= bs  # the entry's first forward step was the step before: dh is its dh0
            dh0[slot_batch[done] * H + slot_units[done]] = dh[done]
            if dc_state is not None:
                dc0[slot_batch[done] * H + slot_units[done]] = dc_state[block][keep][done]
            keep[keep] = ~done
            slot_units, slot_batch, slot_u, dh = (a[~done] for a in (slot_units, slot_batch, slot_u, dh))
            if last or not keep.any():
                continue
            rows = p.row[t, slot_batch]
            dh += dy_flat[rows * H + slot_units]
            values = {name: saved_flat[rows * width + (name * H if isinstance(name, int) else columns[name])
                                       + slot_units] for name in _SAVED_NAMES[family]}
            dc = dc_state[block][keep] if dc_state is not None else None
            d_x, d_h, dc_prev, carry = _cell_backward(family, values, dh, dc)
            for g in range(G):
                dgx[rows * K + p.gate_column[g, slot_units]] = d_x[g]
                if d_h is not None:
                    dgh[rows * K + p.gate_column[g, slot_units]] = d_h[g]
            if dc_prev is not None:
                dc_state[block][keep] = dc_prev
            carried[block][keep] = carry
    return (dgx.reshape(-1, K), None if dgh is None else dgh.reshape(-1, K), dh0.reshape(B, H),
            dc0.reshape(B, H) if family == "lstm" else None)
