"""Bad input: the exception type torch.nn raises for the same input, a message saying what is wrong, and
nothing passed in modified. Also the compiled ops called directly with bad arguments: RuntimeError
naming the problem, never a crash or a silent out-of-bounds read."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastcells
from fastcells import _extension

from conftest import (CELL_KINDS, LAYER_KINDS, assert_unchanged, make_cell_twins, make_layer_twins,
                      random_cell_states, random_layer_states, snapshot)
from op_args import B, H, layer_bwd_args, layer_fwd_args, step_fwd_args

I, HID, T, BATCH = 3, 5, 4, 2
F32, F64 = torch.float32, torch.float64


def _x(*shape, dtype=F32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _states(kind, shape_h, shape_c=None, dtype=F32, dtype_c=None):
    h = _x(*shape_h, dtype=dtype, seed=1)
    if not kind.startswith("lstm"):
        return h
    return h, _x(*(shape_c or shape_h), dtype=dtype_c or dtype, seed=2)


def _compare_errors(ref, fast, args, must_mention):
    """Calls both modules with ``args``: both must raise the same exception class, ours with every
    substring of ``must_mention`` in its message; no argument nor parameter of ours may change."""
    before = snapshot(fast, *args)
    with pytest.raises(Exception) as torch_error:
        ref(*args)
    with pytest.raises(Exception) as our_error:
        fast(*args)
    assert type(our_error.value) is type(torch_error.value), (
        f"torch.nn raised {type(torch_error.value).__name__}: {torch_error.value}; "
        f"fastcells raised {type(our_error.value).__name__}: {our_error.value}")
    message = str(our_error.value)
    for text in must_mention:
        assert text in message, f"{text!r} not in {message!r}"
    assert_unchanged(before, fast, *args)


def _on_meta(states):
    return tuple(s.to("meta") for s in states) if isinstance(states, tuple) else states.to("meta")


# name -> (kinds it applies to, kind -> args, kind -> substrings the message must hold)
P_OF = {"lstm_proj": 3}


def _out(kind):
    return P_OF.get(kind, HID)


LAYER_CASES = {
    "feature_size": (
        LAYER_KINDS, lambda kind: (_x(T, BATCH, I + 1),),
        lambda kind: ["input_size", f"Expected {I}, got {I + 1}"]),
    "input_1d": (LAYER_KINDS, lambda kind: (_x(T),), lambda kind: ["2D or 3D", "1D"]),
    "input_4d": (LAYER_KINDS, lambda kind: (_x(T, BATCH, I, 1),), lambda kind: ["2D or 3D", "4D"]),
    "input_dtype": (
        LAYER_KINDS, lambda kind: (_x(T, BATCH, I, dtype=F64),),
        lambda kind: ["dtype", "float64", "float32"]),
    "hx_dtype": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH, _out(kind)), (2, BATCH, HID),
                                               dtype=F64, dtype_c=F32)),
        lambda kind: ["dtype", "float64"]),
    "cx_dtype": (
        ["lstm", "lstm_proj"],
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH, _out(kind)), (2, BATCH, HID),
                                               dtype_c=F64)),
        lambda kind: ["dtype", "float64"]),
    "hx_batch": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH + 1, _out(kind)), (2, BATCH + 1, HID))),
        lambda kind: ["Expected hidden", f"(2, {BATCH}, {_out(kind)})", f"[2, {BATCH + 1}, {_out(kind)}]"]),
    "hx_layers": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _states(kind, (3, BATCH, _out(kind)), (3, BATCH, HID))),
        lambda kind: ["Expected hidden", f"(2, {BATCH}, {_out(kind)})", f"[3, {BATCH}, {_out(kind)}]"]),
    "hx_hidden": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH, _out(kind) + 1), (2, BATCH, HID))),
        lambda kind: ["Expected hidden", f"[2, {BATCH}, {_out(kind) + 1}]"]),
    "cx_hidden": (
        ["lstm", "lstm_proj"],
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH, _out(kind)), (2, BATCH, HID + 1))),
        lambda kind: ["Expected hidden[1] size", f"[2, {BATCH}, {HID + 1}]"]),
    "hx_cx_dims": (
        ["lstm", "lstm_proj"],
        lambda kind: (_x(T, BATCH, I), _states(kind, (2, BATCH, _out(kind)), (BATCH, HID))),
        lambda kind: ["3-D", "2-D"]),
    "hx_2d_for_batched": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _states(kind, (BATCH, _out(kind)), (BATCH, HID))),
        lambda kind: ["3-D", "2-D"]),
    "hx_3d_for_unbatched": (
        LAYER_KINDS,
        lambda kind: (_x(T, I), _states(kind, (2, 1, _out(kind)), (2, 1, HID))),
        lambda kind: ["2-D", "3-D"]),
    "input_int": (LAYER_KINDS, lambda kind: (torch.ones(T, BATCH, I, dtype=torch.int32),),
                  lambda kind: ["dtype", "int32", "float32"]),
    "input_complex": (LAYER_KINDS, lambda kind: (_x(T, BATCH, I).to(torch.complex64),),
                      lambda kind: ["dtype", "complex64"]),
    "input_not_tensor": (LAYER_KINDS, lambda kind: ("abc",), lambda kind: ["dim"]),
    "hx_other_device": (
        LAYER_KINDS,
        lambda kind: (_x(T, BATCH, I), _on_meta(_states(kind, (2, BATCH, _out(kind)), (2, BATCH, HID)))),
        lambda kind: ["same device", "meta"]),
    "lstm_hx_not_tuple": (["lstm"], lambda kind: (_x(T, BATCH, I), _x(1, BATCH, HID)),
                          lambda kind: ["tuple"]),
    "unbatched_hx_hidden": (
        LAYER_KINDS,
        lambda kind: (_x(T, I), _states(kind, (2, _out(kind) + 2), (2, HID))),
        lambda kind: ["Expected hidden", f"{_out(kind) + 2}"]),
}

LAYER_PARAMS = [(case, kind) for case, (kinds, _, _) in LAYER_CASES.items() for kind in kinds]


@pytest.mark.parametrize("case,kind", LAYER_PARAMS)
def test_layer_bad_input(case, kind, backend):
    _, make_args, must_mention = LAYER_CASES[case]
    ref, fast = make_layer_twins(kind, I, HID, 2, dtype=F32, backend=backend)
    _compare_errors(ref, fast, make_args(kind), must_mention(kind))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_bad_hx_batch(kind, backend):
    ref, fast = make_layer_twins(kind, I, HID, 1, dtype=F32, backend=backend)
    packed = pack_padded_sequence(_x(T, 3, I), torch.tensor([4, 2, 1]), enforce_sorted=False)
    hx = _states(kind, (1, 2, HID))
    _compare_errors(ref, fast, (packed, hx), ["Expected hidden", "(1, 3, 5)", "[1, 2, 5]"])


def _cell_states(kind, shape, dtype=F32, dtype_c=None, device="cpu"):
    h = _x(*shape, dtype=dtype, seed=1).to(device)
    if kind != "lstm":
        return h
    return h, _x(*shape, dtype=dtype_c or dtype, seed=2).to(device)


CELL_CASES = {
    "feature_size": lambda kind: ((_x(BATCH, I + 1),), ["input_size", f"got {I + 1} expected {I}"]),
    "input_3d": lambda kind: ((_x(1, BATCH, I),), ["1D or 2D", "3D"]),
    "input_dtype": lambda kind: ((_x(BATCH, I, dtype=F64),), ["dtype", "float64"]),
    "hx_dtype": lambda kind: ((_x(BATCH, I), _cell_states(kind, (BATCH, HID), dtype=F64)),
                              ["dtype", "float64"]),
    "batch_mismatch": lambda kind: ((_x(BATCH, I), _cell_states(kind, (BATCH + 1, HID))),
                                    ["batch size", f"{BATCH + 1}"]),
    "hidden_size": lambda kind: ((_x(BATCH, I), _cell_states(kind, (BATCH, HID + 1))),
                                 ["hidden_size", f"got {HID + 1}, expected {HID}"]),
    "hx_3d": lambda kind: ((_x(BATCH, I), _cell_states(kind, (1, BATCH, HID))), ["1D or 2D", "3D"]),
    "unbatched_with_batched_hx": lambda kind: ((_x(I), _cell_states(kind, (BATCH, HID))), ["hidden_size"]),
    "input_int": lambda kind: ((torch.ones(BATCH, I, dtype=torch.int32),), ["input dtype", "int32"]),
    "input_complex": lambda kind: ((_x(BATCH, I).to(torch.complex64),), ["input dtype", "complex64"]),
    "input_not_tensor": lambda kind: (("abc",), ["dim"]),
    "hx_other_device": lambda kind: ((_x(BATCH, I), _cell_states(kind, (BATCH, HID), device="meta")),
                                     ["device", "meta"]),
}


@pytest.mark.parametrize("case", CELL_CASES)
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cell_bad_input(kind, case, backend):
    args, must_mention = CELL_CASES[case](kind)
    ref, fast = make_cell_twins(kind, I, HID, dtype=F32, backend=backend)
    _compare_errors(ref, fast, args, must_mention)
    with torch.no_grad():  # the fused step path checks the same things
        _compare_errors(ref, fast, args, must_mention)


def test_lstm_cell_cx_dtype(backend):
    """torch.nn.LSTMCell promotes a float64 cell state silently (float64 outputs from float32 weights);
    fastcells refuses it with a message naming the state, and modifies nothing."""
    ref, fast = make_cell_twins("lstm", I, HID, dtype=F32, backend=backend)
    args = (_x(BATCH, I), _cell_states("lstm", (BATCH, HID), dtype_c=F64))
    assert ref(*args)[1].dtype == F64  # torch's behaviour, checked so this note stays true
    before = snapshot(fast, *args)
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(RuntimeError) as error:
            fast(*args)
        assert "hidden1" in str(error.value) and "float64" in str(error.value)
    assert_unchanged(before, fast, *args)


# ------------------------------------------------------------------------------------------------
# valid calls modify nothing either


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_layer_valid_call_mutates_nothing(kind, with_hx, backend):
    ref, fast = make_layer_twins(kind, I, HID, 2, bidirectional=True, dtype=F64, backend=backend)
    x = _x(T, BATCH, I, dtype=F64).requires_grad_()
    hx = random_layer_states(ref, BATCH, F64) if with_hx else None
    if hx is not None:
        hx = tuple(h.requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    before = snapshot(fast, x, hx)
    out, state = fast(x) if hx is None else fast(x, hx)
    assert_unchanged(before, fast, x, hx)
    (out.sum() + sum(s.sum() for s in (state if isinstance(state, tuple) else (state,)))).backward()
    assert_unchanged(before, fast, x, hx)
    with torch.inference_mode():
        fast(x) if hx is None else fast(x, hx)
    assert_unchanged(before, fast, x, hx)


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_packed_valid_call_mutates_nothing(kind, backend):
    _, fast = make_layer_twins(kind, I, HID, 2, bidirectional=True, dtype=F64, backend=backend)
    x = _x(T, 3, I, dtype=F64).requires_grad_()
    lengths = torch.tensor([2, 4, 1])
    hx = random_layer_states(fast, 3, F64)
    before = snapshot(fast, x, hx, lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed_before = snapshot(packed.data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
    out, state = fast(packed, hx)
    out.data.sum().backward()
    assert_unchanged(before, fast, x, hx, lengths)
    assert_unchanged(packed_before, packed.data, packed.batch_sizes, packed.sorted_indices,
                     packed.unsorted_indices)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cell_valid_call_mutates_nothing(kind, grad, backend):
    _, fast = make_cell_twins(kind, I, HID, dtype=F64, backend=backend)
    x = _x(BATCH, I, dtype=F64)
    hx = random_cell_states(fast, BATCH, F64)
    before = snapshot(fast, x, hx)
    with torch.set_grad_enabled(grad):
        out = fast(x, hx)
        if grad:
            sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert_unchanged(before, fast, x, hx)
    # The outputs are new tensors, never the states passed in.
    for o in out if isinstance(out, tuple) else (out,):
        for h in hx if isinstance(hx, tuple) else (hx,):
            assert o.data_ptr() != h.data_ptr()


# ------------------------------------------------------------------------------------------------
# the compiled ops called directly

needs_extension = pytest.mark.skipif(_extension.load_error is not None,
                                     reason=f"fastcells._C not loaded: {_extension.load_error}")


def _replace(args, index, value):
    return args[:index] + (value,) + args[index + 1:]


def _fwd(family, **kw):
    op, args = layer_fwd_args(family, F64, reverse=False, training=True)
    return op, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


SIZES = {  # batch_sizes variants for B = 3 and 9 rows (the valid one is [3, 3, 2, 1])
    "increasing": torch.tensor([2, 3, 3, 1]),
    "sum_too_large": torch.tensor([3, 3, 2, 2]),
    "sum_too_small": torch.tensor([3, 3, 2]),
    "above_batch": torch.tensor([4, 3, 1, 1]),
    "negative": torch.tensor([3, 3, 3, 3, -3]),
    "int32": torch.tensor([3, 3, 2, 1], dtype=torch.int32),
    "float": torch.tensor([3.0, 3.0, 2.0, 1.0]),
    "2d": torch.tensor([[3, 3], [2, 1]]),
}
SIZES_MESSAGES = {"increasing": "non-increasing", "sum_too_large": "sum", "sum_too_small": "sum",
                  "above_batch": "batch_sizes[0]", "negative": "batch_sizes[4]", "int32": "int64",
                  "float": "int64", "2d": "1-D"}


# Argument positions of the layer ops (schemas in csrc/ops.cpp).
FWD_INDEX = {"lstm": {"x": 0, "w_ih": 1, "b_ih": 2, "b_hh": 3, "h0": 4, "c0": 5, "w_hh": 6, "w_hr": 7,
                      "batch_sizes": 8},
             "gru": {"x": 0, "w_ih": 1, "b_ih": 2, "b_hh": 3, "h0": 4, "w_hh": 5, "batch_sizes": 6}}
FWD_INDEX["rnn"] = FWD_INDEX["gru"]
BWD_INDEX = {"lstm": {"dy": 0, "dhn": 1, "dcn": 2, "saved": 3, "x": 4, "w_ih": 5, "b_ih": 6, "b_hh": 7,
                      "w_hh": 8, "w_hr": 9, "batch_sizes": 10},
             "gru": {"dy": 0, "dhn": 1, "saved": 2, "y": 3, "h0": 4, "x": 5, "w_ih": 6, "b_ih": 7,
                     "b_hh": 8, "w_hh": 9, "batch_sizes": 10}}
BWD_INDEX["rnn"] = BWD_INDEX["gru"]


def _bad_fwd_cases():
    cases = []
    for family in ("lstm", "lstm_proj", "gru", "gru_no_bias", "rnn_tanh", "rnn_relu"):
        at = FWD_INDEX[family.split("_")[0]]
        g = {"lstm": 20, "gru": 15, "rnn": 5}[family.split("_")[0]]
        for name in SIZES:
            cases.append((family, f"batch_sizes_{name}", at["batch_sizes"], SIZES[name],
                          SIZES_MESSAGES[name]))
        cases.append((family, "x_wrong_columns", at["x"], _x(9, 7, dtype=F64), "w_ih"))
        cases.append((family, "x_3d", at["x"], _x(9, 1, 4, dtype=F64), "x"))
        cases.append((family, "x_int", at["x"], torch.ones(9, 4, dtype=torch.long), "x"))
        cases.append((family, "x_half", at["x"], torch.ones(9, 4, dtype=torch.float16), "x"))
        cases.append((family, "w_ih_rows", at["w_ih"], _x(g + 1, 4, dtype=F64), "w_ih"))
        cases.append((family, "w_ih_float32", at["w_ih"], _x(g, 4), "w_ih"))
        cases.append((family, "b_ih_shape", at["b_ih"], _x(g - 1, dtype=F64), "b_ih"))
        cases.append((family, "b_hh_float32", at["b_hh"], _x(g), "b_hh"))
        cases.append((family, "h0_batch", at["h0"], _x(2, 3 if family == "lstm_proj" else 5, dtype=F64),
                      "h0 must have shape" if family.startswith("lstm") else "batch_sizes[0]"))
        cases.append((family, "h0_width", at["h0"], _x(3, 4, dtype=F64), "must have shape"))
        cases.append((family, "h0_1d", at["h0"], _x(5, dtype=F64), "h0"))
        cases.append((family, "h0_float32", at["h0"], _x(3, 3 if family == "lstm_proj" else 5), "h0"))
    at = FWD_INDEX["lstm"]
    for family in ("lstm", "lstm_proj"):
        p = 3 if family == "lstm_proj" else 5
        cases.append((family, "c0_batch", at["c0"], _x(2, 5, dtype=F64), "must have shape"))
        cases.append((family, "c0_1d", at["c0"], _x(5, dtype=F64), "c0"))
        cases.append((family, "c0_float32", at["c0"], _x(3, 5), "c0"))
        cases.append((family, "w_hh_shape", at["w_hh"], _x(4 * 5, p + 1, dtype=F64), "w_hh"))
        cases.append((family, "w_hh_float32", at["w_hh"], _x(4 * 5, p), "w_hh"))
    cases.append(("lstm_proj", "w_hr_shape", at["w_hr"], _x(3, 4, dtype=F64), "w_hr"))
    cases.append(("lstm_proj", "w_hr_float32", at["w_hr"], _x(3, 5), "w_hr"))
    cases.append(("lstm", "w_hr_unexpected", at["w_hr"], _x(5, 5, dtype=F64) * 0 + 1, ""))
    for family in ("gru", "rnn_tanh"):
        g = 3 if family == "gru" else 1
        at = FWD_INDEX[family.split("_")[0]]
        cases.append((family, "w_hh_shape", at["w_hh"], _x(g * 5, 4, dtype=F64), "w_hh"))
        cases.append((family, "w_hh_float32", at["w_hh"], _x(g * 5, 5), "w_hh"))
    return cases


@needs_extension
@pytest.mark.parametrize("family,name,index,value,mention",
                         [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in _bad_fwd_cases()])
def test_layer_fwd_op_bad_arguments(family, name, index, value, mention):
    op, args = _fwd(family)
    bad = _replace(args, index, value)
    if name == "w_hr_unexpected":  # an LSTM without projection given a (H, H) w_hr: a valid call
        op(*bad)
        return
    before = snapshot(*[a for a in bad if isinstance(a, torch.Tensor)])
    with pytest.raises(RuntimeError) as error:
        op(*bad)
    assert mention in str(error.value)
    assert_unchanged(before, *[a for a in bad if isinstance(a, torch.Tensor)])


def _bad_bwd_cases():
    cases = []
    for family in ("lstm", "lstm_proj", "gru", "gru_no_bias", "rnn_tanh", "rnn_relu"):
        cell = family.split("_")[0]
        at = BWD_INDEX[cell]
        p = 3 if family == "lstm_proj" else 5
        for name in ("increasing", "sum_too_large", "above_batch", "int32"):
            cases.append((family, f"batch_sizes_{name}", at["batch_sizes"], SIZES[name],
                          SIZES_MESSAGES[name]))
        cases.append((family, "saved_from_inference", at["saved"], torch.empty(0, dtype=F64), "saved"))
        cases.append((family, "saved_width", at["saved"], _x(9, 7, dtype=F64), "saved"))
        cases.append((family, "saved_rows", at["saved"], None, "saved"))  # derived in the test
        cases.append((family, "saved_float32", at["saved"], None, "dtype"))
        cases.append((family, "dy_rows", 0, _x(8, p, dtype=F64), "must have shape"))
        cases.append((family, "dy_width", 0, _x(9, p + 1, dtype=F64), "dy"))
        cases.append((family, "dy_int", 0, torch.ones(9, p, dtype=torch.long), "dy"))
        cases.append((family, "dhn_batch", 1, _x(2, p, dtype=F64), "batch_sizes[0]"
                      if cell != "lstm" else "must have shape"))
        cases.append((family, "dhn_float32", 1, _x(3, p), "dtype"))
        cases.append((family, "dhn_1d", 1, _x(p, dtype=F64), "dhn"))
        cases.append((family, "x_rows", at["x"], _x(8, 4, dtype=F64), "x"))
        cases.append((family, "x_float32", at["x"], None, "dtype"))
        cases.append((family, "w_ih_shape", at["w_ih"], _x(7, 4, dtype=F64), "w_ih"))
        cases.append((family, "w_hh_shape", at["w_hh"], _x(7, p, dtype=F64), "w_hh"))
        cases.append((family, "w_hh_float32", at["w_hh"], None, "dtype"))
        if cell != "lstm":  # the states the CPU's GRU and RNN backward read
            cases.append((family, "y_rows", at["y"], _x(8, 5, dtype=F64), "y must have shape"))
            cases.append((family, "y_float32", at["y"], None, "dtype"))
            cases.append((family, "h0_batch", at["h0"], _x(2, 5, dtype=F64), "h0 must have shape"))
            cases.append((family, "h0_float32", at["h0"], None, "dtype"))
    at = BWD_INDEX["lstm"]
    for family in ("lstm", "lstm_proj"):
        cases.append((family, "dcn_batch", 2, _x(2, 5, dtype=F64), "must have shape"))
        cases.append((family, "dcn_1d", 2, _x(5, dtype=F64), "dcn"))
    cases.append(("lstm_proj", "w_hr_shape_small", at["w_hr"], _x(1, 1, dtype=F64), "w_hr"))
    cases.append(("lstm_proj", "w_hr_shape_transposed", at["w_hr"], _x(5, 3, dtype=F64), "w_hr"))
    cases.append(("lstm_proj", "w_hr_float32", at["w_hr"], _x(3, 5), "dtype"))
    cases.append(("lstm_proj", "w_hr_missing", at["w_hr"], "none", "saved"))
    return cases


@needs_extension
@pytest.mark.parametrize("family,name,index,value,mention",
                         [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in _bad_bwd_cases()])
def test_layer_bwd_op_bad_arguments(family, name, index, value, mention):
    op, args = layer_bwd_args(family, F64, reverse=False)
    good = args[index]
    if value is None:  # derived from the valid argument
        value = good[:-1] if name == "saved_rows" else good.float()
    elif isinstance(value, str):
        value = None
    _assert_op_rejects(op, _replace(args, index, value), mention)


def _assert_op_rejects(op, bad_args, mention):
    """The op raises RuntimeError mentioning ``mention`` and leaves every tensor argument unchanged."""
    tensors = [a for a in bad_args if isinstance(a, torch.Tensor)]
    before = snapshot(*tensors)
    with pytest.raises(RuntimeError) as error:
        op(*bad_args)
    assert mention in str(error.value)
    assert_unchanged(before, *tensors)


def _bad_step_cases():
    cases = []
    for family in ("lstm", "gru", "rnn_tanh"):
        g = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[family]
        w_ih_index = 3 if family == "lstm" else 2
        cases += [
            (family, "x_3d", 0, _x(1, B, 4, dtype=F64), "x"),
            (family, "x_1d", 0, _x(4, dtype=F64), "x"),
            (family, "x_int", 0, torch.ones(B, 4, dtype=torch.long), "x"),
            (family, "h_batch", 1, _x(B + 1, H, dtype=F64), "h"),
            (family, "h_1d", 1, _x(H, dtype=F64), "h"),
            (family, "h_float32", 1, _x(B, H), "dtype"),
            (family, "w_ih_shape", w_ih_index, _x(g * H, 5, dtype=F64), "w_ih"),
            (family, "w_ih_float32", w_ih_index, _x(g * H, 4), "dtype"),
            (family, "w_hh_shape", w_ih_index + 1, _x(g * H, H + 1, dtype=F64), "w_hh"),
            (family, "b_ih_shape", w_ih_index + 2, _x(g * H + 1, dtype=F64), "must have shape"),
            (family, "b_hh_float32", w_ih_index + 3, _x(g * H), "dtype"),
        ]
    cases.append(("lstm", "c_shape", 2, _x(B, H + 1, dtype=F64), "c"))
    cases.append(("lstm", "c_float32", 2, _x(B, H), "dtype"))
    return cases


@needs_extension
@pytest.mark.parametrize("family,name,index,value,mention",
                         [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in _bad_step_cases()])
def test_step_op_bad_arguments(family, name, index, value, mention):
    op, args = step_fwd_args(family, F64, bias=True)
    _assert_op_rejects(op, _replace(args, index, value), mention)


@needs_extension
@pytest.mark.parametrize("family", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_ops_accept_empty_and_zero_steps(family):
    """Edge shapes that are valid: no time steps, and steps with no rows (batch_sizes of 0)."""
    op, args = _fwd(family)
    at = FWD_INDEX[family.split("_")[0]]
    sizes_index = at["batch_sizes"]
    empty = _replace(_replace(args, at["x"], args[at["x"]][:0]), sizes_index,
                     torch.zeros(0, dtype=torch.long))
    out = op(*empty)
    assert out[0].shape[0] == 0
    torch.testing.assert_close(out[1], args[at["h0"]], atol=0, rtol=0)  # hn = h0 after no steps
    trailing_zero = _replace(args, sizes_index, torch.tensor([3, 3, 2, 1, 0]))
    with_zero = op(*trailing_zero)
    plain = op(*args)
    for a, b in zip(with_zero[:-1], plain[:-1]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# Errors that must name the offending argument (checks.h: "a RuntimeError that names the argument").
NAMING_CASES = [
    # (op kind, family, argument index, argument name, builder of the bad value from the good one)
    ("bwd", "lstm", 1, "dhn", lambda good: good.float()),
    ("bwd", "lstm", 3, "saved", lambda good: good.float()),
    ("bwd", "gru", 9, "w_hh", lambda good: good.float()),
    ("bwd", "rnn_tanh", 3, "y", lambda good: good.float()),
    ("bwd", "gru", 4, "h0", lambda good: good[:-1]),
    ("bwd", "lstm", 5, "w_ih", lambda good: good.float()),
    ("bwd", "rnn_tanh", 1, "dhn", lambda good: good.float()),
    ("step", "lstm", 2, "c", lambda good: good.float()),
    ("step", "gru", 2, "w_ih", lambda good: good.float()),
    ("step", "lstm", 5, "b_ih", lambda good: torch.cat([good, good[:1]])),
    ("step", "rnn_tanh", 5, "b_hh", lambda good: good.float()),
]


@needs_extension
@pytest.mark.parametrize("kind,family,index,name,make_bad", NAMING_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in NAMING_CASES])
def test_op_errors_name_the_argument(kind, family, index, name, make_bad):
    if kind == "bwd":
        op, args = layer_bwd_args(family, F64, reverse=False)
    else:
        op, args = step_fwd_args(family, F64, bias=True)
    with pytest.raises(RuntimeError) as error:
        op(*_replace(args, index, make_bad(args[index])))
    message = str(error.value)
    first = message.split()[0]
    assert name in (first, first.removesuffix("_in")), f"the message does not name {name}: {message}"


def _op_families():
    """The layer-op families callable here: the compiled ops, and the triton ones under the interpreter
    (the value of layer_fwd_args' ``triton``)."""
    families = [] if _extension.load_error is not None else [False]
    return families + ([True] if "triton" in fastcells.available_backends("cpu") else [])


@pytest.mark.parametrize("triton", _op_families(), ids=lambda t: "triton" if t else "compiled")
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_backward_of_an_inference_call_raises(family, triton):
    """A layer op called with training=False keeps no activations: backward through it is a clear
    RuntimeError raised before any backward op sees the empty saved tensor."""
    op, args = layer_fwd_args(family, F64, reverse=False, training=True, triton=triton)
    args = args[:-1] + (False,)
    outputs = op(*args)
    with pytest.raises(RuntimeError, match="training=False and saved nothing for backward"):
        outputs[0].sum().backward()


@pytest.mark.skipif("triton" not in fastcells.available_backends("cpu"),
                    reason="the triton ops run on CPU tensors only under TRITON_INTERPRET=1")
@pytest.mark.parametrize("family", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_triton_bwd_op_rejects_a_wrong_saved(family):
    """The triton backward kernels index ``saved`` without bounds: a wrong shape raises first."""
    op, args = layer_bwd_args(family, F64, reverse=False, triton=True)
    index = BWD_INDEX[family.split("_")[0]]["saved"]
    for bad in (torch.empty(0, dtype=F64), args[index][:, :-1], args[index][:-1]):
        with pytest.raises(RuntimeError, match="saved must have shape"):
            op(*_replace(args, index, bad))
