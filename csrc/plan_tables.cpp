#include "plan_tables.h"

#include "fastcells/persistent_plan.h"

namespace fastcells {

std::map<std::string, std::vector<int64_t>> persistent_plan_tables(int gates, int units, int64_t H,
                                                                    int64_t batch, int64_t steps,
                                                                    bool reverse, bool backward,
                                                                    const std::vector<int64_t>& sizes,
                                                                    bool tf32) {
  using namespace persistent;
  const Plan plan{gates, units, H, batch, backward, tf32};
  std::vector<int64_t> offsets{0};
  for (const int64_t size : sizes) offsets.push_back(offsets.back() + size);
  const int64_t* sizes_ptr = sizes.empty() ? nullptr : sizes.data();
  const int64_t* offsets_ptr = sizes.empty() ? nullptr : offsets.data();
  std::map<std::string, std::vector<int64_t>> t;
  t["warps"] = {kWarps};
  t["threads"] = {kThreads};
  t["tile"] = {kTileM, kTileN, plan.tile_k()};
  t["m_tiles"] = {plan.m_tiles()};
  t["k_tiles"] = {plan.k_tiles()};
  t["n_tiles"] = {plan.n_tiles()};
  t["blocks"] = {plan.blocks()};
  t["k_tiles_per_warp"] = {plan.k_tiles_per_warp()};
  t["h_stride"] = {plan.h_stride()};
  t["slots"] = {plan.slots()};
  t["partial_size"] = {plan.partial_bytes() / 4};
  for (int lane = 0; lane < 32; ++lane) {  // (32, a_elements), (32, b_elements), (32, 4), (32,)
    for (int e = 0; e < plan.a_elements(); ++e) {
      t["a_row"].push_back(plan.a_row(lane, e));
      t["a_k"].push_back(plan.a_k(lane, e));
    }
    for (int e = 0; e < plan.b_elements(); ++e) t["b_k"].push_back(plan.b_k(lane, e));
    for (int e = 0; e < 4; ++e) {
      t["c_row"].push_back(c_row(lane, e));
      t["c_n"].push_back(c_n(lane, e));
    }
    t["b_n"].push_back(b_n(lane));
  }
  const int rows = plan.m_tiles() * kTileM;
  const int64_t depth = plan.k_tiles_per_warp() * kWarps * plan.tile_k();  // every k some warp's tiles cover
  for (int64_t block = 0; block < plan.blocks(); ++block) {  // (blocks, rows, depth), (blocks, units)
    for (int r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < depth; ++k) t["weight_index"].push_back(plan.weight_index(block, r, k));
    }
    for (int u = 0; u < units; ++u) t["unit"].push_back(plan.unit(block, u));
  }
  for (int warp = 0; warp < kWarps; ++warp) {  // (warps, k_tiles_per_warp), (warps, rows, padded batch)
    for (int j = 0; j < plan.k_tiles_per_warp(); ++j) t["k_tile"].push_back(plan.k_tile(warp, j));
    for (int r = 0; r < rows; ++r) {
      for (int64_t n = 0; n < plan.padded_batch(); ++n) t["partial_index"].push_back(plan.partial_index(warp, r, n));
    }
  }
  for (int g = 0; g < gates; ++g) {  // (gates, units), (gates, H)
    for (int u = 0; u < units; ++u) t["local_row"].push_back(plan.local_row(g, u));
    for (int64_t unit = 0; unit < H; ++unit) t["gate_column"].push_back(plan.gate_column(g, unit));
  }
  for (int64_t slot = 0; slot < plan.slots(); ++slot) {  // (slots,)
    t["slot_unit"].push_back(plan.slot_unit(slot));
    t["slot_batch"].push_back(plan.slot_batch(slot));
  }
  for (int64_t s = 0; s <= steps; ++s) {  // (steps,), (steps + 1,): the backward's phase after the loop
    if (s < steps) t["time"].push_back(plan.time(s, steps, reverse));
    t["prev_time"].push_back(plan.prev_time(s, steps, reverse));
  }
  for (int64_t time = 0; time < steps; ++time) {  // (steps,), (steps, batch): -1 past a step's batch
    const int64_t step_batch = plan.step_batch(time, sizes_ptr);
    t["step_batch"].push_back(step_batch);
    for (int64_t b = 0; b < batch; ++b) t["row"].push_back(b < step_batch ? plan.row(time, b, offsets_ptr) : -1);
  }
  // Cluster staging, for clusters of 2, 4 and 8 blocks and groups of 1 and of a 16-byte chunk's
  // elements: staged_block_<cluster> (cluster, max over ranks) and staged_column_<cluster>_<per>
  // (cluster, max over ranks), -2 past a rank's count.
  const int chunk = 16 / plan.element_bytes();
  for (const int cluster : {2, 4, 8}) {
    const std::string c = std::to_string(cluster);
    const int64_t most_blocks = plan.staged_blocks(cluster, 0);
    for (int rank = 0; rank < cluster; ++rank) {
      for (int64_t m = 0; m < most_blocks; ++m) {
        t["staged_block_" + c].push_back(m < plan.staged_blocks(cluster, rank) ? plan.staged_block(cluster, rank, m)
                                                                              : -2);
      }
    }
    for (const int per : {1, chunk}) {
      const std::string key = "staged_column_" + c + "_" + std::to_string(per);
      const int64_t most = plan.staged_groups(cluster, 0, per);
      for (int rank = 0; rank < cluster; ++rank) {
        for (int64_t q = 0; q < most; ++q) {
          t[key].push_back(q < plan.staged_groups(cluster, rank, per) ? plan.staged_column(cluster, rank, q, per) : -2);
        }
      }
    }
  }
  return t;
}

}  // namespace fastcells
