// The fastcells op schemas (one per op, for every device) and the Python module fastcells._C.
//
// Layer ops run one layer and one direction over a whole sequence; step ops run one inference step of
// a cell. Shapes (N rows of the flattened sequence, B batch, H hidden, P = proj_size or H):
//   gx (N, G) input projections, h0 (B, P), c0 (B, H), w_hh (G, P), w_hr (P, H), batch_sizes (T) int64 CPU
//   with G = 4H (LSTM), 3H (GRU), H (RNN). LSTM and RNN gx include both biases; GRU gx includes b_ih.
// Backward ops return an empty tensor for a gradient whose input was absent (w_hr, b_hh).
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/ops_cpu.h"

TORCH_LIBRARY(fastcells, m) {
  m.def(
      "lstm_layer_fwd(Tensor gx, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
      "Tensor batch_sizes, bool reverse, bool training) -> (Tensor y, Tensor hn, Tensor cn, "
      "Tensor saved)");
  // lstm_layer_fwd with the input projection done inside: gx = x @ w_ih^T + bias (CPU only).
  m.def(
      "lstm_layer_from_input_fwd(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, "
      "Tensor w_hh, Tensor? w_hr, Tensor batch_sizes, bool reverse, bool training) -> (Tensor y, "
      "Tensor hn, Tensor cn, Tensor saved)");
  m.def(
      "lstm_layer_bwd(Tensor dy, Tensor dhn, Tensor dcn, Tensor saved, Tensor w_hh, Tensor? w_hr, "
      "Tensor batch_sizes, bool reverse) -> (Tensor dgx, Tensor dh0, Tensor dc0, Tensor dw_hh, "
      "Tensor dw_hr)");
  m.def(
      "lstm_step_fwd(Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor h_new, Tensor c_new)");
  m.def(
      "gru_layer_fwd(Tensor gx, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor batch_sizes, "
      "bool reverse, bool training) -> (Tensor y, Tensor hn, Tensor saved)");
  m.def(
      "gru_layer_bwd(Tensor dy, Tensor dhn, Tensor saved, Tensor w_hh, Tensor batch_sizes, "
      "bool reverse, bool has_bias) -> (Tensor dgx, Tensor dh0, Tensor dw_hh, Tensor db_hh)");
  m.def(
      "gru_step_fwd(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> Tensor h_new");
  m.def(
      "rnn_layer_fwd(Tensor gx, Tensor h0, Tensor w_hh, Tensor batch_sizes, bool relu, "
      "bool reverse, bool training) -> (Tensor y, Tensor hn, Tensor saved)");
  m.def(
      "rnn_layer_bwd(Tensor dy, Tensor dhn, Tensor saved, Tensor w_hh, Tensor batch_sizes, "
      "bool relu, bool reverse) -> (Tensor dgx, Tensor dh0, Tensor dw_hh)");
  m.def(
      "rnn_step_fwd(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool relu) -> Tensor h_new");
}

// Importing fastcells._C registers the ops above. The module also exposes the CPU step ops directly:
// a call through pybind11 skips the dispatcher's boxing of seven arguments (~5 µs of the ~10 µs a
// streaming LSTM step at H=64 took through torch.ops). Used eagerly only, never under torch.compile.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastcells compiled ops: see torch.ops.fastcells";
  // The GIL is released while a step runs, so other Python threads (an inference server's) go on.
  using ReleaseGil = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("lstm_step_fwd_cpu", &fastcells::cpu::lstm_step_fwd_cpu, ReleaseGil());
  m.def("gru_step_fwd_cpu", &fastcells::cpu::gru_step_fwd_cpu, ReleaseGil());
  m.def("rnn_step_fwd_cpu", &fastcells::cpu::rnn_step_fwd_cpu, ReleaseGil());
  // Whether the CUDA ops were compiled in (setup.py builds them where torch has CUDA and nvcc exists).
#ifdef FASTCELLS_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
