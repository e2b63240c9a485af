"""The Python mirror of the saved-activation layouts (fastcells/saved_layout.py) against the C++ header
(csrc/include/fastcells/saved_layout.h, read through fastcells._C.saved_layouts), and against what the
CPU ops really save: LSTM's h_prev columns hold the previous step's hidden state, the GRU's h_n columns
W_hn h_prev, and the RNN nothing (the CPU's GRU and RNN read the states from their output and h0)."""

import pytest
import torch

from fastcells import _extension, saved_layout

pytestmark = pytest.mark.skipif(_extension.load_error is not None,
                                reason=f"fastcells._C not loaded: {_extension.load_error}")


@pytest.mark.parametrize("H,P", [(1, 1), (5, 3), (7, 7), (64, 17)])
def test_mirror_matches_the_header(H, P):
    cpp = _extension.C.saved_layouts(H, P)
    assert cpp["lstm"].pop("width_no_proj") == saved_layout.lstm_saved_width(H, H, False)
    assert cpp["lstm"] == saved_layout.lstm_columns(H, P, True)
    assert cpp["gru"] == saved_layout.gru_columns(H)
    assert cpp["rnn"] == saved_layout.rnn_columns(H)
    assert cpp["gru_cpu"] == saved_layout.gru_columns(H, reads_output=True)
    assert cpp["rnn_cpu"] == saved_layout.rnn_columns(H, reads_output=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_saved_blocks_hold_what_they_name(cell):
    """One step with a known h0: LSTM's saved h_prev block is h0; the CPU GRU's h_n block is W_hn h0
    (it has no h_prev block: its backward reads h0 itself), and the CPU RNN saves nothing (a layout
    off by a block would not pass)."""
    torch.manual_seed(0)
    H, I, B = 5, 4, 3
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    x, h0 = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w_ih = torch.randn(gates * H, I, dtype=torch.float64)
    w_hh = torch.randn(gates * H, H, dtype=torch.float64)
    sizes = torch.tensor([B])
    ops = torch.ops.fastcells
    if cell == "lstm":
        saved = ops.lstm_layer_fwd(x, w_ih, None, None, h0, torch.zeros(B, H, dtype=torch.float64),
                                   w_hh, None, sizes, False, True)[3]
        columns = saved_layout.lstm_columns(H, H, False)
        block, expected = columns["h_prev"], h0
    elif cell == "gru":
        saved = ops.gru_layer_fwd(x, w_ih, None, None, h0, w_hh, sizes, False, True)[2]
        columns = saved_layout.gru_columns(H, reads_output=True)
        block, expected = columns["h_n"], h0 @ w_hh[2 * H:].t()
    else:
        saved = ops.rnn_layer_fwd(x, w_ih, None, None, h0, w_hh, sizes, False, False, True)[2]
        assert saved.shape == (B, saved_layout.rnn_saved_width(H, reads_output=True)) == (B, 0)
        return
    assert saved.shape == (B, columns["width"])
    torch.testing.assert_close(saved[:, block:block + H], expected)
