// Products with bfloat16 operands and float32 sums, for bfloat16 layers on CPUs with AVX-512 BF16
// (its VDPBF16PS multiplies 32 bfloat16 pairs into 16 float32 sums per instruction: twice the float32
// FMA's work, from half the weight bytes), and on AMX tiles where the CPU has them (an Intel Xeon:
// there VDPBF16PS ran at half the float32 FMA's rate, and torch.nn's oneDNN layers use the tiles).
//
// bfloat16 calls run the float32 kernels (register_cpu.cpp). In their forward, the recurrent and
// input products may round their operands to bfloat16 and lose nothing torch.nn keeps: the weights
// and the input are bfloat16 already, and torch.nn's h is a bfloat16 tensor between steps too. The
// sums, the gate math and c stay float32. Backward rounds the gate gradients to bfloat16 for its
// products (per step here; over all rows on MKL's bfloat16 GEMM, or at::mm without it: layers.h's
// weight_grad_into and dx_product), as oneDNN's bfloat16 backward does; the tests hold the gradients to
// torch.nn's own error.
//
// Compiled once, in bf16_products.cpp under its own `#pragma GCC target`; so nothing here is inline,
// and the AVX-512 copy of the kernels (gemm_cpu.h, matmul_cpu.h) calls it only where cpu_has_products().
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fastcells::cpu::bf16 {

// Whether the running CPU has AVX-512 BF16 and this build compiled its products; read once.
bool cpu_has_products();

// Whether the packed products (gemm, gemm_panels) run on AMX tiles: the CPU has AMX-BF16 (with
// AVX-512 BF16) and Linux granted this process the tile registers; FASTCELLS_CPU_AMX=0 turns them off
// (the VDPBF16PS kernels then). Read once. Their sums are added in another order than VDPBF16PS's:
// a bfloat16 layer's result depends on this choice, never on the number of threads.
bool cpu_has_amx();

// Set by register_cpu.cpp around the float32 kernels of a bfloat16 layer op (forward or backward):
// while one is alive in a thread, products_on() is true there (on a CPU with the instructions). A
// scope, not an argument, because the kernels' signatures are the op schemas'.
class ProductsScope {
 public:
  explicit ProductsScope(bool on);
  ~ProductsScope();
  ProductsScope(const ProductsScope&) = delete;
  ProductsScope& operator=(const ProductsScope&) = delete;

 private:
  bool previous_;
};

// Whether this thread's current call may multiply in bfloat16.
bool products_on();

// b (k, n) as bfloat16 pairs: ceil(n / 32) panels, each kp rows of 32 columns, a column's entry the
// 32-bit pair (b[2q][c], b[2q + 1][c]); zero past column n and past row k. kp: ceil(k / 2) rounded up
// to a multiple of 16 (an AMX tile's pairs).
struct PackedWeight {
  at::Tensor storage;  // int32 (the pairs)
  const uint32_t* pairs = nullptr;  // storage's data (read at every step: no dtype check each time)
  int64_t k = 0, n = 0, panels = 0, kp = 0;
};

// Packs b = w^T for w (n, k) (transposed, the forward product a @ W^T) or b = w for w (k, n); w in
// float32 (rounded here) or bfloat16 (taken as it is).
PackedWeight pack(const at::Tensor& w, bool transposed);

// out (m, n) (+)= round_bf16(a) (m, k) @ b, row-major a (float32) and out, sums in float32. Each output
// element is one chain of pair products in k order, however the rows and panels are split: the
// result does not depend on the number of threads.
void gemm(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
          bool accumulate);
// The same with a in bfloat16 already (a layer's bfloat16 input rows): the same result as gemm() of a
// widened to float32.
void gemm(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
          bool accumulate);

// gemm() for b's panels [p0, p1) only (its columns [32 p0, 32 p1), fewer in the last panel), on the
// calling thread: for loops that split the panels between threads they keep for a whole sequence
// (lstm_cpu.inc). Each output element is summed as gemm() sums it.
void gemm_panels(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                 bool accumulate, int64_t p0, int64_t p1);
void gemm_panels(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                 bool accumulate, int64_t p0, int64_t p1);

// gemm() for b's columns [c0 + r stride, c1 + r stride), r < repeats, only, on the calling thread,
// writing (or adding to) nothing else of out: for loops that split a step's columns between threads at
// any column (unit_split.h: a thread's units in each of the gates, H apart). Each output element is
// summed as gemm() sums it.
void gemm_columns(const float* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                  bool accumulate, int64_t c0, int64_t c1, int64_t repeats = 1, int64_t stride = 0);
void gemm_columns(const c10::BFloat16* a, int64_t lda, const PackedWeight& b, float* out, int64_t ldo, int64_t m,
                  bool accumulate, int64_t c0, int64_t c1, int64_t repeats = 1, int64_t stride = 0);

// Mat-vecs reading a bfloat16 weight w (n, k) row-major as it is: out row i (stride ldo), entries [begin,
// end), (+)= w rows [begin, end) times round_bf16(a row i) (stride lda), for i < m. For the layers of a few
// rows a step and fewer than 64 in all and the cell steps (matmul_cpu.h's matvec_rows_multi), which have too
// few rows to pay for packing w, on CPUs with the products (their float32 mat-vecs widened each weight). Each
// output is a sum of pair products in a fixed order, whatever [begin, end), m and the row's place in them:
// splitting the rows between threads changes no result.
void matvec_rows(const c10::BFloat16* w, int64_t ldw, const float* a, int64_t lda, int64_t m, int64_t k,
                 float* out, int64_t ldo, int64_t begin, int64_t end, bool accumulate);

// For tests (fastcells._C.cpu_bf16_matvec_rows): matvec_rows on tensors, w (n, k) bfloat16, a (m, k) and
// out (m, n) float32, each with unit column stride; rows [begin, end) of w, on CPUs with the products.
void matvec_matrices(const at::Tensor& w, const at::Tensor& a, at::Tensor& out, int64_t begin, int64_t end,
                     bool accumulate);

// For tests (fastcells._C.cpu_bf16_packed_columns): w (n, k) bfloat16 packed as b = w^T (pack()), then
// gemm_columns() of a (m, k) float32 into out (m, n) float32's columns [c0, c1) + r stride for r < repeats,
// each with unit column stride; on CPUs with the products.
void packed_columns_matrices(const at::Tensor& w, const at::Tensor& a, at::Tensor& out, int64_t c0, int64_t c1,
                             bool accumulate, int64_t repeats, int64_t stride);

}  // namespace fastcells::cpu::bf16
