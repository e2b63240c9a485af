"""The triton backend's unit-tiled kernels (kernels/tiled.py forward, tiled_bwd.py backward): one step
body per cell and direction, run by a per-step launcher and by a persistent one (issue 15).

Under Triton's interpreter programs run one after another, so a program that waits for another can
never finish: the step body is tested through the per-step launcher at sizes with several unit blocks
and batch tiles, and the persistent launcher where each batch tile has one program (H <= BLOCK_U), which
waits for itself, through its flags and its loop. Everything against torch.nn in float64 (and float32),
forward and backward, at odd sizes, packed and bidirectional. On a GPU the same tests run the real kernels.
"""

import pytest
import torch

import fastcells
from conftest import (assert_packed_unsorted_matches_torch, assert_same_results, float64_results,
                      forward_backward, make_layer_twins, random_layer_states)

if "triton" not in fastcells.available_backends("cuda" if torch.cuda.is_available() else "cpu"):
    pytest.skip("the triton backend is not usable here", allow_module_level=True)

from fastcells.kernels import launch, tiled, tiled_launch  # noqa: E402
import triton.language as tl  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture(params=["per-step", "persistent"])
def tiled_mode(request, monkeypatch):
    """Every layer without projection runs the tiled kernels (none counts as small enough for the
    single-program sequence kernels)."""
    monkeypatch.setattr(launch, "MAX_HIDDEN", {})
    tiled_launch.use_tiled(request.param)
    request.addfinalizer(lambda: tiled_launch.use_tiled("off"))
    return request.param


def _launches(monkeypatch):
    """Counts the launches of each tiled kernel: {kernel name: launches}."""
    counts = {}
    for step_kernel, sequence_kernel in tiled_launch.KERNELS.values():
        for kernel in (step_kernel, sequence_kernel):
            original = kernel.run

            def run(*args, _original=original, _name=kernel.fn.__name__, **kwargs):
                if not kwargs.get("warmup"):  # resident() compiles without launching on a GPU
                    counts[_name] = counts.get(_name, 0) + 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(kernel, "run", run)
    return counts


# (hidden, batch): several unit blocks (BLOCK_U = 16) with a partial one, and two batch tiles; then
# one unit block per batch tile, where the interpreter can run the persistent kernel too.
SHAPES = [(37, 3), (20, 18), (9, 20)]


@pytest.mark.parametrize("hidden,batch", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_layers_match_torch(kind, dtype, hidden, batch, tiled_mode, monkeypatch):
    counts = _launches(monkeypatch)
    ref, fast = make_layer_twins(kind, 5, hidden, 2, bidirectional=True, dtype=dtype,
                                 backend="triton", device=DEVICE)
    x = torch.randn(4, batch, 5, dtype=dtype, device=DEVICE)
    hx = random_layer_states(ref, batch, dtype)
    hx = tuple(h.to(DEVICE) for h in hx) if isinstance(hx, tuple) else hx.to(DEVICE)
    assert_same_results(forward_backward(fast, x, hx), float64_results(ref, x, hx), dtype)
    family = kind.split("_")[0]
    persistent = tiled_mode == "persistent" and (DEVICE == "cuda" or hidden <= tiled_launch.TILED_BLOCK_U)
    for direction, step_launches in (("", 4), ("bwd_", 5)):  # T = 4 steps; backward: one launch more
        persistent_ran = counts.get(f"{family}_tiled_{direction}sequence_kernel", 0)
        if persistent:
            assert persistent_ran == 4  # 2 layers x 2 directions, one launch each
        else:
            assert persistent_ran == 0
            assert counts[f"{family}_tiled_{direction}step_kernel"] == 4 * step_launches


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("lengths", [(4, 1, 3), (2, 2, 2, 1, 5)])
def test_packed_unsorted(kind, lengths, tiled_mode):
    assert_packed_unsorted_matches_torch(kind, lengths, "triton", DEVICE)


def test_modes_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        tiled_launch.use_tiled("sometimes")
    assert tiled_launch.tiled_mode() == "off"  # the default until a GPU measured them


def test_resident_under_the_interpreter_only_without_waits_on_others():
    if DEVICE == "cuda":
        pytest.skip("a GPU answers from the compiled kernel's resources")
    grid, _ = tiled_launch.tiled_meta(torch.float32, 40, 16)
    assert grid == (1, 3) and tiled_launch.resident(None, grid, (), {}, DEVICE)
    grid, _ = tiled_launch.tiled_meta(torch.float32, 3, 17)
    assert grid == (2, 1) and not tiled_launch.resident(None, grid, (), {}, DEVICE)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # it computes on what nobody wrote
def test_persistent_gives_up_instead_of_hanging(monkeypatch):
    """A grid whose programs are not all resident (here: the interpreter, which runs them one after
    another, told otherwise) must end with an error, not wait forever."""
    if DEVICE == "cuda":
        pytest.skip("needs the interpreter's one-program-at-a-time order")
    monkeypatch.setattr(launch, "MAX_HIDDEN", {})
    monkeypatch.setattr(tiled_launch, "resident", lambda *args: True)
    monkeypatch.setattr(tiled, "MAX_POLLS", tl.constexpr(3))
    tiled_launch.use_tiled("persistent")
    try:
        _, fast = make_layer_twins("rnn_tanh", 3, 20, 1, dtype=torch.float32, backend="triton",
                                   device=DEVICE)  # two unit blocks
        with pytest.raises(RuntimeError, match="gave up waiting"):
            fast(torch.randn(2, 2, 3))
    finally:
        tiled_launch.use_tiled("off")
