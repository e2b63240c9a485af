// CPU implementations of the fastcells ops (schemas in ../ops.cpp). Shapes in the .cpp files.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastcells::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cpu(
    const at::Tensor& gx, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, const at::Tensor& batch_sizes, bool reverse,
    bool training);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_from_input_fwd_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& bias,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, const at::Tensor& batch_sizes, bool reverse,
    bool training);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dhn, const at::Tensor& dcn, const at::Tensor& saved,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& batch_sizes,
    bool reverse);
std::tuple<at::Tensor, at::Tensor> lstm_step_fwd_cpu(const at::Tensor& x, const at::Tensor& h,
                                                     const at::Tensor& c, const at::Tensor& w_ih,
                                                     const at::Tensor& w_hh,
                                                     const c10::optional<at::Tensor>& b_ih,
                                                     const c10::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd_cpu(
    const at::Tensor& gx, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& batch_sizes, bool reverse,
    bool training);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dhn, const at::Tensor& saved, const at::Tensor& w_hh,
    const at::Tensor& batch_sizes, bool reverse, bool has_bias);
at::Tensor gru_step_fwd_cpu(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_fwd_cpu(
    const at::Tensor& gx, const at::Tensor& h0, const at::Tensor& w_hh,
    const at::Tensor& batch_sizes, bool relu, bool reverse, bool training);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dhn, const at::Tensor& saved, const at::Tensor& w_hh,
    const at::Tensor& batch_sizes, bool relu, bool reverse);
at::Tensor rnn_step_fwd_cpu(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh, bool relu);

}  // namespace fastcells::cpu
