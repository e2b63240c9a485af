#include "stack_inference.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <cstring>
#include <vector>

#include "ops_cpu.h"

namespace fastcells::cpu {
namespace {

// at::stack of the layers' final states (each (B, H), contiguous, in one dtype, as the layer ops return
// them), copied without the dispatcher's stack and cat: a one-step call of a 2-layer stack (a generation
// loop's) took ~20 µs, a dozen dispatched ops of it ~0.2 µs each.
at::Tensor stacked(const std::vector<at::Tensor>& states) {
  const at::Tensor& first = states.front();
  for (const at::Tensor& state : states) {
    if (!state.is_contiguous() || state.sizes() != first.sizes() || state.scalar_type() != first.scalar_type()) {
      return at::stack(states);
    }
  }
  std::vector<int64_t> sizes{static_cast<int64_t>(states.size())};
  sizes.insert(sizes.end(), first.sizes().begin(), first.sizes().end());
  at::Tensor out(at::detail::empty_cpu(sizes, first.scalar_type()));
  char* dst = static_cast<char*>(out.data_ptr());
  for (const at::Tensor& state : states) {
    if (state.numel() > 0) std::memcpy(dst, state.data_ptr(), state.nbytes());
    dst += state.nbytes();
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> stack_inference_cpu(
    const std::string& mode, const at::Tensor& x, const at::Tensor& batch_sizes, const at::Tensor& hx,
    const c10::optional<at::Tensor>& cx, const std::vector<at::Tensor>& flat_weights, int64_t num_layers,
    bool bidirectional, bool bias) {
  const bool lstm = mode == "LSTM", gru = mode == "GRU", relu = mode == "RNN_RELU";
  TORCH_CHECK(lstm || gru || mode == "RNN_TANH" || relu, "stack_inference: unknown mode ", mode);
  TORCH_CHECK(!lstm || cx.has_value(), "stack_inference: an LSTM needs cx");
  const int64_t directions = bidirectional ? 2 : 1, per_layer = bias ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(flat_weights.size()) == num_layers * directions * per_layer,
              "stack_inference: expected ", num_layers * directions * per_layer, " weights, got ",
              flat_weights.size());
  TORCH_CHECK(x.dim() == 3, "stack_inference: x must be (T, B, I), got ", x.dim(), "-D");
  std::vector<at::Tensor> h_finals, c_finals, outputs;
  at::Tensor layer_input = x.reshape({x.size(0) * x.size(1), x.size(2)});
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const at::Tensor* w = flat_weights.data() + index * per_layer;
      const c10::optional<at::Tensor> b_ih = bias ? c10::optional<at::Tensor>(w[2]) : c10::nullopt;
      const c10::optional<at::Tensor> b_hh = bias ? c10::optional<at::Tensor>(w[3]) : c10::nullopt;
      const bool reverse = direction == 1;
      if (lstm) {
        auto [y, hn, cn, saved] = lstm_layer_fwd_cpu(layer_input, w[0], b_ih, b_hh, hx[index], (*cx)[index], w[1],
                                                     c10::nullopt, batch_sizes, reverse, false);
        outputs.push_back(y);
        h_finals.push_back(hn);
        c_finals.push_back(cn);
      } else {
        auto [y, hn, saved] = gru ? gru_layer_fwd_cpu(layer_input, w[0], b_ih, b_hh, hx[index], w[1], batch_sizes,
                                                      reverse, false)
                                  : rnn_layer_fwd_cpu(layer_input, w[0], b_ih, b_hh, hx[index], w[1], batch_sizes,
                                                      relu, reverse, false);
        outputs.push_back(y);
        h_finals.push_back(hn);
      }
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, 1);
  }
  return {layer_input.view({x.size(0), x.size(1), layer_input.size(1)}), stacked(h_finals),
          lstm ? stacked(c_finals) : at::Tensor()};
}

}  // namespace fastcells::cpu
