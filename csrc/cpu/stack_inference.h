// A whole stacked, possibly bidirectional layer's inference call in one function: the layers' direct
// path (fastcells/modules.py) calls it through pybind11 for generation loops, whose one-step calls
// spend more time between the layer ops than in them. The same layer ops, in the same order and with
// the same arguments, as fastcells/functional.py's rnn over the cpu backend's inference calls.
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>
#include <vector>

namespace fastcells::cpu {

// mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU". x (T, B, I) a padded sequence with batch_sizes (T) (its
// rows reshaped here, not in Python: 0.7 µs there); hx (L * D, B, H), cx likewise for LSTM (else
// undefined); flat_weights as torch.nn.RNNBase._flat_weights (no projection). Returns y (T, B, D * H),
// hn (L * D, B, H) and cn (LSTM; else undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stack_inference_cpu(
    const std::string& mode, const at::Tensor& x, const at::Tensor& batch_sizes, const at::Tensor& hx,
    const c10::optional<at::Tensor>& cx, const std::vector<at::Tensor>& flat_weights, int64_t num_layers,
    bool bidirectional, bool bias);

}  // namespace fastcells::cpu
