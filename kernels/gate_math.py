"""Gate math of the Triton kernels, on COMPUTE-precision values (float32 or float64)."""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits at both ends (e^{2x} overflowing to inf gives 1, not NaN)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


# One unit of each cell, forward and backward, on COMPUTE-precision values: the single definition of
# the math used by the step kernels (pointwise.py) and the sequence kernels (sequence.py). Gate order is
# torch's; GRU's n = tanh(x_n + r * h_n) with h_n = W_hn h + b_hn.


@triton.jit
def lstm_cell(a_i, a_f, a_g, a_o, c_prev):
    """Pre-activations (input and hidden parts summed) and c_prev -> (i, f, g, o, c, tanh(c), h)."""
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = tanh(a_g)
    o = sigmoid(a_o)
    c = f * c_prev + i * g
    tanh_c = tanh(c)
    return i, f, g, o, c, tanh_c, o * tanh_c


@triton.jit
def lstm_cell_bwd(i, f, g, o, c_prev, tanh_c, dh, dc):
    """Gradients of h and c of a step -> those of the pre-activations i, f, g, o and of c_prev."""
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    return (dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
            dh * tanh_c * o * (1.0 - o), dc * f)


@triton.jit
def gru_cell(x_r, x_z, x_n, h_r, h_z, h_n, h_prev):
    """Input projections (with b_ih), hidden projections (with b_hh) and h_prev -> (r, z, n, h)."""
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = tanh(x_n + r * h_n)
    return r, z, n, (1.0 - z) * n + z * h_prev


@triton.jit
def gru_cell_bwd(r, z, n, h_n, h_prev, dh):
    """Gradient of h -> those of x_r (= h_r), x_z (= h_z), x_n, h_n, and the direct part of h_prev's
    (the part through W_hh is a matrix product)."""
    dn = dh * (1.0 - z) * (1.0 - n * n)
    return dn * h_n * r * (1.0 - r), dh * (h_prev - n) * z * (1.0 - z), dn, dn * r, dh * z


@triton.jit
def rnn_cell(a, RELU: tl.constexpr):
    """Pre-activation -> h = relu(a) (NaN stays NaN, as torch.relu keeps it) or tanh(a)."""
    if RELU:
        h = tl.where(a > 0.0, a, 0.0)
        h = tl.where(a != a, a, h)
    else:
        h = tanh(a)
    return h


@triton.jit
def rnn_cell_bwd(h, dh, RELU: tl.constexpr):
    """Output h and its gradient -> gradient of the pre-activation (zero where relu's h <= 0)."""
    if RELU:
        d = tl.where(h > 0.0, dh, 0.0)
    else:
        d = dh * (1.0 - h * h)
    return d
