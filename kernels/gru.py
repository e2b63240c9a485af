"""The triton backend's GRU layer ops ``torch.ops.fastcells.triton_gru_layer_fwd`` / ``_bwd``: launcher,
custom_op, fake and autograd side by side. Schemas, saved layout and autograd as the compiled ops'
(csrc/ops.cpp, fastcells/saved_layout.py, fastcells/ops.py), state and saved activations in COMPUTE
precision.

The input projection (with b_ih) runs as one torch GEMM before the time loop; the loop runs as one
launch of the persistent kernel (sequence.py) where the layer fits, else per step a torch GEMM for
h @ W_hh^T + b_hh and one fused step kernel (pointwise.py). Shapes as in csrc/ops.cpp.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..backends.layer_ops import input_bias
from ..saved_layout import gru_columns, gru_saved_width
from . import launch, pointwise, sequence, tiled_launch


@torch.library.custom_op("fastcells::triton_gru_layer_fwd", mutates_args=())
def gru_layer_fwd(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                  h0: Tensor, w_hh: Tensor, batch_sizes: Tensor, reverse: bool, training: bool
                  ) -> tuple[Tensor, Tensor, Tensor]:
    H = h0.shape[1]
    compute = launch.compute_dtype(x.dtype)
    gx = F.linear(x, w_ih, input_bias(b_ih, b_hh, adds_b_hh=False)).contiguous()
    h = h0.to(compute, copy=True).contiguous()
    y = gx.new_empty((gx.shape[0], H))
    width = gru_saved_width(H)
    saved = gx.new_empty((gx.shape[0], width) if training else (0,), dtype=compute)
    if launch.persistent(gx.dtype, H, False):
        bias = b_hh if b_hh is not None else w_hh  # any pointer when there is no bias
        launch.run_sequence(sequence.gru_sequence_fwd_kernel, gx, batch_sizes,
                            (w_hh.contiguous(), bias, h, y, saved), h.shape[0], H, (width,),
                            REVERSE=reverse, SAVE=training, HAS_BIAS=b_hh is not None)
        return y, h.to(h0.dtype), saved
    if tiled_launch.tiled_mode() != "off":
        bias = b_hh if b_hh is not None else w_hh  # any pointer when there is no bias
        tiled_launch.run_tiled("gru", gx, batch_sizes, h, (w_hh.contiguous(), bias), (y, saved), width,
                               REVERSE=reverse, SAVE=training, HAS_BIAS=b_hh is not None)
        return y, h.to(h0.dtype), saved
    for row0, rows in launch.steps_with_rows(batch_sizes, reverse):
        gh = F.linear(h[:rows].to(gx.dtype), w_hh, b_hh).contiguous()
        grid, meta = launch.step_meta(rows, H)
        pointwise.gru_step_fwd_kernel[grid](
            gx[row0:], gh, h, y[row0:], saved[row0:] if training else saved, rows, H, width,
            SAVE=training, COMPUTE=launch.tl_compute_dtype(gx.dtype), **meta)
    return y, h.to(h0.dtype), saved


@torch.library.custom_op("fastcells::triton_gru_layer_bwd", mutates_args=())
def gru_layer_bwd(dy: Tensor, dhn: Tensor, saved: Tensor, y: Tensor, h0: Tensor, x: Tensor,
                  w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
                  batch_sizes: Tensor, reverse: bool, need_dx: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # y and h0 go unread: the saved rows keep the states (fastcells/ops.py's reads_output).
    N, H = dy.shape[0], dhn.shape[1]
    columns = gru_columns(H)
    saved = launch.checked_saved(saved, N, columns["width"])
    compute = saved.dtype
    dh = dhn.to(compute, copy=True).contiguous()
    dgx = torch.empty((N, 3 * H), dtype=compute, device=dy.device)
    dgh = torch.empty((N, 3 * H), dtype=compute, device=dy.device)
    dy = dy.contiguous()
    if launch.persistent(dy.dtype, H, False):
        launch.run_sequence(sequence.gru_sequence_bwd_kernel, dy, batch_sizes,
                            (w_hh.contiguous(), saved, dh, dgx, dgh), dh.shape[0], H,
                            (columns["width"],), REVERSE=reverse)
    elif tiled_launch.tiled_mode() != "off":
        tiled_launch.run_tiled_bwd("gru", dy, batch_sizes, (w_hh.contiguous(), saved, dh, dgx, dgh),
                                   dh.shape[0], H, columns["width"], REVERSE=reverse)
    else:
        w = w_hh.to(compute)
        for row0, rows in reversed(launch.steps_with_rows(batch_sizes, reverse)):
            grid, meta = launch.step_meta(rows, H)
            pointwise.gru_step_bwd_kernel[grid](saved[row0:], dy[row0:], dh, dgx[row0:],
                                                dgh[row0:], rows, H, columns["width"], **meta)
            dh[:rows].addmm_(dgh[row0:row0 + rows], w)
    h_prev = columns["h_prev"]
    dw_hh = torch.mm(dgh.t(), saved[:, h_prev:h_prev + H]).to(w_hh.dtype)
    dx, dw_ih, db_ih, db_hh = launch.input_grads(dgx, x, w_ih, b_ih, b_hh, need_dx, dgh_bias=dgh)
    return dx, dh.to(dhn.dtype), dw_ih, db_ih, db_hh, dw_hh


ops.register_layer_op("triton_gru_layer_fwd", "triton_gru_layer_bwd",
                      ops.single_state_fwd_fake(3, gru_saved_width, launch.compute_dtype,
                                                ops.never_reads_output),
                      ops.single_state_bwd_fake(gru_saved_width, ops.never_reads_output),
                      ops.gru_autograd)
