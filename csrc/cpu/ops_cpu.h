// CPU implementations of the fastcells ops (schemas and shapes in ../ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastcells {

using Tensor = at::Tensor;
using OptionalTensor = c10::optional<at::Tensor>;
// Layer forward outputs: LSTM (y, hn, cn, saved); GRU and RNN (y, hn, saved).
using LstmOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using LayerOutputs = std::tuple<Tensor, Tensor, Tensor>;
// Layer backward outputs: LSTM (dx, dh0, dc0, dw_ih, db_ih, db_hh, dw_hh, dw_hr); GRU and RNN
// (dx, dh0, dw_ih, db_ih, db_hh, dw_hh).
using LstmGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LayerGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

}  // namespace fastcells

namespace fastcells::cpu {

// Products of at most this many rows (a layer's batch, a cell step's) run as mat-vecs straight from the
// weights (matmul_cpu.h); more rows take a packed GEMM (gemm_cpu.h).
constexpr int64_t kSmallRows = 4;

// The instruction set of the kernel copy the CPU ops run: "avx512", "avx2" or "baseline" (isa.h).
const char* cpu_isa();
// Whether bfloat16 layers multiply in bfloat16 in this process (bf16_products.h).
bool cpu_bf16_products();
// Whether their packed products run on AMX tiles (bf16_products.h: cpu_has_amx).
bool cpu_amx_products();

LstmOutputs lstm_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_hh, const OptionalTensor& w_hr,
                               const Tensor& batch_sizes, bool reverse, bool training);
LstmGrads lstm_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& dcn,
                             const Tensor& saved, const Tensor& x, const Tensor& w_ih,
                             const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                             const Tensor& w_hh, const OptionalTensor& w_hr,
                             const Tensor& batch_sizes, bool reverse, bool need_dx);
std::tuple<Tensor, Tensor> lstm_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& c,
                                             const Tensor& w_ih, const Tensor& w_hh,
                                             const OptionalTensor& b_ih, const OptionalTensor& b_hh);

LayerOutputs gru_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool reverse, bool training);
LayerGrads gru_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& y, const Tensor& h0, const Tensor& x,
                             const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool reverse, bool need_dx);
Tensor gru_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh);

LayerOutputs rnn_layer_fwd_cpu(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                               const OptionalTensor& b_hh, const Tensor& h0, const Tensor& w_hh,
                               const Tensor& batch_sizes, bool relu, bool reverse, bool training);
LayerGrads rnn_layer_bwd_cpu(const Tensor& dy, const Tensor& dhn, const Tensor& saved,
                             const Tensor& y, const Tensor& h0, const Tensor& x,
                             const Tensor& w_ih, const OptionalTensor& b_ih,
                             const OptionalTensor& b_hh, const Tensor& w_hh,
                             const Tensor& batch_sizes, bool relu, bool reverse, bool need_dx);
Tensor rnn_step_fwd_cpu(const Tensor& x, const Tensor& h, const Tensor& w_ih, const Tensor& w_hh,
                        const OptionalTensor& b_ih, const OptionalTensor& b_hh, bool relu);

}  // namespace fastcells::cpu
