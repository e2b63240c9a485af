// Where the CPU layer loops get each step's input pre-activations x_t @ W_ih^T + bias: one GEMM over all
// N rows before the time loop, or each row group's thread (row_groups.h) multiplying its own rows of x
// by W_ih^T a chunk of steps at a time (project_steps), so that the (N, G) projections never go out to
// memory and back (13 MB at T=100, B=32, H=256 for an LSTM): project_per_step says which.
#pragma once

#include "isa_namespace.h"

#include <ATen/ATen.h>

#include <optional>

#include "../layers.h"
#include "float_gemm.h"
#include "gemm_cpu.h"
#include "matmul_cpu.h"
#include "row_groups.h"

namespace fastcells::cpu::FASTCELLS_ISA {

// Whether the steps of a layer project their own input rows, a chunk of steps at a time (project_steps:
// W_ih read once a chunk, the products made by the packed GEMM over all the chunk's rows), rather than
// one GEMM over all N rows up front. Every layer of more than kSmallRows rows does: its (N, G)
// projections never go out to memory and back (52 MiB for an LSTM at the fastrnns shape, T=100 B=64
// H=512), and on the Intel Xeon (float32, torch.nn and fastcells side by side, 5 interleaved rounds,
// fastcells' median time up front / per step) it ran as fast or faster everywhere measured: LSTM
// T=100 B=64 H=512 inference 107.8 / 98.5 ms, training 362.5 / 359.2; T=50 B=8 H=256 inference 2.16 /
// 2.09; GRU T=100 B=64 H=512 inference 88.5 / 71.7, T=50 B=16 H=256 inference 2.83 / 2.77, training
// 8.89 / 8.97; RNN T=100 B=64 H=512 inference 24.1 / 24.6, T=50 B=16 H=256 training 3.48 / 3.45.
// (Step by step, each step reading W_ih beside W_hh, 2 MiB for an LSTM at H=256, more than this Xeon's
// L2, LSTM T=50 B=16 H=256 inference took 4.0-4.9 ms, 3.3-3.5 in chunks of 16-32 steps.) Decided from
// the shape alone: the two ways round the sums differently (at::mm up front, the packed GEMM per step),
// and the results must not depend on the number of threads.
//
// At most kSmallRows rows, whose steps multiply with mat-vecs reading the weights in place (or, bfloat16
// over 64 rows in all, with the packed products: gemm_cpu.h's packs_small_batch), project up front (per
// step: LSTM T=50 B=1 H=128 went from 0.98x to 0.70x torch.nn), except where the weights are in 16 bits
// (read as they are, or packed: StepProduct) in inference: the (N, G) float32 projections were most of
// such a call's memory (GRU T=50 B=1 H=128: 131 KiB in all, 57 per step, torch.nn 96; at B=4 699 and 219
// against torch.nn's 285; an LSTM's bfloat16 call held 0.91 of its float32 twin's), for 6-20% more time
// there, where they run at 4-13x torch.nn. In training, which holds far more, the projections up front
// cost no peak memory, and per step was up to 4% slower. Such rows' projections per step are made apart
// from the hidden ones and summed as up front (projects_rows_apart): inference gives training's outputs.
inline bool project_per_step(const Schedule& sched, bool training, bool weights_16) {
  if (sched.batch > kSmallRows) return true;
  return weights_16 && !training;
}

// Up-front input projections of at least this many rows and multiply-adds are one large GEMM: at::mm's,
// or float_gemm.h's where packed_float_gemm() (see below).
constexpr int64_t kLargeProjectionRows = 64;
constexpr int64_t kLargeProjectionWork = int64_t{1} << 22;
// Smaller ones of at most this many rows are mat-vecs reading W_ih in place: packing it for the GEMM
// allocated a copy as large as W_ih (196 KiB for a GRU at H=128, more than torch.nn's whole B=1, T=50
// call) and took as long as the mat-vecs save.
constexpr int64_t kMatvecRows = 64;
// The rows of x stored in 16 bits widened at once for them (4 KiB of float32 a row at I = 1024).
constexpr int64_t kWidenedRows = 16;

// project_steps(): at most this many steps at once, their pre-activations at most this many bytes (the
// buffer of all row groups together; never more than the (N, G) projections up front would take). A
// layer stored in 16 bits takes at most kMaxProjectedSteps16 steps, so that it keeps holding about half
// the memory of its float32 twin (the buffer is float32): 4 steps ran as fast as 16 there (bfloat16
// LSTM T=50 B=16 H=256 inference on the Intel Xeon: 1.28 ms step by step, 1.13 with 4 or 16 steps).
constexpr int64_t kMaxProjectedSteps = 32;
constexpr int64_t kMaxProjectedSteps16 = 4;
constexpr int64_t kProjectedBytes = int64_t{1} << 20;

// T: the type the layer computes in; S: its storage type (storage.h), x's and w_ih's.
template <typename T, typename S = T>
class StepInput {
 public:
  // x (N, I) contiguous, w_ih (G, I) contiguous, b_ih and b_hh (G, in T, or in the weights' 16 bits with T
  // float: widened as they are added) or none; b_hh is added here where the cell adds it to the input
  // pre-activations (adds_b_hh: LSTM and RNN; layers.h's input_bias). batch: the layer's (StepProduct);
  // per_step: project_per_step().
  StepInput(const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
            const c10::optional<at::Tensor>& b_hh, bool adds_b_hh, int64_t batch, bool per_step)
      : G_(w_ih.size(0)), I_(x.size(1)), small_batch_(batch <= kSmallRows) {
    const c10::optional<at::Tensor> no_bias;
    const c10::optional<at::Tensor>& bias2 = adds_b_hh && b_ih.has_value() ? b_hh : no_bias;
    const c10::optional<at::Tensor>& bias = adds_b_hh && !b_ih.has_value() ? b_hh : b_ih;
    if (!per_step) {
      project_up_front(x, w_ih, bias, bias2);
      return;
    }
    x_ = x;
    bias_ = bias_sum(bias, bias2, x.options().dtype(c10::CppTypeToScalarType<T>::value));
    w_ih_.emplace(w_ih, /*transposed=*/true, batch, x.size(0));
  }

  // Whether the steps project their own rows (then project_steps() writes products without the bias).
  bool per_step() const { return !gx_.defined(); }

  // Per step with mat-vecs (at most kSmallRows rows): then a step's input pre-activations are made with
  // the bias (rows(), project_units()), apart from its hidden ones, each element as up front: the layer's
  // outputs are bitwise those of the projections up front. (The packed products of larger batches are
  // added into the hidden ones instead: project_steps().)
  bool projects_rows_apart() const { return per_step() && small_batch_; }

  // projects_rows_apart() only: out (rows, columns [begin, end) + r stride of G for r < repeats, ldo
  // apart) = the x rows [row0, row0 + rows) @ W_ih^T + the bias, on the calling thread: for loops that
  // split the units between threads (a thread's units in each gate).
  void project_units(int64_t row0, int64_t rows, T* out, int64_t ldo, int64_t begin, int64_t end,
                     int64_t repeats = 1, int64_t stride = 0) const {
    TORCH_CHECK(projects_rows_apart(), "StepInput: project_units is for per-step mat-vecs");
    w_ih_->run_columns(x_.data_ptr<S>() + row0 * I_, I_, out, ldo, rows, begin, end, repeats, stride);
    for (int64_t r = 0; r < repeats; ++r) {
      const int64_t first = begin + r * stride;
      add_bias_rows(out + first, ldo, rows, end - begin, bias_.data_ptr<T>() + first);
    }
  }

  // Per step only: out = the x rows of `count` consecutive steps of a row group @ W_ih^T, as one product,
  // the steps' rows one after the other in out (ldo apart), so that W_ih is read once for them all: each
  // step then reads W_hh alone, and W_ih and W_hh together (2 MiB at H = 256 in float32) need not fit in
  // a core's L2. The steps' rows of x are gathered into one block first, unless they follow each other
  // already. Each output is summed as one step's own product would sum it (gemm_cpu.h: the same
  // whatever the rows).
  //
  // With p0 <= p1, only the bfloat16 products' panels [p0, p1) of the columns, on the calling thread
  // (StepProduct::run_panels), for loops that split them between threads.
  void project_steps(const GroupStep* steps, int64_t count, T* out, int64_t ldo, int64_t p0 = 0,
                     int64_t p1 = -1) const {
    int64_t rows = 0;
    bool adjacent = true;
    for (int64_t j = 0; j < count; ++j) {
      adjacent = adjacent && steps[j].row0 == steps[0].row0 + rows;
      rows += steps[j].rows;
    }
    at::Tensor block;
    const S* a = x_.data_ptr<S>() + steps[0].row0 * I_;
    if (!adjacent) {
      block = cpu_empty({rows, I_}, x_.scalar_type());
      S* dst = block.data_ptr<S>();
      for (int64_t j = 0; j < count; ++j) {
        const int64_t n = steps[j].rows * I_;
        std::memcpy(dst, x_.data_ptr<S>() + steps[j].row0 * I_, n * sizeof(S));
        dst += n;
      }
      a = block.data_ptr<S>();
    }
    if (p0 <= p1) return w_ih_->run_panels(a, I_, out, ldo, rows, /*accumulate=*/false, p0, p1);
    w_ih_->run(a, I_, out, ldo, rows, /*accumulate=*/false);
  }

  // How many steps project_steps() should take at once, for a layer whose steps' pre-activations take
  // step_bytes each: one where each step projects its rows apart (at most kSmallRows rows: the loops
  // that take several steps' rows at once do so themselves), else as many as fit in kProjectedBytes
  // (so they stay in L2 beside W_hh).
  int64_t steps_at_once(int64_t step_bytes) const {
    if (!per_step() || projects_rows_apart()) return 1;
    const int64_t most = std::is_same_v<S, T> ? kMaxProjectedSteps : kMaxProjectedSteps16;
    return std::clamp<int64_t>(kProjectedBytes / std::max<int64_t>(1, step_bytes), 1, most);
  }

  // The input pre-activations with the bias of `count` steps' rows of a group, one after the other at
  // row stride G: in gx (one step at a time: steps_at_once()), or per step computed into `scratch`
  // (for GRU, whose input and hidden projections stay apart).
  const T* rows(const GroupStep* steps, int64_t count, T* scratch) const {
    if (!per_step()) {
      TORCH_CHECK(count == 1, "StepInput: projections up front are taken one step at a time");
      return gx_.data_ptr<T>() + steps[0].row0 * G_;
    }
    project_steps(steps, count, scratch, G_);
    int64_t rows = 0;
    for (int64_t j = 0; j < count; ++j) rows += steps[j].rows;
    add_bias_rows(scratch, G_, rows, G_, bias_.data_ptr<T>());
    return scratch;
  }

  // Up front only: rows row0.. of gx, which each step may accumulate its products into (a row is read
  // by its own step alone).
  T* rows_to_accumulate(int64_t row0) const {
    TORCH_CHECK(!per_step(), "StepInput: no rows up front");
    return gx_.data_ptr<T>() + row0 * G_;
  }

  // What the pointwise pass adds for sequence row `row`: its gx row, or per step the bias alone
  // (the products went into the gate buffer).
  const T* row(int64_t row) const {
    return per_step() ? bias_.data_ptr<T>() : gx_.data_ptr<T>() + row * G_;
  }

 private:
  // One product over all N rows. Small ones with the steps' own GEMM: there at::mm's
  // result (MKL's) depends on the number of threads (seen from 1 to 3 threads at 5 x 7 x 148 and
  // 25 x 7 x 37). Large ones with at::mm, which is faster there (122 against about 60 GFLOP/s at
  // 6400 x 512 x 2048 on 2 Zen 4 cores) and gave the same result for 1 to 3 threads at every size
  // tried from 80 x 37 x 148 to 6400 x 512 x 2048 (tests/test_thread_count.py checks one); or, where
  // packed_float_gemm() (Zen 5), with float_gemm.h's, which is faster than at::mm there.
  // w_ih may be bfloat16 or float16 (StepProduct): then the packed bfloat16 products or the mat-vecs,
  // which read it as it is. x is then stored in that dtype too (S, storage.h): the mat-vecs widen x a
  // block of rows at a time.
  // bias (+ bias2, given only with bias) is added to every row, the two summed as the rows are made, not
  // into a tensor first (which took 0.5 of a generation loop's 7 µs one-step RNN layer call).
  void project_up_front(const at::Tensor& x, const at::Tensor& w_ih_given, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& bias2) {
    const int64_t N = x.size(0);
    const bool large = N >= kLargeProjectionRows && N * I_ * G_ >= kLargeProjectionWork;
    const bool weights_16 = w_ih_given.scalar_type() != c10::CppTypeToScalarType<T>::value;  // storage.h
    // The bfloat16 products, as the steps' own (float32 weights keep at::mm or the GEMM below up front).
    if (weights_16 && packs_small_batch<T>(w_ih_given, kSmallRows, N)) {
      gx_ = cpu_empty({N, G_}, c10::CppTypeToScalarType<T>::value);
      StepProduct<T>(w_ih_given, /*transposed=*/true, /*batch=*/kSmallRows, N)  // up front: a few rows a step
          .run(x.data_ptr<S>(), I_, gx_.data_ptr<T>(), G_, N, /*accumulate=*/false);
      add_bias(bias, bias2);
      return;
    }
    // No packed copy of w_ih (matmul_cpu.h): few rows, or 16-bit weights, which the mat-vecs take at any N
    // as they are (bfloat16 in bfloat16 where bf16_matvecs(), else each weight widened), as inference's
    // per-step projections do, so that training's forward gives inference's outputs; not a float32 copy of
    // w_ih for at::mm (with the bfloat16 products, LSTM T=50 B=4 H=256: 2x the time of torch.nn's bfloat16
    // GEMM).
    if ((!large && N <= kMatvecRows) || weights_16) {
      gx_ = cpu_empty({N, G_}, c10::CppTypeToScalarType<T>::value);
      with_weights<T>(w_ih_given, [&](const auto* w) {
        if constexpr (std::is_same_v<S, T>) {
          matvecs_nt(x.data_ptr<T>(), I_, w, I_, gx_.data_ptr<T>(), G_, N, G_, I_, false);
        } else {  // x stored in 16 bits: kWidenedRows rows at a time widened (exact), never a whole copy
          for (int64_t r0 = 0; r0 < N; r0 += kWidenedRows) {
            const int64_t rows = std::min(kWidenedRows, N - r0);
            const StepScratch<T> widened(rows * I_, gx_.options());
            widen_rows(x.data_ptr<S>() + r0 * I_, I_, widened.data(), I_, rows, I_);
            matvecs_nt(widened.data(), I_, w, I_, gx_.data_ptr<T>() + r0 * G_, G_, rows, G_, I_, false);
          }
        }
      });
      add_bias(bias, bias2);
      return;
    }
    TORCH_CHECK((std::is_same_v<S, T>), "StepInput: x stored in 16 bits is projected by the mat-vecs");
    const at::Tensor w_ih = w_ih_given.to(x.scalar_type());  // no copy where it is in T
    if (large && packed_float_gemm()) {  // our packed GEMM over all rows, where it is faster than at::mm
      gx_ = cpu_empty({N, G_}, x.scalar_type());
      float_gemm(x, w_ih.t(), gx_, /*accumulate=*/false);
      add_bias(bias, bias2);
      return;
    }
    if (large) {  // weights in T here, and so the biases (checks.h)
      gx_ = input_projection(x, w_ih, bias2.has_value() ? c10::optional<at::Tensor>(*bias + *bias2) : bias)
                .contiguous();
      return;
    }
    gx_ = cpu_empty({N, G_}, x.scalar_type());
    StepProduct<T>(w_ih, /*transposed=*/true, N).run(x.data_ptr<T>(), I_, gx_.data_ptr<T>(), G_, N,
                                                    /*accumulate=*/false);
    add_bias(bias, bias2);
  }

  // gx_ += bias (+ bias2), on every row.
  void add_bias(const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& bias2) {
    if (!bias.has_value()) return;
    const at::Tensor b = bias->contiguous(), b2 = bias2.has_value() ? bias2->contiguous() : at::Tensor();
    with_weights<T>(b, [&](const auto* first) {
      using B = std::remove_cv_t<std::remove_pointer_t<decltype(first)>>;
      add_bias_rows(gx_.data_ptr<T>(), G_, gx_.size(0), G_, first, b2.defined() ? b2.data_ptr<B>() : nullptr);
    });
  }

  // bias (+ bias2) in T as a fresh (G) tensor (bias itself where it is in T and alone), zeros without
  // them: one tensor and one pass, where float32 copies of 16-bit biases and their sum took three (a
  // 2-layer RNN's one-step call at B=1 H=200: bfloat16 17.6 -> 14.1 µs, float16 14.9 -> 13.0).
  at::Tensor bias_sum(const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& bias2,
                      const at::TensorOptions& options) const {
    if (!bias.has_value()) return at::zeros({G_}, options);
    const at::Tensor b = bias->contiguous(), b2 = bias2.has_value() ? bias2->contiguous() : at::Tensor();
    if (!b2.defined() && b.scalar_type() == c10::CppTypeToScalarType<T>::value) return b;
    at::Tensor sum = at::empty({G_}, options);
    T* out = sum.data_ptr<T>();
    with_weights<T>(b, [&](const auto* first) {
      using B = std::remove_cv_t<std::remove_pointer_t<decltype(first)>>;
      if (b2.defined()) {
        const B* second = b2.data_ptr<B>();
        for (int64_t j = 0; j < G_; ++j) out[j] = widen(first[j]) + widen(second[j]);
      } else {
        for (int64_t j = 0; j < G_; ++j) out[j] = widen(first[j]);
      }
    });
    return sum;
  }

  int64_t G_, I_;
  bool small_batch_;                      // at most kSmallRows rows a step
  at::Tensor gx_;                         // one GEMM up front: (N, G) with the bias, or else:
  at::Tensor x_, bias_;                   // x (N, I, in S) and the bias (G), zeros when absent
  std::optional<StepProduct<T>> w_ih_;    // W_ih packed for the steps' products
};

}  // namespace fastcells::cpu::FASTCELLS_ISA
