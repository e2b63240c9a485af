"""Triton kernels of fastcells, installed as the subpackage ``fastcells.kernels``.

Dimension legend used in every file: B batch (rows of the state buffers), R rows of the current time
step (R <= B, the batch shrinks in packed sequences), H hidden units, G gate columns (4H LSTM, 3H GRU,
H RNN). Gate math is computed in COMPUTE precision (float32, or float64 for float64 tensors) whatever
the storage dtype; states and saved activations are kept in COMPUTE precision too.

lstm.py, gru.py, rnn.py
              the triton backend's layer ops of each cell family (torch.ops.fastcells.triton_*):
              launcher, custom_op, fake and autograd side by side
pointwise.py  the fused step kernels (forward and backward) of LSTM, GRU and RNN: bias-free
              pre-activations in, gates, state update and what backward needs out
gate_math.py  sigmoid and tanh written with exp (Triton has no tl.tanh on every version)
sequence.py   the persistent whole-sequence kernels (W_hh on chip, the time loop inside)
launch.py     block sizes, grids and the COMPUTE dtype of a launch, and what the layer ops share

Set TRITON_INTERPRET=1 before importing this package to run the kernels on CPU tensors through
Triton's interpreter (that is how the CPU test suite runs them).
"""
