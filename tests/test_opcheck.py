"""torch.library.opcheck on every fastcells op: schema, autograd registration, fake (meta) implementation
and AOT dispatch, with realistic arguments (see csrc/ops.cpp and the saved widths in fastcells/ops.py)."""

import pytest
import torch

from fastcells import _extension, backends

pytestmark = pytest.mark.skipif(_extension.load_error is not None,
                                reason=f"fastcells._C not loaded: {_extension.load_error}")

from op_args import FAMILIES, H, N, P, layer_bwd_args, layer_fwd_args, step_fwd_args

ops = torch.ops.fastcells

DTYPES = [torch.float64, torch.float32]


FWD_CASES = [  # (family, dtype, training, reverse, padded): every combination packed, plus padded
    (family, dtype, training, reverse, False)
    for family in FAMILIES for dtype in DTYPES for training in (True, False) for reverse in (False, True)
] + [(family, torch.float64, training, False, True) for family in FAMILIES for training in (True, False)]


def _fwd_id(case):
    family, dtype, training, reverse, padded = case
    return "-".join([family, str(dtype).replace("torch.", ""), "training" if training else "inference",
                     "reverse" if reverse else "forward", "padded" if padded else "packed"])


@pytest.mark.parametrize("family,dtype,training,reverse,padded",
                         [pytest.param(*case, id=_fwd_id(case)) for case in FWD_CASES])
def test_layer_fwd(family, dtype, training, reverse, padded):
    op, args = layer_fwd_args(family, dtype, reverse, training, padded)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_bwd(family, dtype, reverse):
    op, args = layer_bwd_args(family, dtype, reverse)
    torch.library.opcheck(op, args)


# Either bias alone (torch.nn's modules pass both or none, but the ops take any), and dx not asked for.
@pytest.mark.parametrize("bias", ["ih", "hh"])
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_layer_one_bias(family, bias):
    op, args = layer_fwd_args(family, torch.float64, False, True, bias=bias)
    torch.library.opcheck(op, args)
    op, args = layer_bwd_args(family, torch.float64, False, need_dx=False, bias=bias)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_step_fwd(family, dtype, bias):
    op, args = step_fwd_args(family, dtype, bias)
    torch.library.opcheck(op, args)


TRITON = backends.unusable_reason("triton", "cpu")
needs_triton = pytest.mark.skipif(TRITON is not None, reason=f"triton backend: {TRITON}")


# The triton backend's layer ops (same schemas): float64 and packed only, since its kernels run
# through Triton's interpreter here.
@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_triton_layer_fwd(family, training, reverse):
    op, args = layer_fwd_args(family, torch.float64, reverse, training, triton=True)
    torch.library.opcheck(op, args)


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("family", FAMILIES)
def test_triton_layer_bwd(family, reverse):
    op, args = layer_bwd_args(family, torch.float64, reverse, triton=True)
    torch.library.opcheck(op, args)


def _op_name(op):
    return op._qualified_op_name.split("::", 1)[1]


def test_every_op_is_covered():
    """A new op added to the library must get an opcheck here too: the ops the tests above check,
    read from the same argument builders they use, are every op the dispatcher knows in our
    namespace (the triton ones where Triton's interpreter runs them)."""
    checked = {_op_name(layer_fwd_args(family, torch.float64, False, True)[0]) for family in FAMILIES}
    checked |= {_op_name(layer_bwd_args(family, torch.float64, False)[0]) for family in FAMILIES}
    checked |= {_op_name(step_fwd_args(family, torch.float64, True)[0])
                for family in ("lstm", "gru", "rnn_tanh")}
    if TRITON is None:
        checked |= {_op_name(layer_fwd_args(family, torch.float64, False, True, triton=True)[0])
                    for family in FAMILIES}
        checked |= {_op_name(layer_bwd_args(family, torch.float64, False, triton=True)[0])
                    for family in FAMILIES}
    # dir(torch.ops.fastcells) lists only the ops looked up so far: ask the dispatcher
    registered = {name.split("::", 1)[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fastcells::")}
    assert registered == checked, f"ops without an opcheck: {sorted(registered - checked)}"


def test_saved_widths_match_fake():
    """The fake implementation's saved width (fastcells/ops.py) equals the real op's, per family."""
    from fastcells import saved_layout

    for family in FAMILIES:
        op, args = layer_fwd_args(family, torch.float64, False, True)
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        saved = op(*detached)[-1]
        if family.startswith("lstm"):
            p = P if family == "lstm_proj" else H
            width = saved_layout.lstm_saved_width(H, p, family == "lstm_proj")
        elif family.startswith("gru"):  # the CPU ops read the states from y and h0
            width = saved_layout.gru_saved_width(H, reads_output=True)
        else:
            width = saved_layout.rnn_saved_width(H, reads_output=True)
        assert saved.shape == (N, width), family
        inference = op(*detached[:-1], False)[-1]
        assert inference.numel() == 0, family

