// What the layer ops of every device share: argument checks, the input side of a layer (its bias
// and its gradients), weight gradients. The saved-activation layouts are in fastcells/saved_layout.h.
//
// Shapes: N rows of the flattened sequence (see schedule.h), I input features, B batch, H hidden,
// P = proj_size or H, G gate columns (4H LSTM, 3H GRU, H RNN). The checks cover shapes, and dtype and
// device agreement between arguments (the weights' dtype may be another than x's where the caller
// says which: `weights`, checks.h's check_weight); which dtypes a device computes in is checked by its
// own implementation (FC_CHECK_FLOATING on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <initializer_list>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/bf16_backward_gemm.h"
#include "fastcells/saved_layout.h"

namespace fastcells {

// LSTM forward: x, w_ih, b_ih, b_hh as above (G = 4H), h0 (B, P), c0 (B, H), w_hh (4H, P),
// w_hr (P, H) or none.
inline LstmLayout check_lstm_layer_fwd_args(const at::Tensor& x, const at::Tensor& w_ih,
                                            const c10::optional<at::Tensor>& b_ih,
                                            const c10::optional<at::Tensor>& b_hh,
                                            const at::Tensor& h0, const at::Tensor& c0,
                                            const at::Tensor& w_hh,
                                            const c10::optional<at::Tensor>& w_hr,
                                            c10::optional<at::ScalarType> weights = c10::nullopt) {
  FC_CHECK_DIM(c0, 2);
  const int64_t H = c0.size(1);
  if (w_hr.has_value()) FC_CHECK_DIM((*w_hr), 2);
  const LstmLayout L{H, w_hr.has_value() ? w_hr->size(0) : H, w_hr.has_value()};
  check_input_args(x, w_ih, b_ih, b_hh, 4 * H, weights);
  FC_CHECK_SHAPE(h0, c0.size(0), L.P);
  FC_CHECK_SHAPE(w_hh, 4 * H, L.P);
  FC_CHECK_LIKE(h0, x);
  FC_CHECK_LIKE(c0, x);
  check_weight(w_hh, "w_hh", x, weights);
  if (L.proj) {
    FC_CHECK_SHAPE((*w_hr), L.P, H);  // (P was read from it: this checks its dims and H)
    check_weight(*w_hr, "w_hr", x, weights);
  }
  return L;
}

// GRU (gates_per_unit 3) and RNN (1) forward: x, w_ih, b_ih, b_hh as above (G = gates_per_unit * H),
// h0 (B, H), w_hh (G, H). Returns H.
inline int64_t check_layer_fwd_args(const at::Tensor& x, const at::Tensor& w_ih,
                                    const c10::optional<at::Tensor>& b_ih,
                                    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                    const at::Tensor& w_hh, int64_t gates_per_unit,
                                    c10::optional<at::ScalarType> weights = c10::nullopt) {
  FC_CHECK_DIM(h0, 2);
  const int64_t H = h0.size(1), G = gates_per_unit * H;
  check_input_args(x, w_ih, b_ih, b_hh, G, weights);
  FC_CHECK_SHAPE(w_hh, G, H);
  FC_CHECK_LIKE(h0, x);
  check_weight(w_hh, "w_hh", x, weights);
  return H;
}

// LSTM backward: dy (N, P), dhn (B, P), dcn (B, H), saved (N, width), x, w_ih, b_ih, b_hh as the
// forward's, w_hh (4H, P), w_hr (P, H) or none.
inline LstmLayout check_lstm_layer_bwd_args(
    const at::Tensor& dy, const at::Tensor& dhn, const at::Tensor& dcn, const at::Tensor& saved,
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, c10::optional<at::ScalarType> weights = c10::nullopt) {
  FC_CHECK_DIM(dy, 2);
  FC_CHECK_DIM(dhn, 2);
  FC_CHECK_DIM(dcn, 2);
  const LstmLayout L{dcn.size(1), dhn.size(1), w_hr.has_value()};
  const int64_t N = dy.size(0);
  FC_CHECK_SHAPE(dy, N, L.P);
  FC_CHECK_SHAPE(dhn, dcn.size(0), L.P);
  FC_CHECK_SHAPE(saved, N, L.width());
  FC_CHECK_SHAPE(w_hh, 4 * L.H, L.P);
  FC_CHECK_LIKE(dhn, dy);
  FC_CHECK_LIKE(dcn, dy);
  FC_CHECK_LIKE(saved, dy);
  FC_CHECK_LIKE(x, dy);
  check_weight(w_hh, "w_hh", dy, weights, "dy");
  if (L.proj) {
    FC_CHECK_SHAPE((*w_hr), L.P, L.H);
    check_weight(*w_hr, "w_hr", dy, weights, "dy");
  }
  check_input_args(x, w_ih, b_ih, b_hh, 4 * L.H, weights);
  FC_CHECK_SHAPE(x, N, x.size(1));
  return L;
}

// GRU and RNN backward: dy (N, H), dhn (B, H), saved (N, saved_per_unit * H), x, w_ih, b_ih, b_hh
// as the forward's, w_hh (G, H). Returns H.
inline int64_t check_layer_bwd_args(const at::Tensor& dy, const at::Tensor& dhn,
                                    const at::Tensor& saved, const at::Tensor& x,
                                    const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                                    const c10::optional<at::Tensor>& b_hh, const at::Tensor& w_hh,
                                    int64_t gates_per_unit, int64_t saved_per_unit,
                                    c10::optional<at::ScalarType> weights = c10::nullopt) {
  FC_CHECK_DIM(dy, 2);
  FC_CHECK_DIM(dhn, 2);
  const int64_t H = dhn.size(1), N = dy.size(0), G = gates_per_unit * H;
  FC_CHECK_SHAPE(dy, N, H);
  FC_CHECK_SHAPE(saved, N, saved_per_unit * H);
  FC_CHECK_SHAPE(w_hh, G, H);
  FC_CHECK_LIKE(dhn, dy);
  FC_CHECK_LIKE(saved, dy);
  FC_CHECK_LIKE(x, dy);
  check_weight(w_hh, "w_hh", dy, weights, "dy");
  check_input_args(x, w_ih, b_ih, b_hh, G, weights);
  FC_CHECK_SHAPE(x, N, x.size(1));
  return H;
}

// The bias of a layer's input projection x @ w_ih^T + bias. LSTM and RNN add b_hh to the same
// pre-activations (adds_b_hh): it is folded in here, whichever of the two biases is given. GRU keeps
// b_hh apart (n = tanh(W_in x + b_in + r * (W_hn h + b_hn))): its bias is b_ih alone.
inline c10::optional<at::Tensor> input_bias(const c10::optional<at::Tensor>& b_ih,
                                            const c10::optional<at::Tensor>& b_hh, bool adds_b_hh) {
  if (!adds_b_hh || !b_hh.has_value()) return b_ih;
  if (!b_ih.has_value()) return b_hh;
  return *b_ih + *b_hh;
}

// gx (N, G) = x (N, I) @ w_ih^T + bias: the input projections of all rows, one GEMM.
inline at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih,
                                   const c10::optional<at::Tensor>& bias) {
  return bias.has_value() ? at::addmm(*bias, x, w_ih.t()) : at::mm(x, w_ih.t());
}

// a @ b with both operands in dtype `in` (converted where they are not), the result in dtype `out`.
// The CPU backward of a bfloat16 layer multiplies in bfloat16 this way: oneDNN's bfloat16 GEMM, with
// float32 sums, runs at twice float32's speed on CPUs with AVX-512 BF16, and the results are rounded
// to bfloat16 on return anyway.
inline at::Tensor mm_in(const at::Tensor& a, const at::Tensor& b, at::ScalarType in, at::ScalarType out) {
  return at::mm(a.to(in), b.to(in)).to(out);
}

// mm_in written into dst (in dst's dtype), a block of a larger result: no fresh tensor to copy in.
inline void mm_in_into(at::Tensor dst, const at::Tensor& a, const at::Tensor& b, at::ScalarType in) {
  if (dst.scalar_type() == in) {
    at::mm_out(dst, a.to(in), b.to(in));
  } else {
    dst.copy_(at::mm(a.to(in), b.to(in)));
  }
}

// Whether products with operands in dtype `in` into a CPU tensor like `dst` go to cpu::backward_gemm
// (cpu/bf16_backward_gemm.h: a 16-bit GEMM with float32 sums, MKL's or ours, or our float32 one) rather
// than at::mm: bfloat16 or float16 operands where this process has a GEMM for them, float32 ones into a
// float32 dst where it takes ours.
inline bool on_cpu_backward_gemm(const at::Tensor& dst, at::ScalarType in) {
  if (!dst.is_cpu()) return false;
  if (in == at::kFloat) return dst.scalar_type() == at::kFloat && cpu::packed_float_gemm();
  if (in == at::kHalf) return cpu::f16_backward_gemm();
  return in == at::kBFloat16 && cpu::bf16_backward_gemm() != cpu::Bf16BackwardGemm::none;
}

// out (rows, n) = the sum of a_i's rows [r0, r0 + rows) @ b_i over `products` by cpu::backward_gemm
// (out float32, with unit column stride).
inline void cpu_gemm_sum_rows(const at::Tensor& out, const std::vector<std::pair<at::Tensor, at::Tensor>>& products,
                              int64_t r0, int64_t rows) {
  bool accumulate = false;
  for (const auto& [a, b] : products) {
    cpu::backward_gemm(a.narrow(0, r0, rows), b, out, accumulate);
    accumulate = true;
  }
}

// Whether cpu::backward_gemm rounds the sums of `products` into a bfloat16 dst itself (ours does: then no
// float32 sums are kept beside dst): one product, whose operands dst does not overlap (dx_in_place writes
// dx over dg, which the GEMM's other blocks still read).
inline bool cpu_gemm_rounds_into(const at::Tensor& dst,
                                 const std::vector<std::pair<at::Tensor, at::Tensor>>& products) {
  return cpu::bf16_backward_gemm() == cpu::Bf16BackwardGemm::vdpbf16ps && dst.scalar_type() == at::kBFloat16 &&
         (dst.stride(1) == 1 || dst.size(1) <= 1) && products.size() == 1 &&
         !dst.is_alias_of(products[0].first) && !dst.is_alias_of(products[0].second);
}

// dst (m, n) = the sum of a_i (m, k_i) @ b_i (k_i, n) over `products` (operands in 16 bits or float32) by
// cpu::backward_gemm: straight into dst where it is float32 and no operand (or cpu_gemm_rounds_into),
// else into float32 sums of at most `block` of dst's rows at a time, each block rounded (or copied) once
// to dst when its sums are complete: so dst may be an operand whose row i only row i of dst depends on
// (dx_in_place).
inline void cpu_gemm_products_into(at::Tensor dst,
                                   const std::vector<std::pair<at::Tensor, at::Tensor>>& products, int64_t block) {
  if (cpu_gemm_rounds_into(dst, products)) {
    return cpu::backward_gemm(products[0].first, products[0].second, dst, /*accumulate=*/false);
  }
  bool direct = dst.scalar_type() == at::kFloat && (dst.stride(1) == 1 || dst.size(1) <= 1);
  for (const auto& [a, b] : products) direct = direct && !dst.is_alias_of(a) && !dst.is_alias_of(b);
  const int64_t m = dst.size(0);
  if (direct) block = m;
  block = std::max<int64_t>(1, block);
  at::Tensor sums = direct ? dst : at::empty({std::min(block, m), dst.size(1)}, dst.options().dtype(at::kFloat));
  for (int64_t r0 = 0; r0 < m; r0 += block) {
    const int64_t rows = std::min(block, m - r0);
    const at::Tensor out = direct ? dst.narrow(0, r0, rows) : sums.narrow(0, 0, rows);
    cpu_gemm_sum_rows(out, products, r0, rows);
    if (!direct) dst.narrow(0, r0, rows).copy_(out);
  }
}

// cpu_gemm_products_into for a dst in 16 bits (contiguous) that is no operand of its products, with less
// scratch: the float32 sums of a third of the rows left go into dst's own memory, past where those rows
// will be (their sums take twice their place: a third of the rows left fills what is left), and are
// rounded into them in one copy; the rows left once they are at most `tail` go through
// cpu_gemm_products_into's scratch. Each block is another GEMM call, which packs the other operand again,
// and another copy. Thirds, not halves: a half's sums would begin where its rows do, to be rounded in
// place a few rows at a time, ~8 copies a block (with dx made that way too, a GRU's training call at
// T=50 B=4 H=128 was 6% slower; in thirds, and dx as before, within the machine's noise).
inline void cpu_gemm_products_narrowed(at::Tensor dst,
                                       const std::vector<std::pair<at::Tensor, at::Tensor>>& products, int64_t tail) {
  TORCH_CHECK(dst.is_contiguous() && dst.element_size() == 2, "cpu_gemm_products_narrowed: dst in 16 bits");
  if (cpu_gemm_rounds_into(dst, products)) return cpu_gemm_products_into(dst, products, dst.size(0));
  const int64_t m = dst.size(0), n = dst.size(1);
  char* memory = static_cast<char*>(dst.data_ptr());
  const auto sums_offset = [&](int64_t end_row) { return (end_row * n * 2 + 63) / 64 * 64; };  // aligned
  int64_t done = 0;
  while (m - done > std::max<int64_t>(1, tail)) {
    int64_t rows = (m - done) / 3;
    while (rows > 0 && sums_offset(done + rows) + rows * n * 4 > m * n * 2) --rows;
    if (rows == 0) break;
    const at::Tensor sums =
        at::from_blob(memory + sums_offset(done + rows), {rows, n}, dst.options().dtype(at::kFloat));
    cpu_gemm_sum_rows(sums, products, done, rows);
    dst.narrow(0, done, rows).copy_(sums);
    done += rows;
  }
  if (done == m) return;
  std::vector<std::pair<at::Tensor, at::Tensor>> rest;
  for (const auto& [a, b] : products) rest.emplace_back(a.narrow(0, done, m - done), b);
  cpu_gemm_products_into(dst.narrow(0, done, m - done), rest, m - done);
}

// dst (a weight's shape) = the sum of a_i @ b_i over `products`, each with its operands in dtype `in`
// (mm_in): a weight gradient, whose k is a sequence's rows. On the CPU, float32 operands go to our
// GEMM where cpu::packed_float_gemm() (straight into dst), and bfloat16 ones to bf16_backward_gemm
// (MKL's or ours) where this process has one, summed into float32 and rounded once to
// dst's dtype: at::mm (oneDNN's) first copies both operands (1 MiB of scratch for a bfloat16 GRU's dw_ih
// at T=50 B=16 H=128, more than the backward's peak could take beside its own tensors and stay under
// torch.nn's) and ran at half MKL's speed on the Intel Xeon; and it rounds each product to bfloat16
// before the next is added.
// less_scratch: dst's float32 sums mostly in dst itself (cpu_gemm_products_narrowed), for the gradient a
// backward makes last, on top of all else it holds (input_grads).
inline void weight_grad_into(at::Tensor dst, std::initializer_list<std::pair<at::Tensor, at::Tensor>> products,
                             at::ScalarType in, bool less_scratch = false) {
  if (on_cpu_backward_gemm(dst, in)) {
    std::vector<std::pair<at::Tensor, at::Tensor>> operands;
    int64_t operand_elements = 0;
    for (const auto& [a, b] : products) {
      operands.emplace_back(a.to(in), b.to(in));
      operand_elements += a.numel() + b.numel();
    }
    if (less_scratch && dst.element_size() == 2 && dst.is_contiguous()) {
      // Sums of at most a third of the rows in a scratch: 2/3 of dst's size, not twice it, in four calls.
      return cpu_gemm_products_narrowed(dst, operands, dst.size(0) / 3);
    }
    // Float32 sums no larger than the operands: those of a short sequence's gradient (k of a few dozen
    // rows) a block of rows at a time, not a float32 copy of the whole weight. Not smaller: each block is
    // another GEMM call, which packs the other operand again, and another rounding copy; with sums a
    // quarter of the operands, a bfloat16 GRU's training call at T=50 B=4 H=128 took 12% longer (18
    // calls instead of 5), for a peak of 0.99 torch.nn's instead of 1.16.
    const int64_t block = std::max<int64_t>(16, operand_elements / 2 / std::max<int64_t>(1, dst.size(1)));
    cpu_gemm_products_into(dst, operands, block);
    return;
  }
  bool first = true;
  for (const auto& [a, b] : products) {
    if (first) {
      mm_in_into(dst, a, b, in);
    } else if (dst.scalar_type() == in) {
      dst.addmm_(a.to(in), b.to(in));  // no product to allocate and add: 20-40 µs less at B=16
    } else {
      dst.add_(mm_in(a, b, in, dst.scalar_type()));
    }
    first = false;
  }
}

// A weight gradient a @ b (weight_grad_into) as a fresh tensor in dtype `out`.
inline at::Tensor weight_grad(const at::Tensor& a, const at::Tensor& b, at::ScalarType in, at::ScalarType out,
                              bool less_scratch = false) {
  at::Tensor dst = at::empty({a.size(0), b.size(1)}, a.options().dtype(out));
  weight_grad_into(dst, {{a, b}}, in, less_scratch);
  return dst;
}

// The gradients of a layer's input side, one GEMM or sum each over all rows after the time loop,
// from dgx (N, G), the gradient of the input pre-activations: dx (N, I; empty unless need_dx),
// dw_ih (G, I), db_ih and db_hh (G; empty when that bias is absent). dgh_bias is the gradient of
// the pre-activations b_hh is added to: GRU's W_hh h + b_hh; undefined for LSTM and RNN, where that
// is dgx itself, and where the caller gives its sum (RowSums).
struct InputGrads {
  at::Tensor dx, dw_ih, db_ih, db_hh;
};

// The sums over all rows of dgx and of dgh_bias (the bias gradients), where the caller made them
// while it computed the rows: the CPU kernels do where they store dgx in bfloat16 (cpu/storage.h), so
// that the sums add the float32 values; and the CPU GRU's dgh_bias, which it keeps as blocks (only the
// n block differs from dgx's). Undefined: summed here from the rows.
struct RowSums {
  at::Tensor dgx, dgh_bias;
};

// dx = dg @ w_ih written over dg (N, I), half of the rows at a time: a row of dx depends on the same row
// of dg alone, so no second (N, I) tensor is needed, only a half's. dg is then dx. Halves, not smaller
// blocks: each GEMM call costs about 30 µs of thread start-up here, and eighths made an RNN's backward
// at T=50 B=16 H=128 20% slower (eighths side by side on the two threads, each GEMM on one: 15%).
// bfloat16 operands on the CPU go to cpu::backward_gemm as dx_product's, in halves too (float32 ones
// where it takes them, into a half's scratch) (a half's
// float32 sums take dx's bfloat16 size; cpu_gemm_products_into rounds them over the half's rows once its
// products are made, so dg may be its own operand): at::mm's oneDNN scratch (3.5 times dx's size at T=30
// B=1 H=64) took a bfloat16 RNN's training call over torch.nn's peak.
//
// A float16 dg on cpu::backward_gemm goes in eighths (of at least 16 rows), ~5% slower: a half's float32
// sums take dx's own size, and took a float16 RNN's training call at T=50 B=16 H=256 to 1.15 times
// torch.nn's float16 peak (B=1 H=128, one block of 50 rows: 1.02). (torch.nn's bfloat16 layers hold more.)
inline void dx_in_place(at::Tensor& dg, const at::Tensor& w_ih, at::ScalarType in) {
  const int64_t N = dg.size(0), block = std::max<int64_t>(64, (N + 1) / 2);
  if (on_cpu_backward_gemm(dg, in)) {
    const int64_t rows = dg.scalar_type() == at::kHalf ? std::max<int64_t>(16, (N + 7) / 8) : block;
    return cpu_gemm_products_into(dg, {{dg.to(in), w_ih.to(in)}}, rows);
  }
  for (int64_t r0 = 0; r0 < N; r0 += block) {
    at::Tensor rows = dg.narrow(0, r0, std::min(block, N - r0));
    rows.copy_(mm_in(rows, w_ih, in, dg.scalar_type()));
  }
}

// dx (N, I) = dg @ w_ih in dtype `out`. On the CPU with 16-bit operands (or float32 ones where it takes
// them), by cpu::backward_gemm (as weight_grad_into), a quarter of the rows at a time where dx is not
// float32: their float32 sums take half of dx's size. at::mm (oneDNN's) allocated scratch as large as dx
// (a GRU's at T=50 B=16 H=128, on top of the backward's peak, which then went past torch.nn's), and as
// much for each block of rows it was given in turn (each block then cost it another 40-80 µs).
inline at::Tensor dx_product(const at::Tensor& dg, const at::Tensor& w_ih, at::ScalarType in, at::ScalarType out) {
  if (!on_cpu_backward_gemm(dg, in)) return mm_in(dg, w_ih, in, out);
  at::Tensor dx = at::empty({dg.size(0), w_ih.size(1)}, dg.options().dtype(out));
  cpu_gemm_products_into(dx, {{dg.to(in), w_ih.to(in)}}, (dg.size(0) + 3) / 4);
  return dx;
}

// operands: the dtype the GEMMs round their operands to (mm_in); none: dgx's. dw_ih comes in w_ih's
// dtype (where the CPU ops take a bfloat16 call's weights as they are, and multiply in bfloat16, it is
// never widened to float32 and rounded back). dx_over_dgx: dx may be written over dgx (which the caller
// then no longer reads) where they have the same shape and dtype. less_scratch: dw_ih's float32 sums
// mostly in dw_ih (weight_grad_into), for a backward whose peak is near torch.nn's (the CPU GRU's: its
// three more GEMM calls made an LSTM's at T=50 B=16 H=256, at 0.41x torch.nn's peak, ~5% slower).
inline InputGrads input_grads(const at::Tensor& dgx, const at::Tensor& x, const at::Tensor& w_ih,
                              const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh, const at::Tensor& dgh_bias,
                              bool need_dx, c10::optional<at::ScalarType> operands = c10::nullopt,
                              const RowSums& sums = {}, bool dx_over_dgx = false, bool less_scratch = false) {
  // Fresh tensors throughout: an op's outputs must not alias each other.
  const auto absent = [&] { return at::empty({0}, dgx.options()); };
  const auto sum_of = [](const at::Tensor& given, const at::Tensor& rows) {
    return given.defined() ? given : rows.sum(0);
  };
  const at::ScalarType in = operands.value_or(dgx.scalar_type());
  const at::Tensor dg = dgx.to(in);  // rounded once for both GEMMs
  // dw_ih before dx: oneDNN's bfloat16 GEMMs on the CPU allocate scratch (198 KiB for dw_ih at N=480,
  // I=64, where dx is 60 KiB), which then does not come on top of dx.
  InputGrads g;
  g.dw_ih = weight_grad(dg.t(), x, in, w_ih.scalar_type(), less_scratch);
  g.db_ih = absent();
  g.db_hh = absent();
  if (b_ih.has_value()) g.db_ih = sum_of(sums.dgx, dgx);
  if (b_hh.has_value()) {
    if (sums.dgh_bias.defined() || dgh_bias.defined()) {
      g.db_hh = sum_of(sums.dgh_bias, dgh_bias);
    } else {  // one sum over the N rows, not two
      g.db_hh = b_ih.has_value() ? g.db_ih.clone() : sum_of(sums.dgx, dgx);
    }
  }
  // dx last: the bias sums above may read dgx's rows.
  if (!need_dx) {
    g.dx = absent();
  } else if (dx_over_dgx && dg.is_same(dgx) && dgx.sizes() == x.sizes()) {
    g.dx = dgx;
    dx_in_place(g.dx, w_ih, in);
  } else {
    g.dx = dx_product(dg, w_ih, in, dgx.scalar_type());
  }
  return g;
}

// The LSTM weight gradients, one GEMM each over all rows after the time loop: dw_hh (4H, P) from the
// gate gradients dgx (N, 4H), and dw_hr (P, H) from dh_rows (N, P), the gradients of the projected
// outputs (empty without a projection).
// operands as input_grads'; weights: the weights' dtype, the gradients' (none: dgx's).
inline std::pair<at::Tensor, at::Tensor> lstm_weight_grads(
    const at::Tensor& dgx, const at::Tensor& saved, const at::Tensor& dh_rows, const LstmLayout& L,
    c10::optional<at::ScalarType> operands = c10::nullopt, c10::optional<at::ScalarType> weights = c10::nullopt) {
  const at::ScalarType in = operands.value_or(dgx.scalar_type()), out = weights.value_or(dgx.scalar_type());
  at::Tensor dw_hh = weight_grad(dgx.t(), saved.narrow(1, L.h_prev(), L.P), in, out);
  at::Tensor dw_hr = L.proj ? weight_grad(dh_rows.t(), saved.narrow(1, L.h_raw(), L.H), in, out)
                            : at::empty({0}, dgx.options());
  return {dw_hh, dw_hr};
}

}  // namespace fastcells
