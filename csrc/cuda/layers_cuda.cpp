// CUDA implementations of the fastcells ops (schemas in ../ops.cpp), registered for the CUDA dispatch
// key under the CPU backend's op names, so device dispatch is automatic.
//
// Layers: the input projection runs as one GEMM before the time loop; then either one persistent kernel
// runs all the steps (persistent.h; where persistent_choice.h says so and it fits), or the loop runs here
// in C++: per step one GEMM through ATen (cuBLAS) and one fused pointwise kernel (pointwise.cu), all on
// the current stream. Shapes as in ../ops.cpp, saved layouts in fastcells/saved_layout.h; packed
// sequences shrink the rows of each step as on the CPU (../schedule.h). Cell steps: inference steps run
// one fused kernel (cell_step.cu); steps that need gradients run as one-step layers (from Python).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <utility>
#include <vector>

#include "../cpu/ops_cpu.h"
#include "layers_cuda.h"

#include "../checks.h"
#include "../layers.h"
#include "../schedule.h"
#include "persistent.h"
#include "persistent_choice.h"
#include "cell_step.h"
#include "pointwise.h"

namespace fastcells::cuda {
namespace {

// The kernels' dtype tag; other dtypes are refused with a message naming the tensor.
DType dtype_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor for the cuda backend, got ", t.device());
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float64, float16 or bfloat16 for the cuda backend, got ",
                  t.scalar_type());
  }
}

// Address of row `row` of a row-major contiguous tensor (null for an undefined or empty one).
void* row_ptr(const at::Tensor& t, int64_t row) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  return static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size();
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::atomic<int64_t> persistent_launch_count{0};
std::atomic<int64_t> cluster_launch_count{0};  // launches in thread-block clusters
// Set once the driver has refused a launch in clusters (a combination of cluster and cooperative launch
// it does not take, say): later calls run without clusters rather than fail a launch first every time.
std::atomic<bool> clusters_refused{false};

// The steps' batch sizes and first rows on the device, (T) and (T + 1) int64, for the persistent kernels;
// undefined tensors where every step has the whole batch (padded input, or packed of equal lengths).
std::pair<at::Tensor, at::Tensor> device_schedule(const Schedule& sched, const at::Device& device) {
  if (std::all_of(sched.sizes.begin(), sched.sizes.end(), [&](int64_t size) { return size == sched.batch; })) {
    return {};
  }
  std::vector<int64_t> offsets = sched.offsets;
  offsets.push_back(offsets.empty() ? 0 : offsets.back() + sched.sizes.back());
  const auto to_device = [&](const std::vector<int64_t>& v) {
    // Pinned, so the copy does not block the host (the caching host allocator keeps the buffer alive
    // until the copy is done).
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).pin_memory().to(device, /*non_blocking=*/true);
  };
  return {to_device(sched.sizes), to_device(offsets)};
}

const int64_t* long_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<int64_t>() : nullptr; }

// float32 runs the persistent kernels on tf32 tensor cores: only where torch.nn's cuDNN RNNs would use
// tf32 too (torch.backends.cudnn.allow_tf32, on by default), so fastcells is no less exact than torch.
bool tensor_cores_allowed(DType dtype) {
  return dtype != DType::kFloat32 || at::globalContext().allowTF32CuDNN();
}

// Whether a persistent launch was refused because its blocks cannot all be resident (the occupancy API
// does not see MPS limits or other contexts): then the per-step path runs. Other errors throw.
bool launch_too_large(cudaError_t error) {
  if (error == cudaErrorCooperativeLaunchTooLarge) {
    cudaGetLastError();  // clear it: the caller falls back
    return true;
  }
  C10_CUDA_CHECK(error);
  return false;
}

// The variant of a persistent kernel a call of this shape runs, or none: the recorded choice, without
// clusters where the grid does not split into clusters that fit (an H the table's nearest shape does not
// share, or a GPU before sm_90) or the driver refused them before. fits(config): sequence_fwd_fits or
// sequence_bwd_fits of the shape.
template <typename Fits>
std::optional<PersistentConfig> fitting_choice(std::optional<PersistentConfig> choice, Fits fits) {
  if (choice && choice->cluster > 1 && (clusters_refused.load() || !fits(*choice))) choice->cluster = 1;
  if (!choice || !fits(*choice)) return std::nullopt;
  return choice;
}

// Launches launch(config) (sequence_fwd or sequence_bwd of the call's arguments); where the driver
// refuses a launch in clusters, the same variant without them, where it fits. Whether a kernel ran
// (counted); false where the per-step path must run instead.
template <typename Launch, typename Fits>
bool launch_counted(PersistentConfig config, Launch launch, Fits fits) {
  cudaError_t error = launch(config);
  if (error != cudaSuccess && config.cluster > 1) {
    cudaGetLastError();
    clusters_refused.store(true);
    config.cluster = 1;
    if (!fits(config)) return false;
    error = launch(config);
  }
  if (launch_too_large(error)) return false;
  persistent_launch_count.fetch_add(1, std::memory_order_relaxed);
  if (config.cluster > 1) cluster_launch_count.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// Runs a layer's forward as one persistent kernel where it is switched on and fits; false where the
// per-step path must run instead. gx: (N, G * H) input projections (b_hh folded in but for GRU), h0 and
// c0 contiguous; y and saved allocated by the caller; hn and cn are set.
bool persistent_fwd(Cell cell, DType dtype, const Schedule& sched, const at::Tensor& gx,
                    const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
                    const at::Tensor& c0, const at::Tensor& y, const at::Tensor& saved, bool reverse,
                    bool relu, at::Tensor& hn, at::Tensor& cn) {
  const int64_t B = sched.batch, H = h0.size(1);
  if (!tensor_cores_allowed(dtype)) return false;
  const auto fits = [&](const PersistentConfig& c) { return sequence_fwd_fits(dtype, cell, B, H, c); };
  const std::optional<PersistentConfig> choice =
      fitting_choice(persistent_choice(cell, dtype, B, H, saved.numel() > 0), fits);
  if (!choice || sched.steps == 0) return false;
  const PersistentConfig& config = *choice;
  const auto [sizes, offsets] = device_schedule(sched, gx.device());
  at::Tensor flags = at::empty({sequence_fwd_blocks(cell, H, config)}, gx.options().dtype(at::kInt));
  hn = at::empty_like(h0);  // not h0 itself: other blocks may still read h0 when one writes hn
  cn = c0.defined() ? at::empty_like(c0) : at::Tensor();
  const SequenceFwd args{cell,           gx.data_ptr(),  w_hh.data_ptr(),   row_ptr(b_hh, 0),
                         h0.data_ptr(),  row_ptr(c0, 0), y.data_ptr(),      hn.data_ptr(),
                         row_ptr(cn, 0), row_ptr(saved, 0),
                         static_cast<unsigned*>(flags.data_ptr()),          long_ptr(sizes),
                         long_ptr(offsets), sched.steps, B,                 H,
                         reverse,        relu};
  return launch_counted(
      config, [&](const PersistentConfig& c) { return sequence_fwd(dtype, args, c, current_stream()); }, fits);
}

// Runs the sequential part of a layer's backward as one persistent kernel where it is switched on and
// fits; false where the per-step loop must run instead. dh and dc (contiguous) hold dhn and dcn in and
// dh0 and dc0 out; dgx (and GRU's dgh) are filled.
bool persistent_bwd(Cell cell, DType dtype, const Schedule& sched, const at::Tensor& dy,
                    const at::Tensor& saved, const at::Tensor& w_hh, const at::Tensor& dh,
                    const at::Tensor& dc, const at::Tensor& dgx, const at::Tensor& dgh, bool reverse,
                    bool relu) {
  const int64_t B = sched.batch, H = dh.size(1);
  if (!tensor_cores_allowed(dtype)) return false;
  const auto fits = [&](const PersistentConfig& c) { return sequence_bwd_fits(dtype, cell, B, H, c); };
  const std::optional<PersistentConfig> choice =
      fitting_choice(persistent_choice(cell, dtype, B, H, /*training=*/true), fits);
  if (!choice || sched.steps == 0) return false;
  const PersistentConfig& config = *choice;
  const auto [sizes, offsets] = device_schedule(sched, dy.device());
  at::Tensor flags = at::empty({sequence_fwd_blocks(cell, H, config)}, dy.options().dtype(at::kInt));
  const SequenceBwd args{cell,           dy.data_ptr(),   saved.data_ptr(), w_hh.data_ptr(),
                         dh.data_ptr(),  row_ptr(dc, 0),  dgx.data_ptr(),   row_ptr(dgh, 0),
                         static_cast<unsigned*>(flags.data_ptr()),          long_ptr(sizes),
                         long_ptr(offsets), sched.steps, B,                 H,
                         reverse,        relu};
  return launch_counted(
      config, [&](const PersistentConfig& c) { return sequence_bwd(dtype, args, c, current_stream()); }, fits);
}

}  // namespace

int64_t persistent_launches() { return persistent_launch_count.load(); }
int64_t persistent_cluster_launches() { return cluster_launch_count.load(); }

namespace {

PersistentConfig config_of(int units, bool flag_sync, int cluster) {
  TORCH_CHECK(units == 8 || units == 16, "units must be 8 or 16, got ", units);
  TORCH_CHECK(cluster == 1 || cluster == 2 || cluster == 4 || cluster == 8, "cluster must be 1, 2, 4 or 8, got ",
              cluster);
  TORCH_CHECK(cluster == 1 || flag_sync, "clusters run with flag synchronization only");
  return PersistentConfig{units, flag_sync, cluster};
}

}  // namespace

void set_persistent(const std::string& mode, int units, bool flag_sync, int cluster) {
  const PersistentConfig config = config_of(units, flag_sync, cluster);
  if (mode == "table") return set_persistent_mode(PersistentMode::kTable, config);
  if (mode == "on") return set_persistent_mode(PersistentMode::kOn, config);
  if (mode == "off") return set_persistent_mode(PersistentMode::kOff, config);
  TORCH_CHECK(false, "mode must be 'table', 'on' or 'off', got '", mode, "'");
}

void record_persistent_choice(const std::string& cell, const std::string& dtype, int64_t batch, int64_t H,
                              bool training, int units, bool flag_sync, int cluster) {
  const Cell c = cell == "lstm" ? Cell::kLstm : cell == "gru" ? Cell::kGru : Cell::kRnn;
  TORCH_CHECK(cell == "lstm" || cell == "gru" || cell == "rnn", "cell must be lstm, gru or rnn, got ", cell);
  TORCH_CHECK(dtype == "float16" || dtype == "bfloat16" || dtype == "float32",
              "dtype must be float16, bfloat16 or float32, got ", dtype);
  const DType d = dtype == "float16" ? DType::kFloat16 : dtype == "bfloat16" ? DType::kBFloat16 : DType::kFloat32;
  record_persistent_choice(c, d, batch, H, training,
                           units == 0 ? std::nullopt : std::optional(config_of(units, flag_sync, cluster)));
}

LstmOutputs lstm_layer_fwd_cuda(const at::Tensor& x, const at::Tensor& w_ih,
                                const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                const at::Tensor& c0, const at::Tensor& w_hh_in,
                                const c10::optional<at::Tensor>& w_hr_in,
                                const at::Tensor& batch_sizes, bool reverse, bool training) {
  const LstmLayout L = check_lstm_layer_fwd_args(x, w_ih, b_ih, b_hh, h0, c0, w_hh_in, w_hr_in);
  const DType dtype = dtype_of(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), B = h0.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = input_projection(x, w_ih, input_bias(b_ih, b_hh, /*adds_b_hh=*/true)).contiguous();
  at::Tensor w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor c_state = c0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, L.P}, gx.options());
  at::Tensor saved = training ? at::empty({N, L.width()}, gx.options()) : at::empty({0}, gx.options());
  if (!L.proj) {
    at::Tensor hn, cn;
    if (persistent_fwd(Cell::kLstm, dtype, sched, gx, w_hh, at::Tensor(), h_state, c_state, y, saved,
                       reverse, /*relu=*/false, hn, cn)) {
      return {y, hn, cn, saved};
    }
  }
  at::Tensor gh = at::empty({B, 4 * L.H}, gx.options());
  at::Tensor h_raw = L.proj ? at::empty({B, L.H}, gx.options()) : at::Tensor();
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    // Without a projection the kernel also writes y and saved h_prev; with one, h is P wide: copies.
    if (training && L.proj) saved.narrow(0, row0, bs).narrow(1, L.h_prev(), L.P).copy_(h_rows);
    at::Tensor h_out = L.proj ? h_raw.narrow(0, 0, bs) : h_rows;
    const LstmStepFwd args{row_ptr(gx, row0),
                           gh.data_ptr(),
                           c_state.data_ptr(),
                           h_out.data_ptr(),
                           L.proj ? nullptr : row_ptr(y, row0),
                           training ? row_ptr(saved, row0) : nullptr,
                           L.width(),
                           bs,
                           L.H};
    C10_CUDA_CHECK(lstm_step_fwd(dtype, args, current_stream()));
    if (L.proj) {
      at::mm_out(h_rows, h_out, w_hr.t());
      if (training) saved.narrow(0, row0, bs).narrow(1, L.h_raw(), L.H).copy_(h_out);
      y.narrow(0, row0, bs).copy_(h_rows);
    }
  });
  return {y, h_state, c_state, saved};
}

LstmGrads lstm_layer_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& dhn, const at::Tensor& dcn,
                              const at::Tensor& saved_in, const at::Tensor& x,
                              const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                              const c10::optional<at::Tensor>& w_hr_in,
                              const at::Tensor& batch_sizes, bool reverse, bool need_dx) {
  const LstmLayout L = check_lstm_layer_bwd_args(dy_in, dhn, dcn, saved_in, x, w_ih, b_ih, b_hh,
                                                 w_hh_in, w_hr_in);
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t N = dy_in.size(0), B = dhn.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor w_hr = L.proj ? w_hr_in->contiguous() : at::Tensor();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dc_state = dcn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, 4 * L.H}, dy.options());
  at::Tensor dh_rows = L.proj ? at::empty({N, L.P}, dy.options()) : at::Tensor();
  at::Tensor dh_raw = L.proj ? at::empty({B, L.H}, dy.options()) : at::Tensor();
  if (L.proj || !persistent_bwd(Cell::kLstm, dtype, sched, dy, saved, w_hh, dh_state, dc_state, dgx,
                                at::Tensor(), reverse, /*relu=*/false)) {
    for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
      // dh = dy + the gradient from the next step; through the projection when there is one.
      at::Tensor dh = dh_state.narrow(0, 0, bs);
      dh.add_(dy.narrow(0, row0, bs));
      at::Tensor dh_unit = dh;
      if (L.proj) {
        dh_rows.narrow(0, row0, bs).copy_(dh);
        dh_unit = dh_raw.narrow(0, 0, bs);
        at::mm_out(dh_unit, dh, w_hr);
      }
      const LstmStepBwd args{row_ptr(saved, row0), dh_unit.data_ptr(), dc_state.data_ptr(),
                             row_ptr(dgx, row0), L.width(), bs, L.H};
      C10_CUDA_CHECK(lstm_step_bwd(dtype, args, current_stream()));
      at::mm_out(dh, dgx.narrow(0, row0, bs), w_hh);
    });
  }
  auto [dw_hh, dw_hr] = lstm_weight_grads(dgx, saved, dh_rows, L);
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, at::Tensor(), need_dx);
  return {in.dx, dh_state, dc_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh, dw_hr};
}

LayerOutputs gru_layer_fwd_cuda(const at::Tensor& x, const at::Tensor& w_ih,
                                const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh_in, const at::Tensor& h0,
                                const at::Tensor& w_hh_in, const at::Tensor& batch_sizes,
                                bool reverse, bool training) {
  const int64_t H = check_layer_fwd_args(x, w_ih, b_ih, b_hh_in, h0, w_hh_in, 3);
  const DType dtype = dtype_of(x, "x");
  const int64_t N = x.size(0), B = h0.size(0);
  const c10::cuda::CUDAGuard guard(x.device());
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = input_projection(x, w_ih, input_bias(b_ih, b_hh_in, /*adds_b_hh=*/false)).contiguous();
  at::Tensor w_hh = w_hh_in.contiguous();
  at::Tensor b_hh = b_hh_in.has_value() ? b_hh_in->contiguous() : at::Tensor();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, gx.options());
  at::Tensor saved = training ? at::empty({N, GruLayout{H}.width()}, gx.options())
                              : at::empty({0}, gx.options());
  at::Tensor hn, no_c;
  if (persistent_fwd(Cell::kGru, dtype, sched, gx, w_hh, b_hh, h_state, at::Tensor(), y, saved, reverse,
                     /*relu=*/false, hn, no_c)) {
    return {y, hn, saved};
  }
  at::Tensor gh = at::empty({B, 3 * H}, gx.options());
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    const GruStepFwd args{row_ptr(gx, row0), gh.data_ptr(),    row_ptr(b_hh, 0),
                          h_state.data_ptr(), row_ptr(y, row0), training ? row_ptr(saved, row0) : nullptr,
                          bs,                 H};
    C10_CUDA_CHECK(gru_step_fwd(dtype, args, current_stream()));
  });
  return {y, h_state, saved};
}

LayerGrads gru_layer_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& dhn,
                              const at::Tensor& saved_in, const at::Tensor& /*y: the states are in saved*/,
                              const at::Tensor& /*h0*/, const at::Tensor& x,
                              const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                              const at::Tensor& batch_sizes, bool reverse, bool need_dx) {
  const int64_t H = check_layer_bwd_args(dy_in, dhn, saved_in, x, w_ih, b_ih, b_hh, w_hh_in, 3,
                                         GruLayout{1}.width());
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, 3 * H}, dy.options());
  at::Tensor dgh = at::empty({N, 3 * H}, dy.options());
  if (!persistent_bwd(Cell::kGru, dtype, sched, dy, saved, w_hh, dh_state, at::Tensor(), dgx, dgh, reverse,
                      /*relu=*/false)) {
    for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
      const GruStepBwd args{row_ptr(saved, row0), row_ptr(dy, row0), dh_state.data_ptr(),
                            row_ptr(dgx, row0), row_ptr(dgh, row0), bs, H};
      C10_CUDA_CHECK(gru_step_bwd(dtype, args, current_stream()));
      dh_state.narrow(0, 0, bs).addmm_(dgh.narrow(0, row0, bs), w_hh);
    });
  }
  at::Tensor dw_hh = at::mm(dgh.t(), saved.narrow(1, GruLayout{H}.h_prev(), H));
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, dgh, need_dx);
  return {in.dx, dh_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh};
}

LayerOutputs rnn_layer_fwd_cuda(const at::Tensor& x, const at::Tensor& w_ih,
                                const c10::optional<at::Tensor>& b_ih,
                                const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                const at::Tensor& w_hh_in, const at::Tensor& batch_sizes, bool relu,
                                bool reverse, bool training) {
  const int64_t H = check_layer_fwd_args(x, w_ih, b_ih, b_hh, h0, w_hh_in, 1);
  const DType dtype = dtype_of(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), B = h0.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, B);
  at::Tensor gx = input_projection(x, w_ih, input_bias(b_ih, b_hh, /*adds_b_hh=*/true)).contiguous();
  at::Tensor w_hh = w_hh_in.contiguous();
  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty({N, H}, gx.options());
  at::Tensor saved = training ? at::empty({N, RnnLayout{H}.width()}, gx.options())
                              : at::empty({0}, gx.options());
  at::Tensor hn, no_c;
  if (persistent_fwd(Cell::kRnn, dtype, sched, gx, w_hh, at::Tensor(), h_state, at::Tensor(), y, saved,
                     reverse, relu, hn, no_c)) {
    return {y, hn, saved};
  }
  at::Tensor gh = at::empty({B, H}, gx.options());
  for_each_step(sched, reverse, /*backward=*/false, [&](int64_t bs, int64_t row0) {
    at::Tensor h_rows = h_state.narrow(0, 0, bs), gh_rows = gh.narrow(0, 0, bs);
    at::mm_out(gh_rows, h_rows, w_hh.t());
    const RnnStepFwd args{row_ptr(gx, row0), gh.data_ptr(), h_state.data_ptr(), row_ptr(y, row0),
                          training ? row_ptr(saved, row0) : nullptr, bs, H, relu};
    C10_CUDA_CHECK(rnn_step_fwd(dtype, args, current_stream()));
  });
  return {y, h_state, saved};
}

LayerGrads rnn_layer_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& dhn,
                              const at::Tensor& saved_in, const at::Tensor& /*y: the states are in saved*/,
                              const at::Tensor& /*h0*/, const at::Tensor& x,
                              const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh_in,
                              const at::Tensor& batch_sizes, bool relu, bool reverse,
                              bool need_dx) {
  const int64_t H = check_layer_bwd_args(dy_in, dhn, saved_in, x, w_ih, b_ih, b_hh, w_hh_in, 1,
                                         RnnLayout{1}.width());
  const DType dtype = dtype_of(dy_in, "dy");
  const c10::cuda::CUDAGuard guard(dy_in.device());
  const int64_t N = dy_in.size(0);
  const Schedule sched = make_schedule(batch_sizes, N, dhn.size(0));
  at::Tensor dy = dy_in.contiguous(), saved = saved_in.contiguous(), w_hh = w_hh_in.contiguous();
  at::Tensor dh_state = dhn.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgx = at::empty({N, H}, dy.options());
  if (!persistent_bwd(Cell::kRnn, dtype, sched, dy, saved, w_hh, dh_state, at::Tensor(), dgx, at::Tensor(),
                      reverse, relu)) {
    for_each_step(sched, reverse, /*backward=*/true, [&](int64_t bs, int64_t row0) {
      at::Tensor dh = dh_state.narrow(0, 0, bs);
      const RnnStepBwd args{row_ptr(saved, row0), row_ptr(dy, row0), dh.data_ptr(),
                            row_ptr(dgx, row0), bs, H, relu};
      C10_CUDA_CHECK(rnn_step_bwd(dtype, args, current_stream()));
      at::mm_out(dh, dgx.narrow(0, row0, bs), w_hh);
    });
  }
  at::Tensor dw_hh = at::mm(dgx.t(), saved.narrow(1, RnnLayout{H}.h_prev(), H));
  const InputGrads in = input_grads(dgx, x, w_ih, b_ih, b_hh, at::Tensor(), need_dx);
  return {in.dx, dh_state, in.dw_ih, in.db_ih, in.db_hh, dw_hh};
}

// The cell step ops (inference): one fused kernel each (cell_step.cu).
namespace {

CellStep cell_step_args(Cell cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                        const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                        const at::Tensor& b_hh, const at::Tensor& h_out, const at::Tensor& c_out,
                        bool relu) {
  return CellStep{cell,           x.data_ptr(),     h.data_ptr(),       row_ptr(c, 0),
                  w_ih.data_ptr(), w_hh.data_ptr(), row_ptr(b_ih, 0),   row_ptr(b_hh, 0),
                  h_out.data_ptr(), row_ptr(c_out, 0), x.size(0),       x.size(1),
                  h.size(1),      relu};
}

at::Tensor contiguous_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lstm_step_fwd_cuda(const at::Tensor& x, const at::Tensor& h,
                                                      const at::Tensor& c, const at::Tensor& w_ih,
                                                      const at::Tensor& w_hh,
                                                      const c10::optional<at::Tensor>& b_ih,
                                                      const c10::optional<at::Tensor>& b_hh) {
  const DType dtype = dtype_of(x, "x");
  const int64_t H = check_step_args(x, h, w_ih, w_hh, b_ih, b_hh, 4);
  FC_CHECK_SHAPE(c, x.size(0), H);
  FC_CHECK_LIKE(c, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor xc = x.contiguous(), hc = h.contiguous(), cc = c.contiguous();
  at::Tensor w_ihc = w_ih.contiguous(), w_hhc = w_hh.contiguous();
  at::Tensor bi = contiguous_or_none(b_ih), bh = contiguous_or_none(b_hh);
  at::Tensor h_new = at::empty_like(hc), c_new = at::empty_like(cc);
  C10_CUDA_CHECK(cell_step(dtype, cell_step_args(Cell::kLstm, xc, hc, cc, w_ihc, w_hhc, bi, bh, h_new, c_new,
                                                 false),
                           current_stream()));
  return {h_new, c_new};
}

namespace {

// GRU's and RNN's step: one state.
at::Tensor one_state_step(Cell cell, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                          const c10::optional<at::Tensor>& b_hh, bool relu) {
  const DType dtype = dtype_of(x, "x");
  check_step_args(x, h, w_ih, w_hh, b_ih, b_hh, cell == Cell::kGru ? 3 : 1);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor xc = x.contiguous(), hc = h.contiguous(), w_ihc = w_ih.contiguous(), w_hhc = w_hh.contiguous();
  at::Tensor bi = contiguous_or_none(b_ih), bh = contiguous_or_none(b_hh);
  at::Tensor h_new = at::empty_like(hc);
  C10_CUDA_CHECK(cell_step(dtype, cell_step_args(cell, xc, hc, at::Tensor(), w_ihc, w_hhc, bi, bh, h_new,
                                                 at::Tensor(), relu),
                           current_stream()));
  return h_new;
}

}  // namespace

at::Tensor gru_step_fwd_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh) {
  return one_state_step(Cell::kGru, x, h, w_ih, w_hh, b_ih, b_hh, /*relu=*/false);
}

at::Tensor rnn_step_fwd_cuda(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                             const c10::optional<at::Tensor>& b_hh, bool relu) {
  return one_state_step(Cell::kRnn, x, h, w_ih, w_hh, b_ih, b_hh, relu);
}

}  // namespace fastcells::cuda

TORCH_LIBRARY_IMPL(fastcells, CUDA, m) {
  using namespace fastcells::cuda;
  m.impl("lstm_layer_fwd", &lstm_layer_fwd_cuda);
  m.impl("lstm_layer_bwd", &lstm_layer_bwd_cuda);
  m.impl("gru_layer_fwd", &gru_layer_fwd_cuda);
  m.impl("gru_layer_bwd", &gru_layer_bwd_cuda);
  m.impl("rnn_layer_fwd", &rnn_layer_fwd_cuda);
  m.impl("rnn_layer_bwd", &rnn_layer_bwd_cuda);
  m.impl("lstm_step_fwd", &lstm_step_fwd_cuda);
  m.impl("gru_step_fwd", &gru_step_fwd_cuda);
  m.impl("rnn_step_fwd", &rnn_step_fwd_cuda);
}
