"""The triton backend's LSTM layer ops ``torch.ops.fastcells.triton_lstm_layer_fwd`` / ``_bwd``: launcher,
custom_op, fake and autograd side by side. Schemas, saved layout and autograd as the compiled ops'
(csrc/ops.cpp, fastcells/saved_layout.py, fastcells/ops.py), saved activations in COMPUTE precision.

The input projection runs as one torch GEMM before the time loop; the loop runs as one launch of the
persistent kernel (sequence.py) where the layer fits, else per step a torch GEMM for h @ W_hh^T and one
fused step kernel (pointwise.py). Shapes as in csrc/ops.cpp.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..backends.layer_ops import input_bias
from ..saved_layout import lstm_columns
from . import launch, pointwise, sequence, tiled_launch


@torch.library.custom_op("fastcells::triton_lstm_layer_fwd", mutates_args=())
def lstm_layer_fwd(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                   h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], batch_sizes: Tensor,
                   reverse: bool, training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    N, H, P = x.shape[0], c0.shape[1], h0.shape[1]
    compute = launch.compute_dtype(x.dtype)
    columns = lstm_columns(H, P, w_hr is not None)
    width = columns["width"]
    gx = F.linear(x, w_ih, input_bias(b_ih, b_hh, adds_b_hh=True)).contiguous()
    h = h0.contiguous().clone()
    c = c0.to(compute, copy=True).contiguous()
    y = gx.new_empty((N, P))
    saved = gx.new_empty((N, width) if training else (0,), dtype=compute)
    if launch.persistent(gx.dtype, H, w_hr is not None):
        launch.run_sequence(sequence.lstm_sequence_fwd_kernel, gx, batch_sizes,
                            (w_hh.contiguous(), h, c, y, saved), h.shape[0], H, (width,),
                            REVERSE=reverse, SAVE=training)
        return y, h, c.to(c0.dtype), saved
    if tiled_launch.tiled_mode() != "off" and w_hr is None:
        h_state = h.to(compute)
        tiled_launch.run_tiled("lstm", gx, batch_sizes, h_state, (w_hh.contiguous(),), (c, y, saved),
                               width, REVERSE=reverse, SAVE=training)
        return y, h_state.to(h0.dtype), c.to(c0.dtype), saved
    h_prev, h_raw = columns["h_prev"], columns["h_raw"]
    h_unprojected = gx.new_empty((h.shape[0], H)) if w_hr is not None else None
    for row0, rows in launch.steps_with_rows(batch_sizes, reverse):
        gh = torch.mm(h[:rows], w_hh.t())
        if training:
            saved[row0:row0 + rows, h_prev:h_prev + P] = h[:rows]
        grid, meta = launch.step_meta(rows, H)
        # Without a projection the kernel writes h straight into the state and the output rows.
        h_dst, y_dst = (h_unprojected, h_unprojected) if w_hr is not None else (h, y[row0:])
        pointwise.lstm_step_fwd_kernel[grid](
            gx[row0:], gh, c, h_dst, y_dst, saved[row0:] if training else saved,
            rows, H, h_dst.stride(0), y_dst.stride(0), width,
            SAVE=training, COMPUTE=launch.tl_compute_dtype(gx.dtype), **meta)
        if w_hr is not None:
            projected = torch.mm(h_unprojected[:rows], w_hr.t())
            y[row0:row0 + rows] = projected
            h[:rows] = projected
            if training:
                saved[row0:row0 + rows, h_raw:] = h_unprojected[:rows]
    return y, h, c.to(c0.dtype), saved


@torch.library.custom_op("fastcells::triton_lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd(dy: Tensor, dhn: Tensor, dcn: Tensor, saved: Tensor, x: Tensor, w_ih: Tensor,
                   b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
                   w_hr: Optional[Tensor], batch_sizes: Tensor, reverse: bool, need_dx: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    N, H, P = dy.shape[0], dcn.shape[1], dhn.shape[1]
    columns = lstm_columns(H, P, w_hr is not None)
    saved = launch.checked_saved(saved, N, columns["width"])
    compute = saved.dtype
    dh = dhn.to(compute, copy=True).contiguous()
    dc = dcn.to(compute, copy=True).contiguous()
    dg = torch.empty((N, 4 * H), dtype=compute, device=dy.device)
    dw_hr = dy.new_empty((0,))
    if launch.persistent(dy.dtype, H, w_hr is not None):
        launch.run_sequence(sequence.lstm_sequence_bwd_kernel, dy.contiguous(), batch_sizes,
                            (w_hh.contiguous(), saved, dh, dc, dg), dh.shape[0], H, (saved.shape[1],),
                            REVERSE=reverse)
    elif tiled_launch.tiled_mode() != "off" and w_hr is None:
        tiled_launch.run_tiled_bwd("lstm", dy.contiguous(), batch_sizes,
                                   (w_hh.contiguous(), saved, dh, dc, dg), dh.shape[0], H,
                                   saved.shape[1], REVERSE=reverse)
    else:
        dy_c = dy.to(compute)
        w = w_hh.to(compute)
        w_r = w_hr.to(compute) if w_hr is not None else None
        dh_rows = torch.empty((N, P), dtype=compute, device=dy.device) if w_hr is not None else None
        for row0, rows in reversed(launch.steps_with_rows(batch_sizes, reverse)):
            dh_step = dh[:rows] + dy_c[row0:row0 + rows]
            if w_r is not None:
                dh_rows[row0:row0 + rows] = dh_step
                dh_step = torch.mm(dh_step, w_r)
            grid, meta = launch.step_meta(rows, H)
            pointwise.lstm_step_bwd_kernel[grid](
                saved[row0:], dh_step, dc, dg[row0:], rows, H, saved.shape[1], **meta)
            torch.mm(dg[row0:row0 + rows], w, out=dh[:rows])
        if w_hr is not None:
            dw_hr = torch.mm(dh_rows.t(), saved[:, columns["h_raw"]:]).to(w_hr.dtype)
    h_prev = columns["h_prev"]
    dw_hh = torch.mm(dg.t(), saved[:, h_prev:h_prev + P]).to(w_hh.dtype)
    dx, dw_ih, db_ih, db_hh = launch.input_grads(dg, x, w_ih, b_ih, b_hh, need_dx)
    return dx, dh.to(dhn.dtype), dc.to(dcn.dtype), dw_ih, db_ih, db_hh, dw_hh, dw_hr


ops.register_layer_op("triton_lstm_layer_fwd", "triton_lstm_layer_bwd",
                      ops.lstm_fwd_fake(launch.compute_dtype), ops.lstm_bwd_fake, ops.lstm_autograd)
