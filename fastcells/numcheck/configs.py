"""What ``python -m fastcells check`` checks: cells, dtypes, configurations and the tolerance rules."""

import dataclasses

import torch


CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
# Checked by default on either device: every dtype, the 16-bit ones against torch.nn's own error in
# that dtype.
DEFAULT_DTYPES = tuple(DTYPES)

WHATS = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The bound on a check's max relative error: ``fixed`` when set, else
    max(``multiple`` x torch.nn's own error in that dtype, ``floor``)."""

    fixed: float | None = None
    multiple: float = 0.0
    floor: float = 0.0

    @property
    def needs_torch_error(self):
        return self.fixed is None

    def bound(self, torch_error=None):
        return self.fixed if self.fixed is not None else max(self.multiple * torch_error, self.floor)


# dtype -> tolerance, on the max relative error (max abs error / max |reference|, per tensor). Why:
#   float64   both sides compute in double precision and differ only in summation order (~1e-15 here),
#             so 1e-9 leaves room for longer reductions and still catches any real bug.
#   float32   float32 unit roundoff is 6e-8; over these short sequences and small reductions honest
#             kernels stay around 1e-6, so 1e-4 has headroom yet catches a wrong gate or a lost term.
#   float16,  no fixed bound is meaningful (a kernel may keep its state and accumulators in float32 or
#   bfloat16  not), so a backend may be at most 4x less accurate than torch.nn in that dtype on the same
#             inputs; the floor, a few units of the dtype's roundoff, keeps a lucky near-exact torch.nn
#             run from setting an unattainable bound (rounding the outputs alone costs eps / 2).
TOLERANCES = {
    torch.float64: Tolerance(fixed=1e-9),
    torch.float32: Tolerance(fixed=1e-4),
    torch.float16: Tolerance(multiple=4.0, floor=4 * torch.finfo(torch.float16).eps),
    torch.bfloat16: Tolerance(multiple=4.0, floor=4 * torch.finfo(torch.bfloat16).eps),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One shape and option combination, named in the table and the junit testcase.

    Layer configs run LSTM/GRU/RNN on x (steps, batch, input_size), or (batch, steps, input_size) when
    ``batch_first``, packed with enforce_sorted=False when ``lengths`` (one per batch entry) is given.
    Cell configs (``cell=True``) run LSTMCell/GRUCell/RNNCell on x (batch, input_size).
    """

    name: str
    cell: bool = False
    input_size: int = 4
    hidden_size: int = 6
    batch: int = 3
    steps: int = 5
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0  # LSTM only: configs with it run for "lstm" alone
    lengths: tuple = ()


# Small on purpose (the whole default CPU run takes seconds), but on both sides of the CPU kernels'
# thresholds: up to 4 state rows take a vectorized mat-vec path, more a packed GEMM (6-row tiles), and
# vectors are 8 floats / 4 doubles wide, so batches 1, 3, 5-7 and hidden sizes 6, 7, 21 all occur.
CONFIGS = (
    Config("1layer"),
    Config("2layer_bi", num_layers=2, bidirectional=True, batch=5),
    Config("batch_first", batch_first=True),
    # unsorted lengths, 6 rows shrinking to 1: crosses the mat-vec / GEMM threshold inside one sequence
    Config("packed", batch=6, steps=6, bidirectional=True, lengths=(4, 6, 1, 3, 5, 2)),
    Config("proj", num_layers=2, bidirectional=True, proj_size=3),
    Config("no_bias", bias=False),
    Config("odd", input_size=5, hidden_size=7, batch=3, steps=4),
    Config("wide", input_size=9, hidden_size=21, batch=7, steps=3),
    Config("T1", steps=1),
    Config("B1", batch=1),
    # cells: without autograd the cpu backend runs a fused step op, with it a layer of length one
    Config("cell", cell=True, input_size=5, hidden_size=7, batch=3),
    Config("cell_B1", cell=True, input_size=5, hidden_size=7, batch=1),
    Config("cell_wide", cell=True, input_size=9, hidden_size=21, batch=7),
    Config("cell_no_bias", cell=True, input_size=5, hidden_size=7, batch=3, bias=False),
)


def configs_for(cell):
    """The configurations run for ``cell`` (proj_size is LSTM's alone)."""
    return [config for config in CONFIGS if not (config.proj_size and cell != "lstm")]
