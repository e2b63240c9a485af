"""The Python mirror of csrc/include/fastcells/saved_layout.h: what a layer op's training forward saves,
per sequence row, for its backward (column offsets in elements, for H hidden units and P = proj_size
or H). The fakes and the Triton ops read the widths here; tests/test_saved_layout.py checks every
number against the C++ header through fastcells._C.saved_layouts.

    LSTM  [gates i f g o (4H) | c_prev (H) | tanh(c) (H) | h_prev (P) | h before projection (H, proj)]
    GRU   [r z n (3H) | h_n = W_hn h_prev + b_hn (H) | h_prev (H)]
    RNN   [h (H) | h_prev (H)]

The CPU's GRU and RNN ops read h and h_prev from the layer's output y and h0 instead (``reads_output``):
    GRU   [r z n (3H) | h_n (H)]
    RNN   nothing
"""


def lstm_columns(H, P, has_proj):
    """{block name: first column} of an LSTM saved row, and its "width"."""
    return {"c_prev": 4 * H, "tanh_c": 5 * H, "h_prev": 6 * H, "h_raw": 6 * H + P,
            "width": 6 * H + P + (H if has_proj else 0)}


def gru_columns(H, reads_output=False):
    if reads_output:
        return {"h_n": 3 * H, "width": 4 * H}
    return {"h_n": 3 * H, "h_prev": 4 * H, "width": 5 * H}


def rnn_columns(H, reads_output=False):
    if reads_output:
        return {"width": 0}
    return {"h": 0, "h_prev": H, "width": 2 * H}


def lstm_saved_width(H, P, has_proj):
    return lstm_columns(H, P, has_proj)["width"]


def gru_saved_width(H, reads_output=False):
    return gru_columns(H, reads_output)["width"]


def rnn_saved_width(H, reads_output=False):
    return rnn_columns(H, reads_output)["width"]
