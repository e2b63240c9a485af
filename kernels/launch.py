"""Launch geometry shared by the kernels: one program covers a BLOCK_R x BLOCK_H tile of (rows, units)."""

import torch
import triton
import triton.language as tl

# Programs cover up to this many (row, unit) pairs: enough work per program on a GPU, and few programs
# in Triton's interpreter (about 3.5 ms each on a CPU), where small test shapes fit in one.
TILE_ELEMENTS = 2048
MAX_BLOCK_H = 128


def compute_dtype(dtype):
    """The precision of gate math and states for tensors of ``dtype``: float64 stays float64, every
    other dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_compute_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def tl_dtype(dtype):
    """The Triton dtype of a torch dtype."""
    return _TL_DTYPES[dtype]


def tile(rows, hidden):
    """(grid, BLOCK_R, BLOCK_H) for ``rows`` x ``hidden`` units."""
    block_h = min(MAX_BLOCK_H, triton.next_power_of_2(max(hidden, 1)))
    block_r = min(triton.next_power_of_2(max(rows, 1)), max(1, TILE_ELEMENTS // block_h))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(hidden, block_h))
    return grid, block_r, block_h
