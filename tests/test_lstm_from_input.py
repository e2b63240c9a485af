"""fastcells::lstm_layer_from_input_fwd: lstm_layer_fwd with the input projection gx = x @ w_ih^T + bias
done inside the op (the cpu backend's LSTM layers call it). It must equal F.linear then lstm_layer_fwd,
on both of its paths: one GEMM over all rows first (one row group), or each thread projecting its own
rows step by step (several row groups: csrc/cpu/row_groups.h)."""

import pytest
import torch
import torch.nn.functional as F

from fastcells import _extension

pytestmark = pytest.mark.skipif(_extension.load_error is not None,
                                reason=f"fastcells._C not loaded: {_extension.load_error}")

ops = torch.ops.fastcells
I, H, P = 4, 5, 3

# name -> (batch_sizes, threads): one row group (3 rows), or 2 and 3 groups (13 rows, small weights).
SCHEDULES = {
    "one_group": ([3, 3, 2, 1], 1),
    "two_groups_packed": ([13, 12, 9, 9, 4, 1], 2),
    "three_groups_padded": ([13] * 5, 3),
}


@pytest.fixture
def with_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _args(sizes, dtype, proj, bias, reverse, training, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=dtype) * scale).requires_grad_(training)

    p = P if proj else H
    batch, rows = sizes[0], sum(sizes)
    return dict(x=randn(rows, I), w_ih=randn(4 * H, I, scale=0.5),
                bias=randn(4 * H) if bias else None, h0=randn(batch, p), c0=randn(batch, H),
                w_hh=randn(4 * H, p, scale=0.5), w_hr=randn(p, H) if proj else None,
                batch_sizes=torch.tensor(sizes), reverse=reverse, training=training)


def _call(a):
    return ops.lstm_layer_from_input_fwd(a["x"], a["w_ih"], a["bias"], a["h0"], a["c0"], a["w_hh"],
                                         a["w_hr"], a["batch_sizes"], a["reverse"], a["training"])


def _reference(a):
    gx = F.linear(a["x"], a["w_ih"], a["bias"])
    return ops.lstm_layer_fwd(gx, a["h0"], a["c0"], a["w_hh"], a["w_hr"], a["batch_sizes"],
                              a["reverse"], a["training"])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj,bias", [(False, True), (True, True), (False, False)],
                         ids=["plain", "proj", "no_bias"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_equals_linear_then_layer_op(schedule, proj, bias, reverse, with_threads):
    sizes, threads = SCHEDULES[schedule]
    with_threads(threads)
    a = _args(sizes, torch.float64, proj, bias, reverse, training=True)
    got, expected = _call(a), _reference(a)
    for name, g, e in zip(("y", "hn", "cn", "saved"), got, expected):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")
    leaves = [t for t in a.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    upstream = [torch.randn(t.shape, generator=torch.Generator().manual_seed(9), dtype=t.dtype)
                for t in got[:3]]
    grads = [torch.autograd.grad(list(out[:3]), leaves, upstream) for out in (got, expected)]
    for g, e in zip(*grads):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradcheck(schedule, with_threads):
    sizes, threads = SCHEDULES[schedule]
    with_threads(threads)
    a = _args(sizes, torch.float64, True, True, False, training=True)
    names = ["x", "w_ih", "bias", "h0", "c0", "w_hh", "w_hr"]

    def f(*tensors):
        return _call({**a, **dict(zip(names, tensors))})[:3]

    assert torch.autograd.gradcheck(f, tuple(a[n] for n in names))


@pytest.mark.parametrize("schedule", ["one_group", "two_groups_packed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_opcheck(schedule, dtype, training, with_threads):
    sizes, threads = SCHEDULES[schedule]
    with_threads(threads)
    a = _args(sizes, dtype, False, True, False, training)
    torch.library.opcheck(ops.lstm_layer_from_input_fwd, tuple(a.values()))


# name -> (argument, bad value maker, text the RuntimeError must contain)
BAD = {
    "x_3d": ("x", lambda a: a["x"].unsqueeze(0), "x must be 2-D"),
    "w_ih_columns": ("w_ih", lambda a: a["w_ih"][:, :-1], "w_ih must have shape"),
    "w_ih_rows": ("w_ih", lambda a: a["w_ih"][:-1], "w_ih must have shape"),
    "w_ih_dtype": ("w_ih", lambda a: a["w_ih"].float(), "w_ih must have dtype"),
    "bias_size": ("bias", lambda a: a["bias"][:-1], "bias must have shape"),
    "bias_dtype": ("bias", lambda a: a["bias"].float(), "bias must have dtype"),
    "h0_dtype": ("h0", lambda a: a["h0"].float(), "h0 must have dtype"),
    "w_hh_shape": ("w_hh", lambda a: a["w_hh"][:-1], "w_hh must have shape"),
    "x_half": ("x", None, "float32 or float64"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments(case):
    name, make_bad, mention = BAD[case]
    a = _args([3, 2], torch.float64, False, True, False, training=False)
    if make_bad is None:  # every tensor in a dtype the cpu backend does not compute in
        a = {k: (v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
             for k, v in a.items()}
    else:
        a[name] = make_bad(a)
    before = {k: v.clone() for k, v in a.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(RuntimeError, match=mention):
        _call(a)
    for k, v in before.items():
        assert torch.equal(a[k], v), f"{k} was modified"
