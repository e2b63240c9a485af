"""Stacked, bidirectional, packed recurrent layers over any backend: written once for all of them.

Every sequence is handled in one flattened layout: rows ``(N, features)`` plus ``batch_sizes (T)``, the
number of rows each time step owns. Padded input ``(T, B, I)`` is the case ``batch_sizes = [B] * T``
(a free reshape); a PackedSequence's data and batch_sizes are that layout already. So backends implement
one layer function per cell type and packed sequences run as one pass with a shrinking batch.
"""

import torch
import torch.nn.functional as F

# Parameters per layer and direction in torch's order (RNNBase._flat_weights), by (bias, proj).
def _layer_weights(flat_weights, index, bias, proj):
    per_layer = 2 + (2 if bias else 0) + (1 if proj else 0)
    w = flat_weights[index * per_layer : (index + 1) * per_layer]
    w_ih, w_hh = w[0], w[1]
    b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
    w_hr = w[-1] if proj else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _run_direction(backend, mode, x, h0, c0, weights, batch_sizes, reverse):
    """One layer, one direction. x (N, I), h0 (B, P), c0 (B, H) or None -> y (N, P), hn, cn or None.
    The backend's layer op takes the input and all the weights: where the input projection runs is
    its choice."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if mode == "LSTM":
        return backend.lstm_layer(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_hr, batch_sizes, reverse)
    if mode == "GRU":
        y, hn = backend.gru_layer(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, reverse)
    else:
        y, hn = backend.rnn_layer(x, w_ih, b_ih, b_hh, h0, w_hh, batch_sizes, mode == "RNN_RELU",
                                  reverse)
    return y, hn, None


def rnn(backend, mode, x, batch_sizes, hx, cx, flat_weights, *, num_layers, bidirectional, bias,
        proj, dropout, training):
    """Runs a stacked recurrent network over the flattened sequence.

    backend: a backend's functions (backends.resolve); mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
    x: (N, I) rows; batch_sizes: (T) int64 CPU, non-increasing, summing to N.
    hx: (L * D, B, P) initial hidden states; cx: (L * D, B, H) initial cell states (LSTM) or None.
    Returns y (N, D * P) from the last layer, hn (L * D, B, P) and cn (L * D, B, H) or None, with
    directions and layers in torch's order (index layer * D + direction).
    """
    directions = 2 if bidirectional else 1
    h_finals, c_finals = [], []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = _layer_weights(flat_weights, index, bias, proj)
            c0 = cx[index] if cx is not None else None
            y, hn, cn = _run_direction(backend, mode, layer_input, hx[index], c0, weights,
                                       batch_sizes, reverse=direction == 1)
            outputs.append(y)
            h_finals.append(hn)
            c_finals.append(cn)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    hn = torch.stack(h_finals)
    cn = torch.stack(c_finals) if cx is not None else None
    return layer_input, hn, cn


_TORCH_RNN = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh,
              "RNN_RELU": torch._VF.rnn_relu}


def torch_rnn(mode, x, batch_sizes, hx, cx, flat_weights, *, padded, num_layers, bidirectional, bias,
              dropout, training):
    """torch.nn's own implementation (cuDNN on CUDA) over the same flattened sequence, arguments as
    ``rnn``: called as torch.nn calls it, padded (T, B, I) where ``padded`` (every step has the whole
    batch of a padded input), else packed. Returns y (N, D * P), hn, cn or None."""
    hidden = (hx, cx) if mode == "LSTM" else hx
    if padded:
        steps = batch_sizes.numel()
        out = _TORCH_RNN[mode](x.view(steps, x.size(0) // steps, x.size(1)), hidden, flat_weights, bias,
                               num_layers, dropout, training, bidirectional, False)
        y = out[0].reshape(x.size(0), -1)
    else:
        out = _TORCH_RNN[mode](x, batch_sizes, hidden, flat_weights, bias, num_layers, dropout, training,
                               bidirectional)
        y = out[0]
    return y, out[1], (out[2] if mode == "LSTM" else None)
