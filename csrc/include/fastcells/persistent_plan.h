// The partition of the persistent tensor-core kernels (csrc/cuda/persistent.cu): which block owns which
// rows of W_hh, which warp holds which fragments, where each lane loads and stores, and the shared-memory
// layout. Framework-free and host-callable, so the kernel and its CPU model use the same functions:
// fastcells._C.persistent_plan tabulates them, and tests/persistent_model.py runs the kernel's steps on
// the CPU with those tables, against the reference backend.
//
// Forward (FlashRNN's and cuDNN's recipe, ../../../DESIGN.md "GPU kernels"):
//   - block j owns hidden units [j * units, (j + 1) * units) and all their gate rows, so the pointwise
//     update happens in place and c never leaves the block; its local row r is gate r / units of unit
//     r % units; rows are padded to whole 16-row MMA tiles; K is H;
//   - the block's 8 warps split K by 16-wide k tiles, round robin: warp w holds tiles w, w + 8,
//     w + 16, ... of every m tile as mma.sync A fragments in registers, for the whole sequence;
//   - the batch is the N dimension of mma.sync.m16n8k16 (8 columns a tile);
//   - each warp's partial products go to shared memory and are summed over the warps in a fixed order
//     (deterministic), then one thread a (unit, batch entry) slot finishes the cell.
// Backward (only dh_{t-1} = dG_t W_hh is sequential; weight gradients are GEMMs after the loop): block j
// owns the same units, now as the columns of W_hh: its local row r is unit r, K is gates * H (the gate
// rows of W_hh), and A is W_hh^T restricted to those columns; the B operand is dG_t, read from the
// gradient rows every block writes for its own units.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FC_PLAN_FN __host__ __device__ __forceinline__ constexpr
#else
#define FC_PLAN_FN inline constexpr
#endif

namespace fastcells::persistent {

inline constexpr int kWarps = 8;
inline constexpr int kThreads = 32 * kWarps;
inline constexpr int kTileM = 16, kTileN = 8;  // k: 16 (16-bit mma.sync m16n8k16), 8 (tf32 m16n8k8)
inline constexpr int64_t kMaxBatch = 64;

// Where lane `lane` of a warp puts register element e of an MMA fragment. These are the kernel's loads
// and stores, written from the PTX ISA's fragment figures for m16n8k16 with 16-bit A and B and fp32 C
// (element pairs 2i, 2i + 1 share one 32-bit register and are adjacent in k, or in n for C).
// A (16 x 16, row major): e in 0..7.
FC_PLAN_FN int a_row(int lane, int e) { return lane / 4 + 8 * ((e / 2) % 2); }
FC_PLAN_FN int a_k(int lane, int e) { return (lane % 4) * 2 + e % 2 + 8 * (e / 4); }
// B (16 x 8, k by batch column): e in 0..3.
FC_PLAN_FN int b_k(int lane, int e) { return (lane % 4) * 2 + e % 2 + 8 * (e / 2); }
FC_PLAN_FN int b_n(int lane) { return lane / 4; }
// C and D (16 x 8, fp32): e in 0..3.
FC_PLAN_FN int c_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FC_PLAN_FN int c_n(int lane, int e) { return (lane % 4) * 2 + e % 2; }
// The same for m16n8k8 with tf32 A and B (float32 layers), one element a register:
// A (16 x 8): e in 0..3; B (8 x 8): e in 0..1 (b_n as above); C as above.
FC_PLAN_FN int a_row_tf32(int lane, int e) { return lane / 4 + 8 * (e % 2); }
FC_PLAN_FN int a_k_tf32(int lane, int e) { return lane % 4 + 4 * (e / 2); }
FC_PLAN_FN int b_k_tf32(int lane, int e) { return lane % 4 + 4 * e; }

struct Plan {
  int gates;      // rows per hidden unit: LSTM 4 (i, f, g, o), GRU 3 (r, z, n), RNN 1
  int units;      // hidden units per block
  int64_t H;      // hidden size
  int64_t batch;  // B <= kMaxBatch
  bool backward = false;
  bool tf32 = false;  // float32 weights and states on tf32 tensor cores, else 16-bit ones
  bool staged = false;  // backward in clusters: dG staged in shared memory (the forward always stages h)

  // The MMA's k per tile, the bytes of an element of W_hh and h, and the fragment layouts: register
  // element e of lane `lane` holds A(a_row, a_k) and B(b_k, b_n); a_elements and b_elements per lane.
  FC_PLAN_FN int tile_k() const { return tf32 ? 8 : 16; }
  FC_PLAN_FN int element_bytes() const { return tf32 ? 4 : 2; }
  FC_PLAN_FN int a_elements() const { return tf32 ? 4 : 8; }
  FC_PLAN_FN int b_elements() const { return tf32 ? 2 : 4; }
  FC_PLAN_FN int a_row(int lane, int e) const { return tf32 ? a_row_tf32(lane, e) : persistent::a_row(lane, e); }
  FC_PLAN_FN int a_k(int lane, int e) const { return tf32 ? a_k_tf32(lane, e) : persistent::a_k(lane, e); }
  FC_PLAN_FN int b_k(int lane, int e) const { return tf32 ? b_k_tf32(lane, e) : persistent::b_k(lane, e); }

  // Rows of a block's product (M) and its depth (K).
  FC_PLAN_FN int rows() const { return backward ? units : gates * units; }
  FC_PLAN_FN int64_t depth() const { return backward ? gates * H : H; }
  FC_PLAN_FN int m_tiles() const { return (rows() + kTileM - 1) / kTileM; }
  FC_PLAN_FN int64_t k_tiles() const { return (depth() + tile_k() - 1) / tile_k(); }
  FC_PLAN_FN int64_t n_tiles() const { return (batch + kTileN - 1) / kTileN; }
  FC_PLAN_FN int64_t padded_batch() const { return n_tiles() * kTileN; }
  FC_PLAN_FN int64_t blocks() const { return (H + units - 1) / units; }
  // k tiles a warp holds: the kernel's register array is sized by a compile-time bound >= this.
  FC_PLAN_FN int64_t k_tiles_per_warp() const { return (k_tiles() + kWarps - 1) / kWarps; }

  // The k tile of warp w's j-th fragment column (round robin, so the warps' shares differ by <= 1); its
  // columns are k_tile * tile_k() ... + tile_k() - 1.
  FC_PLAN_FN int64_t k_tile(int warp, int j) const { return warp + int64_t{j} * kWarps; }
  // The hidden unit of a block's local row r, or of pointwise slot unit u: block * units + u.
  FC_PLAN_FN int64_t unit(int64_t block, int u) const { return block * units + u; }
  // The index in W_hh ((gates * H, H), row major) of element (r, k) of block `block`'s A operand: forward
  // W_hh[gate * H + unit][k] for local row r = gate * units + u; backward W_hh[k][unit] for local row
  // r = u. -1 for padding (rows past the block's, units past H in the last block, k past the depth),
  // which holds zero.
  FC_PLAN_FN int64_t weight_index(int64_t block, int r, int64_t k) const {
    const int64_t u = unit(block, r % units);
    if (r >= rows() || u >= H || k >= depth()) return -1;
    return backward ? k * H + u : ((r / units) * H + u) * H + k;
  }
  // The local row holding gate g of unit slot u's product (backward: the unit's dh, whatever g).
  FC_PLAN_FN int local_row(int gate, int u) const { return backward ? u : gate * units + u; }

  // Step s of `steps` runs time step time(s) (backwards in the reverse direction); it reads h_{t-1}
  // from time step prev_time(s) of y, or from h0 where that is -1.
  FC_PLAN_FN int64_t time(int64_t s, int64_t steps, bool reverse) const { return reverse ? steps - 1 - s : s; }
  FC_PLAN_FN int64_t prev_time(int64_t s, int64_t steps, bool reverse) const {
    return s == 0 ? -1 : time(s - 1, steps, reverse);
  }
  // The batch of time step t and the row of its entry b in y, the input projections, saved and the
  // gradients: `sizes` and `offsets` (T and T + 1 entries) are the steps' batch sizes and first rows of a
  // packed sequence (../../schedule.h), or null where every step has the whole batch. Batch entries past
  // a step's batch are idle in it: finished sequences keep their final state, and in the reverse
  // direction late starters keep h0.
  FC_PLAN_FN int64_t step_batch(int64_t t, const int64_t* sizes) const { return sizes ? sizes[t] : batch; }
  FC_PLAN_FN int64_t row(int64_t t, int64_t b, const int64_t* offsets = nullptr) const {
    return offsets ? offsets[t] + b : t * batch + b;
  }
  // The column of gate g of a unit in a row of input projections (gates * H wide).
  FC_PLAN_FN int64_t gate_column(int g, int64_t unit) const { return g * H + unit; }

  // Pointwise slots: one (unit, batch entry) pair each, units fastest so a warp's stores of h are
  // contiguous runs of `units` elements. A block has units * batch of them, threads take every
  // kThreads-th.
  FC_PLAN_FN int64_t slots() const { return units * batch; }
  FC_PLAN_FN int slot_unit(int64_t slot) const { return static_cast<int>(slot % units); }
  FC_PLAN_FN int64_t slot_batch(int64_t slot) const { return slot / units; }

  // Cluster staging (sm_90, flag synchronization): the blocks of a thread-block cluster of `cluster`
  // blocks share the copy of the product's B operand of each step into shared memory (forward: h_{t-1},
  // H columns; backward: dG of the step before, gates * H columns, gate g's at g * H). Rank r of a
  // cluster loads the columns of the units of blocks r, r + cluster, r + 2 * cluster, ... (which those
  // blocks wrote) and stores them into the stage of every block of its cluster, so each column leaves L2
  // once a cluster instead of once a block; and rank r waits for those blocks' flags only. Columns go in
  // groups of `per` elements (a 16-byte chunk, or 1), which divides `units`.
  // The block whose units are the m-th that rank r stages; the number of them.
  FC_PLAN_FN int64_t staged_block(int cluster, int rank, int64_t m) const { return rank + int64_t{cluster} * m; }
  FC_PLAN_FN int64_t staged_blocks(int cluster, int rank) const {
    return blocks() > rank ? (blocks() - rank + cluster - 1) / cluster : 0;
  }
  // Gate blocks of columns in a staged row: forward 1, backward `gates`.
  FC_PLAN_FN int staged_gates() const { return backward ? gates : 1; }
  // The column groups rank r stages in each batch row, and the first column of the q-th of them, or -1
  // for units past H (the last block's).
  FC_PLAN_FN int64_t staged_groups(int cluster, int rank, int per) const {
    return staged_gates() * staged_blocks(cluster, rank) * (units / per);
  }
  FC_PLAN_FN int64_t staged_column(int cluster, int rank, int64_t q, int per) const {
    const int64_t per_gate = staged_blocks(cluster, rank) * (units / per), per_block = units / per;
    const int64_t gate = q / per_gate, in_gate = q % per_gate;
    const int64_t unit = staged_block(cluster, rank, in_gate / per_block) * units + in_gate % per_block * per;
    return unit < H ? gate * H + unit : -1;
  }

  // Shared memory, in this order (each part 16-byte aligned):
  //   h_stage  (padded_batch, h_stride) elements: forward h_{t-1} as the MMA's B operand, zero past H;
  //            backward only where staged (dG of the step before), else none: it reads its B fragments
  //            of dG straight from global memory (each element goes to one warp only, so staging in a
  //            block alone would buy no reuse; in a cluster it saves the L2 reads)
  //   partial  (kWarps, m_tiles * 16, partial_stride) fp32: each warp's partial products
  //   state    (2, slots) fp32: forward c (LSTM) and h of the block's own units; backward dc (LSTM)
  //            and the part of dh carried to the next step (dhn first, then GRU's direct z * dh)
  // 16 bytes past the k tiles: a row stride of 4 mod 32 words puts the 8 batch rows of a B fragment
  // load in different banks, and keeps rows 16-byte aligned for the vector copy.
  FC_PLAN_FN int64_t h_stride() const { return k_tiles() * tile_k() + 16 / element_bytes(); }
  FC_PLAN_FN int64_t h_stage_bytes() const {
    return backward && !staged ? 0 : (padded_batch() * h_stride() * element_bytes() + 15) / 16 * 16;
  }
  // Rows of `partial` are 4 floats longer than the batch: a row stride of 4 mod 32 words spreads a
  // warp's C-fragment stores over the banks (2-way conflicts instead of 8-way at 32 or 64 columns),
  // and the pointwise slots' reads (units fastest) over distinct banks.
  FC_PLAN_FN int64_t partial_stride() const { return padded_batch() + 4; }
  FC_PLAN_FN int64_t partial_index(int warp, int row, int64_t n) const {
    return (int64_t{warp} * m_tiles() * kTileM + row) * partial_stride() + n;
  }
  FC_PLAN_FN int64_t partial_bytes() const { return int64_t{kWarps} * m_tiles() * kTileM * partial_stride() * 4; }
  FC_PLAN_FN int64_t state_bytes() const { return 2 * int64_t{units} * batch * 4; }
  FC_PLAN_FN int64_t shared_bytes() const { return h_stage_bytes() + partial_bytes() + state_bytes(); }
};

}  // namespace fastcells::persistent

#undef FC_PLAN_FN
