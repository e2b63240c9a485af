// The fastcells op schemas (one per op, for every device) and the Python module fastcells._C.
//
// Layer ops run one layer and one direction over a whole sequence, from the layer's input and all its
// weights: where the input projection runs (one GEMM up front, per group of rows, or inside a
// persistent kernel) is each device's choice. Step ops run one inference step of a cell. Shapes
// (N rows of the flattened sequence, I input features, B batch, H hidden, P = proj_size or H):
//   x (N, I), w_ih (G, I), b_ih and b_hh (G) or none, h0 (B, P), c0 (B, H), w_hh (G, P), w_hr (P, H),
//   batch_sizes (T) int64 CPU, with G = 4H (LSTM), 3H (GRU), H (RNN).
// saved: what backward needs, (N, width) as in fastcells/saved_layout.h; empty when not training.
// The GRU and RNN backward ops also take the forward's output y (N, H) and h0 (B, H), where the CPU
// ops read the states their saved rows leave out; an empty y where saved keeps them (the CUDA ops).
// Backward ops take the forward's inputs again and return the gradients of the forward's tensor
// inputs in the order (dx, states..., dw_ih, db_ih, db_hh, weights...); an empty tensor stands for the
// gradient of an absent input (b_ih, b_hh, w_hr), and for dx when need_dx is false (the first layer's
// input seldom needs one: its GEMM is skipped).
#include <torch/extension.h>
#include <torch/library.h>

#include <map>
#include <string>
#include <vector>

#include "cpu/bf16_backward_gemm.h"
#include "cpu/bf16_gemm.h"
#include "cpu/bf16_products.h"
#include "cpu/isa.h"
#include "cpu/ops_cpu.h"
#include "cpu/stack_inference.h"
#include "fastcells/saved_layout.h"
#include "plan_tables.h"
#include "streaming_step.h"
#ifdef FASTCELLS_WITH_CUDA
#include "cuda/layers_cuda.h"
#endif

TORCH_LIBRARY(fastcells, m) {
  m.def(
      "lstm_layer_fwd(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor c0, "
      "Tensor w_hh, Tensor? w_hr, Tensor batch_sizes, bool reverse, bool training) -> (Tensor y, "
      "Tensor hn, Tensor cn, Tensor saved)");
  m.def(
      "lstm_layer_bwd(Tensor dy, Tensor dhn, Tensor dcn, Tensor saved, Tensor x, Tensor w_ih, "
      "Tensor? b_ih, Tensor? b_hh, Tensor w_hh, Tensor? w_hr, Tensor batch_sizes, bool reverse, "
      "bool need_dx) -> "
      "(Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor db_ih, Tensor db_hh, Tensor dw_hh, "
      "Tensor dw_hr)");
  m.def(
      "lstm_step_fwd(Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor h_new, Tensor c_new)");
  m.def(
      "gru_layer_fwd(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor w_hh, "
      "Tensor batch_sizes, bool reverse, bool training) -> (Tensor y, Tensor hn, Tensor saved)");
  m.def(
      "gru_layer_bwd(Tensor dy, Tensor dhn, Tensor saved, Tensor y, Tensor h0, Tensor x, "
      "Tensor w_ih, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_hh, Tensor batch_sizes, bool reverse, bool need_dx) -> (Tensor dx, "
      "Tensor dh0, "
      "Tensor dw_ih, Tensor db_ih, Tensor db_hh, Tensor dw_hh)");
  m.def(
      "gru_step_fwd(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> Tensor h_new");
  m.def(
      "rnn_layer_fwd(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor w_hh, "
      "Tensor batch_sizes, bool relu, bool reverse, bool training) -> (Tensor y, Tensor hn, "
      "Tensor saved)");
  m.def(
      "rnn_layer_bwd(Tensor dy, Tensor dhn, Tensor saved, Tensor y, Tensor h0, Tensor x, "
      "Tensor w_ih, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_hh, Tensor batch_sizes, bool relu, bool reverse, bool need_dx) -> "
      "(Tensor dx, "
      "Tensor dh0, Tensor dw_ih, Tensor db_ih, Tensor db_hh, Tensor dw_hh)");
  m.def(
      "rnn_step_fwd(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool relu) -> Tensor h_new");
}

// Importing fastcells._C registers the ops above. The module also exposes the CPU step ops directly,
// under the ops' names (so fastcells._C and torch.ops.fastcells serve the cpu backend alike):
// a call through pybind11 skips the dispatcher's boxing of seven arguments (~5 µs of the ~10 µs a
// streaming LSTM step at H=64 took through torch.ops). Used eagerly only, never under torch.compile.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastcells compiled ops: see torch.ops.fastcells";
  // The GIL is released while a step runs, so other Python threads (an inference server's) go on.
  using ReleaseGil = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("lstm_step_fwd", &fastcells::cpu::lstm_step_fwd_cpu, ReleaseGil());
  m.def("gru_step_fwd", &fastcells::cpu::gru_step_fwd_cpu, ReleaseGil());
  m.def("rnn_step_fwd", &fastcells::cpu::rnn_step_fwd_cpu, ReleaseGil());
  // A cell's whole streaming call (fastcells/modules.py's cells), which releases the GIL while its op runs.
  m.def("streaming_step", &fastcells::streaming_step);
  m.def("streaming_allowed", &fastcells::streaming_allowed);
  m.def("cell_streaming_call", &fastcells::cell_streaming_call);
  m.def("set_up_cell_calls", &fastcells::set_up_cell_calls);
  // The CPU layer forward ops, for inference calls in eager mode (backends/cpu.py): a one-step call of
  // a 2-layer RNN at H=200 (a generation loop) spent most of its time in the dispatcher and the
  // autograd registration's Python.
  m.def("lstm_layer_fwd", &fastcells::cpu::lstm_layer_fwd_cpu, ReleaseGil());
  m.def("gru_layer_fwd", &fastcells::cpu::gru_layer_fwd_cpu, ReleaseGil());
  m.def("rnn_layer_fwd", &fastcells::cpu::rnn_layer_fwd_cpu, ReleaseGil());
  // A whole stack of layers in one call (the layers' direct path, fastcells/modules.py): a one-step call
  // of a 2-layer RNN at H=200 spent as long in the Python between its two layer ops as in them.
  m.def("stack_inference", &fastcells::cpu::stack_inference_cpu, ReleaseGil());
  m.def("cpu_isa", [] { return std::string(fastcells::cpu::cpu_isa()); },
        "The instruction set of the CPU kernels this process runs: avx512, avx2 or baseline.");
  m.def("cpu_bf16_products", &fastcells::cpu::cpu_bf16_products,
        "Whether bfloat16 layers multiply in bfloat16 (AVX-512 BF16) in this process.");
  m.def("cpu_amx_products", &fastcells::cpu::cpu_amx_products,
        "Whether those products run on AMX tiles (more than 4 rows a step) in this process.");
  m.def("cpu_bf16_backward_gemm", &fastcells::cpu::bf16_backward_gemm_name,
        "The GEMM of bfloat16 layers' backward (weight gradients, dx) in this process: mkl or vdpbf16ps "
        "(float32 sums), or aten (at::mm).");
  m.def("cpu_f16_backward_gemm", &fastcells::cpu::f16_backward_gemm_name,
        "The GEMM of float16 layers' backward in this process: packed (ours, csrc/cpu/float_gemm.h, widening "
        "the operands as it packs them) or widened (blocks of them widened to float32 for at::mm), both with "
        "float32 sums, or aten (at::mm on float32 copies of the whole operands).");
  m.def("cpu_float_gemm", &fastcells::cpu::float_gemm_name,
        "The GEMM of float32 layers' products over all rows (the backward's weight gradients and dx, "
        "input projections up front) in this process: packed (ours, csrc/cpu/float_gemm.h) or aten (at::mm).");
  // For tests: the float32 packed GEMM of the kernels this process runs, whichever the backward takes.
  m.def("cpu_float_gemm_matrices", [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
    fastcells::cpu::chosen_kernels().float_gemm(a, b, out, accumulate);
  }, ReleaseGil());
  // For tests: the VDPBF16PS GEMM itself (on CPUs with AVX-512 BF16), whichever the backward takes.
  m.def("cpu_bf16_gemm_matrices", &fastcells::cpu::bf16::gemm_matrices, ReleaseGil());
  // For tests: the bfloat16 mat-vecs of layers of up to 4 rows and of the cell steps (AVX-512 BF16 CPUs).
  m.def("cpu_bf16_matvec_rows", &fastcells::cpu::bf16::matvec_matrices, ReleaseGil());
  // For tests: the packed bfloat16 products of a range of columns (layers of up to 4 rows a step over 64 or
  // more rows in all, their units split between threads).
  m.def("cpu_bf16_packed_columns", &fastcells::cpu::bf16::packed_columns_matrices, ReleaseGil());
  // The saved layouts of fastcells/saved_layout.h for H hidden units and P = proj_size (LSTM), as
  // {name: column offset or width}: what tests/test_saved_layout.py checks the Python mirror against.
  m.def("saved_layouts", [](int64_t H, int64_t P) {
    const fastcells::LstmLayout lstm{H, P, true};
    const fastcells::GruLayout gru{H};
    const fastcells::RnnLayout rnn{H};
    return std::map<std::string, std::map<std::string, int64_t>>{
        {"lstm", {{"c_prev", lstm.c_prev()}, {"tanh_c", lstm.tanh_c()}, {"h_prev", lstm.h_prev()},
                  {"h_raw", lstm.h_raw()}, {"width", lstm.width()},
                  {"width_no_proj", fastcells::LstmLayout{H, H, false}.width()}}},
        {"gru", {{"h_n", gru.h_n()}, {"h_prev", gru.h_prev()}, {"width", gru.width()}}},
        {"rnn", {{"h", rnn.h()}, {"h_prev", rnn.h_prev()}, {"width", rnn.width()}}},
        {"gru_cpu", {{"h_n", fastcells::GruCpuLayout{H}.h_n()}, {"width", fastcells::GruCpuLayout{H}.width()}}},
        {"rnn_cpu", {{"width", fastcells::RnnCpuLayout{H}.width()}}}};
  });
  // The persistent CUDA kernels' partition as tables, for their CPU model (tests/persistent_model.py).
  m.def("persistent_plan", &fastcells::persistent_plan_tables, pybind11::arg("gates"),
        pybind11::arg("units"), pybind11::arg("H"), pybind11::arg("batch"), pybind11::arg("steps"),
        pybind11::arg("reverse"), pybind11::arg("backward"),
        pybind11::arg("sizes") = std::vector<int64_t>{}, pybind11::arg("tf32") = false);
  // Whether the CUDA ops were compiled in (setup.py builds them where torch has CUDA and nvcc exists).
#ifdef FASTCELLS_WITH_CUDA
  m.def("has_cuda", [] { return true; });
  m.def("set_cuda_persistent", &fastcells::cuda::set_persistent, pybind11::arg("mode"),
        pybind11::arg("units") = 8, pybind11::arg("flag_sync") = true, pybind11::arg("cluster") = 1);
  m.def("record_cuda_persistent_choice",
        pybind11::overload_cast<const std::string&, const std::string&, int64_t, int64_t, bool, int, bool, int>(
            &fastcells::cuda::record_persistent_choice),
        pybind11::arg("cell"), pybind11::arg("dtype"), pybind11::arg("batch"), pybind11::arg("H"),
        pybind11::arg("training"), pybind11::arg("units"), pybind11::arg("flag_sync"), pybind11::arg("cluster") = 1);
  m.def("cuda_persistent_launches", &fastcells::cuda::persistent_launches);
  m.def("cuda_persistent_cluster_launches", &fastcells::cuda::persistent_cluster_launches);
#else
  m.def("has_cuda", [] { return false; });
#endif
}
