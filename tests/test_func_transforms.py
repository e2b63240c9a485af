"""torch.func transforms (jacrev, jvp, vmap) and forward-mode AD (torch.autograd.forward_ad) over
fastcells layers and cells, which torch.nn's run under: fastcells' modules take the reference backend's
torch operations there (modules.py, _backend_for_call), since the fused ops' autograd supports neither.
Results against torch.nn in float64 (vmap, under which torch.nn's fused CPU kernels have no batching
rule, against a loop of torch.nn calls)."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import jacrev, jvp, vmap

from conftest import CELL_KINDS, make_cell_twins, make_layer_twins

DT = torch.float64
LAYERS = ["lstm", "lstm_proj", "gru", "rnn_relu"]


def _first_output(module):
    return lambda x: module(x)[0]


def _twins(family, kind, backend):
    if family == "layer":
        ref, fast = make_layer_twins(kind, 3, 4, 2, bidirectional=True, backend=backend)
        x = torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    else:
        ref, fast = make_cell_twins(kind, 3, 4, backend=backend)
        x = torch.randn(2, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    return ref, fast, x


CASES = [("layer", kind) for kind in LAYERS] + [("cell", kind) for kind in CELL_KINDS]


@pytest.mark.parametrize("family,kind", CASES)
def test_jacrev_and_jvp_match_torch(family, kind, backend):
    ref, fast, x = _twins(family, kind, backend)
    tangent = torch.randn_like(x)
    torch.testing.assert_close(jacrev(_first_output(fast))(x), jacrev(_first_output(ref))(x),
                               atol=1e-12, rtol=1e-10)
    got = jvp(_first_output(fast), (x,), (tangent,))
    expected = jvp(_first_output(ref), (x,), (tangent,))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("family,kind", CASES)
def test_forward_mode_ad_matches_torch(family, kind, grad, backend):
    """Dual tensors, with and without grad mode (no_grad is a cell's streaming step and a layer's direct
    path otherwise, which must not drop the tangents)."""
    ref, fast, x = _twins(family, kind, backend)
    tangent = torch.randn_like(x)
    results = []
    for module in (ref, fast):
        states = module(x)  # a state: what sends an inference call down the fast paths
        states = states[1] if family == "layer" else states
        with torch.set_grad_enabled(grad), fwAD.dual_level():
            out = module(fwAD.make_dual(x, tangent), states)
            out = out[0] if isinstance(out, tuple) else out
            primal, out_tangent = fwAD.unpack_dual(out)
            results.append((primal.clone(), out_tangent.clone()))
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("family,kind", CASES)
def test_vmap_matches_a_loop_of_torch_calls(family, kind, backend):
    ref, fast, x = _twins(family, kind, backend)
    xs = torch.stack([x, 2 * x, -x])
    expected = torch.stack([_first_output(ref)(item) for item in xs])
    torch.testing.assert_close(vmap(_first_output(fast))(xs), expected, atol=1e-12, rtol=1e-10)
