"""The persistent tensor-core kernel's partition (csrc/include/fastcells/persistent_plan.h), run on the
CPU through its model (tests/persistent_model.py), against the reference backend in float64: every
cell, both block widths, both directions, inference and training, odd sizes (a partial last block,
batch and hidden sizes that are not whole tiles, warps holding two k tiles or none)."""

import numpy as np
import pytest
import torch

from fastcells import _extension
from fastcells.backends import reference

import persistent_model

pytestmark = pytest.mark.skipif(_extension.load_error is not None, reason="fastcells._C did not load")

# (H, B): one partial block and tile; a batch of two n tiles; k tiles beyond the 8 warps (warps 0 and
# 1 hold two); a hidden size below one k tile.
SHAPES = [(17, 3), (40, 9), (130, 2), (5, 1)]
STEPS = 3


def _layer(family, H, B, sizes=None, seed=0):
    """Random float64 weights and states of one layer (input size 7) and its input x (N, 7): STEPS
    steps of B rows, or the steps' batch sizes ``sizes`` of a packed sequence."""
    g = torch.Generator().manual_seed(seed)
    G = persistent_model.GATES[family]
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1  # noqa: E731
    sizes = torch.tensor(sizes) if sizes is not None else torch.full((STEPS,), B, dtype=torch.int64)
    return {"x": rand(int(sizes.sum()), 7), "w_ih": rand(G * H, 7), "b_ih": rand(G * H), "b_hh": rand(G * H),
            "w_hh": rand(G * H, H) * 0.5, "h0": rand(B, H), "c0": rand(B, H) if family == "lstm" else None,
            "sizes": sizes, "packed": bool((sizes != B).any())}


def _states_before(y, h0, sizes, reverse):
    """Each row's starting state, what the GPU layouts' h_prev block holds: y's row of the same batch
    entry one step earlier in the layer's direction, or h0's where its sequence starts."""
    sizes = sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    out = torch.empty_like(y)
    for t, rows in enumerate(sizes):
        before = t + 1 if reverse else t - 1
        for b in range(rows):
            out[offsets[t] + b] = (y[offsets[before] + b] if 0 <= before < len(sizes) and b < sizes[before]
                                   else h0[b])
    return out


def _expected(family, w, reverse, training):
    """y, hn, cn of the reference backend; saved of the cpu backend's training forward in the layout the
    GPU kernels read (the CPU's GRU and RNN leave out the states, which it adds from y and h0)."""
    sizes = w["sizes"]
    args = (w["x"], w["w_ih"], w["b_ih"], w["b_hh"], w["h0"])
    ops = torch.ops.fastcells
    if family == "lstm":
        y, hn, cn = reference.lstm_layer(*args, w["c0"], w["w_hh"], None, sizes, reverse)
        saved = ops.lstm_layer_fwd(*args, w["c0"], w["w_hh"], None, sizes, reverse, True)[3]
    elif family == "gru":
        (y, hn), cn = reference.gru_layer(*args, w["w_hh"], sizes, reverse), None
        y_cpu, _, saved = ops.gru_layer_fwd(*args, w["w_hh"], sizes, reverse, True)
        saved = torch.cat([saved, _states_before(y_cpu, w["h0"], sizes, reverse)], 1)
    else:
        relu = family == "rnn_relu"
        (y, hn), cn = reference.rnn_layer(*args, w["w_hh"], sizes, relu, reverse), None
        y_cpu = ops.rnn_layer_fwd(*args, w["w_hh"], sizes, relu, reverse, True)[0]
        saved = torch.cat([y_cpu, _states_before(y_cpu, w["h0"], sizes, reverse)], 1)
    return y, hn, cn, saved if training else None


def _model(family, w, reverse, units, training, tables=None, tf32=False, cluster=1, per=1):
    """The model's y, hn, cn, saved from the same layer (the input projection done here, as the kernel's
    caller does: b_hh folded in but for GRU)."""
    gru = family == "gru"
    gx = w["x"] @ w["w_ih"].T + w["b_ih"] + (0 if gru else w["b_hh"])
    numpy = lambda t: None if t is None else t.numpy()  # noqa: E731
    return persistent_model.forward(family, gx.numpy(), w["w_hh"].numpy(), numpy(w["b_hh"]) if gru else None,
                                    w["h0"].numpy(), numpy(w["c0"]), reverse, units, training, tables,
                                    w["sizes"].tolist() if w["packed"] else None, tf32, cluster, per)


def _assert_close(got, expected):
    for name, a, b in zip(("y", "hn", "cn", "saved"), got, expected):
        if b is None:
            assert a is None, name
        else:
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


TF32 = pytest.mark.parametrize("tf32", [False, True], ids=["16bit", "tf32"])  # the kernels' two layouts


@TF32
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"H{h}-B{b}" for h, b in SHAPES])
@pytest.mark.parametrize("family", list(persistent_model.GATES))
def test_model_of_the_kernel_equals_the_reference(family, shape, units, reverse, training, tf32):
    w = _layer(family, *shape)
    _assert_close(_model(family, w, reverse, units, training, tf32=tf32),
                  _expected(family, w, reverse, training))


def _swap_lanes(table, first, second):
    table = table.copy()
    table[[first, second]] = table[[second, first]]
    return table


# Single broken indices of the kind a kernel gets wrong: fragment halves swapped, one row off, the
# warps' k tiles shifted, partial sums stored to the wrong batch column, gates of a unit mixed up.
BROKEN = {
    "a_k": lambda t: _swap_lanes(t["a_k"], 0, 1),
    "a_row": lambda t: (t["a_row"] + 8 * (t["a_row"] < 8)) % 16,
    "b_k": lambda t: t["b_k"][:, ::-1],
    "weight_index": lambda t: np.roll(t["weight_index"], 1, axis=1),
    "k_tile": lambda t: t["k_tile"] + 1,
    "c_n": lambda t: t["c_n"][:, [1, 0, 3, 2]],
    "local_row": lambda t: t["local_row"][::-1],
    "row": lambda t: t["row"][::-1],
}


@TF32
@pytest.mark.parametrize("table", list(BROKEN))
def test_a_broken_index_fails_the_model(table, tf32):
    """The comparison above can fail: one wrong index in the plan makes the model disagree."""
    family, (H, B), units = "lstm", (40, 9), 8
    w = _layer(family, H, B)
    tables = persistent_model.plan(4, units, H, B, STEPS, False, tf32=tf32)
    tables.tables[table] = BROKEN[table](tables.tables)
    expected = _expected(family, w, False, True)
    with pytest.raises((AssertionError, IndexError)):  # wrong values, or an index past the kernel's arrays
        _assert_close(_model(family, w, False, units, True, tables, tf32), expected)


# Packed sequences: ((H, B), the steps' batch sizes): sequences of lengths 4, 4, 3, 2, 2 and one of
# two blocks' worth of batch tiles with a step of the whole batch, a middle plateau and a short tail.
PACKED = [((17, 5), [5, 5, 3, 1]), ((40, 9), [9, 7, 7, 2])]


@TF32
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("case", PACKED, ids=["H17-B5", "H40-B9"])
@pytest.mark.parametrize("family", list(persistent_model.GATES))
def test_model_of_the_kernel_on_packed_sequences(family, case, units, reverse, training, tf32):
    (H, B), sizes = case
    w = _layer(family, H, B, sizes)
    _assert_close(_model(family, w, reverse, units, training, tf32=tf32),
                  _expected(family, w, reverse, training))


# Cluster staging (forward in thread-block clusters): (H, B, units) whose 8 blocks split into clusters of
# 2, 4 and 8: whole blocks, a partial last block (H=60: the 16-bit kernel copies it element by element),
# 16 units a block over two batch tiles.
CLUSTER_SHAPES = [(64, 3, 8), (60, 5, 8), (128, 9, 16)]


def CLUSTER_CASES(test):  # noqa: N802 (a decorator: every cell, shape, direction, cluster and group size)
    for mark in (TF32, pytest.mark.parametrize("chunks", [False, True], ids=["elements", "chunks"]),
                 pytest.mark.parametrize("cluster", [2, 4, 8]),
                 pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"]),
                 pytest.mark.parametrize("shape", CLUSTER_SHAPES, ids=[f"H{h}-B{b}-U{u}" for h, b, u in CLUSTER_SHAPES]),
                 pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])):
        test = mark(test)
    return test


@CLUSTER_CASES
def test_model_of_the_cluster_staging_equals_the_reference(family, shape, reverse, cluster, chunks, tf32):
    """Each rank of a cluster stages the columns its awaited blocks wrote, into every block: together
    they stage every column once, and the model computes what the reference does."""
    H, B, units = shape
    per = (4 if tf32 else 8) if chunks else 1  # a 16-byte chunk's elements
    if H % per:
        pytest.skip("the kernel copies elements where H is not a multiple of the chunk")
    w = _layer(family, H, B)
    _assert_close(_model(family, w, reverse, units, True, tf32=tf32, cluster=cluster, per=per),
                  _expected(family, w, reverse, True))


# Broken staging: a rank staging its neighbour's columns (whose flags it did not wait for), a rank
# waiting for its neighbour's blocks, one column group staged twice.
BROKEN_STAGING = {
    "staged_column": lambda t: np.roll(t, 1, axis=0),
    "staged_block": lambda t: np.roll(t, 1, axis=0),
    "staged_column_twice": lambda t: np.where(t == t[0, 0], t[0, -1], t),
}


@pytest.mark.parametrize("broken", list(BROKEN_STAGING))
def test_a_broken_staging_fails_the_model(broken):
    family, (H, B, units), cluster, per = "lstm", CLUSTER_SHAPES[0], 4, 8
    tables = persistent_model.plan(4, units, H, B, STEPS, False)
    name = f"staged_block_{cluster}" if broken == "staged_block" else f"staged_column_{cluster}_{per}"
    tables.tables[name] = BROKEN_STAGING[broken](tables.tables[name])
    w = _layer(family, H, B)
    with pytest.raises(AssertionError):
        _assert_close(_model(family, w, False, units, True, tables, cluster=cluster, per=per),
                      _expected(family, w, False, True))


def test_register_pairs_hold_neighbours():
    """The kernel loads and packs the two 16-bit elements of a register as neighbours in k (one 32-bit
    load of h, one pair of weights): the plan's element 2i + 1 must be element 2i's right neighbour."""
    p = persistent_model.plan(4, 8, 40, 9, STEPS, False)
    np.testing.assert_array_equal(p.a_k[:, 1::2], p.a_k[:, 0::2] + 1)
    np.testing.assert_array_equal(p.a_row[:, 1::2], p.a_row[:, 0::2])
    np.testing.assert_array_equal(p.b_k[:, 1::2], p.b_k[:, 0::2] + 1)


def test_ptx_fragments_cover_each_tile_element_once():
    """The model's MMA semantics: every element of A and B (m16n8k16: 16 x 16 and 16 x 8; tf32 m16n8k8:
    16 x 8 and 8 x 8) and of C (16 x 8) is held by exactly one (lane, register element)."""
    (a16, b16), (a_tf32, b_tf32) = persistent_model.PTX_AB[False], persistent_model.PTX_AB[True]
    fragments = [((16, 16), a16), ((16, 8), b16), ((16, 8), a_tf32), ((8, 8), b_tf32),
                 ((16, 8), persistent_model.PTX_C)]
    for tile, (rows, cols) in fragments:
        counts = np.zeros(tile, dtype=int)
        np.add.at(counts, (rows, cols), 1)
        assert (counts == 1).all()


def _backward_expected(family, w, reverse, saved, dy, dhn, dcn):
    """The cpu backend's backward op in float64: dh0, dc0 (LSTM) and the gradients of w_ih, b_ih,
    b_hh, w_hh, which the model's dgx and dgh must reproduce. ``saved``: an LSTM's; the GRU and RNN
    run their CPU forward again for the CPU's own saved rows and y."""
    sizes = w["sizes"]
    common = (w["x"], w["w_ih"], w["b_ih"], w["b_hh"], w["w_hh"])
    ops = torch.ops.fastcells
    if family == "lstm":
        _, dh0, dc0, *grads = ops.lstm_layer_bwd(dy, dhn, dcn, saved, *common, None, sizes, reverse, False)
        return dh0, dc0, grads[:4]
    forward = (w["x"], w["w_ih"], w["b_ih"], w["b_hh"], w["h0"], w["w_hh"], sizes)
    flags = (reverse,) if family == "gru" else (family == "rnn_relu", reverse)
    fwd, bwd = ((ops.gru_layer_fwd, ops.gru_layer_bwd) if family == "gru"
                else (ops.rnn_layer_fwd, ops.rnn_layer_bwd))
    y, _, cpu_saved = fwd(*forward, *flags, True)
    _, dh0, *grads = bwd(dy, dhn, cpu_saved, y, w["h0"], *common, sizes, *flags, False)
    return dh0, None, grads


def _grads_from(family, w, saved, dgx, dgh):
    """dw_ih, db_ih, db_hh, dw_hh as the glue computes them after the kernel, from dgx and dgh."""
    H = w["h0"].shape[1]
    h_prev = saved[:, persistent_model._saved_columns(family, H)["h_prev"]:][:, :H]
    recurrent = dgh if family == "gru" else dgx
    return [torch.from_numpy(a) for a in (dgx.T @ w["x"].numpy(), dgx.sum(0), recurrent.sum(0),
                                          recurrent.T @ h_prev)]


def _check_backward(family, shape, units, reverse, tables=None, sizes=None, tf32=False, cluster=1, per=1):
    w = _layer(family, *shape, sizes)
    saved = _expected(family, w, reverse, True)[3]
    g = torch.Generator().manual_seed(1)
    dy, dhn, dcn = (torch.randn(*t.shape, generator=g, dtype=torch.float64)
                    for t in (w["x"][:, :1].expand(-1, shape[0]), w["h0"], w["h0"]))
    dcn = dcn if family == "lstm" else None
    dh0, dc0, grads = _backward_expected(family, w, reverse, saved, dy, dhn, dcn)
    dgx, dgh, got_dh0, got_dc0 = persistent_model.backward(
        family, dy.numpy(), saved.numpy(), w["w_hh"].numpy(), dhn.numpy(),
        None if dcn is None else dcn.numpy(), reverse, units, tables, sizes, tf32, cluster, per)
    np.testing.assert_allclose(got_dh0, dh0.numpy(), rtol=1e-12, atol=1e-12)
    if family == "lstm":
        np.testing.assert_allclose(got_dc0, dc0.numpy(), rtol=1e-12, atol=1e-12)
    got = _grads_from(family, w, saved.numpy(), dgx, dgh)
    for name, a, b in zip(("dw_ih", "db_ih", "db_hh", "dw_hh"), got, grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@TF32
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"H{h}-B{b}" for h, b in SHAPES])
@pytest.mark.parametrize("family", list(persistent_model.GATES))
def test_model_of_the_backward_kernel_equals_the_cpu_backend(family, shape, units, reverse, tf32):
    _check_backward(family, shape, units, reverse, tf32=tf32)


BROKEN_BACKWARD = {
    "weight_index": lambda t: np.roll(t["weight_index"], 1, axis=2),
    "prev_time": lambda t: np.roll(t["prev_time"], 1),
    "b_k": lambda t: t["b_k"][:, ::-1],
    "gate_column": lambda t: t["gate_column"][::-1],
    "local_row": lambda t: t["local_row"][:, ::-1],
}


@TF32
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("units", [8, 16])
@pytest.mark.parametrize("case", PACKED, ids=["H17-B5", "H40-B9"])
@pytest.mark.parametrize("family", list(persistent_model.GATES))
def test_model_of_the_backward_kernel_on_packed_sequences(family, case, units, reverse, tf32):
    (H, B), sizes = case
    _check_backward(family, (H, B), units, reverse, sizes=sizes, tf32=tf32)


@TF32
@pytest.mark.parametrize("table", list(BROKEN_BACKWARD))
def test_a_broken_index_fails_the_backward_model(table, tf32):
    family, (H, B), units = "lstm", (40, 9), 8
    tables = persistent_model.plan(4, units, H, B, STEPS, True, backward=True, tf32=tf32)
    tables.tables[table] = BROKEN_BACKWARD[table](tables.tables)
    with pytest.raises((AssertionError, IndexError)):
        _check_backward(family, (H, B), units, False, tables, tf32=tf32)


@CLUSTER_CASES
def test_model_of_the_backward_cluster_staging_equals_the_cpu_backend(family, shape, reverse, cluster, chunks,
                                                                       tf32):
    """In clusters, the backward stages dG of the step before (gates * H columns a row) the same way."""
    H, B, units = shape
    per = (4 if tf32 else 8) if chunks else 1
    if H % per:
        pytest.skip("the kernel copies elements where H is not a multiple of the chunk")
    _check_backward(family, (H, B), units, reverse, tf32=tf32, cluster=cluster, per=per)


@TF32
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_model_of_the_cluster_staging_on_packed_sequences(family, reverse, tf32):
    """Packed sequences in clusters of 8 (H=64, 8 blocks): rows past a step's batch come from h0 in the
    forward (sequences that start late in the reverse direction) and are zero in the backward."""
    (H, B), sizes = (64, 5), [5, 5, 3, 1]
    w = _layer(family, H, B, sizes)
    _assert_close(_model(family, w, reverse, 8, True, tf32=tf32, cluster=8),
                  _expected(family, w, reverse, True))
    _check_backward(family, (H, B), 8, reverse, sizes=sizes, tf32=tf32, cluster=8)


@pytest.mark.parametrize("broken", list(BROKEN_STAGING))
def test_a_broken_backward_staging_fails_the_model(broken):
    family, (H, B, units), cluster, per = "gru", CLUSTER_SHAPES[0], 4, 8
    tables = persistent_model.plan(3, units, H, B, STEPS, True, backward=True)
    name = f"staged_block_{cluster}" if broken == "staged_block" else f"staged_column_{cluster}_{per}"
    tables.tables[name] = BROKEN_STAGING[broken](tables.tables[name])
    with pytest.raises(AssertionError):
        _check_backward(family, (H, B), units, False, tables, cluster=cluster, per=per)
