// What the CUDA glue (layers_cuda.cpp) offers besides its ops, for fastcells._C (../ops.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace fastcells::cuda {

// How the layer ops pick the persistent kernels (persistent_choice.h): mode "table" (the default unless
// FASTCELLS_CUDA_PERSISTENT is set when fastcells._C loads), "on" (every call where they fit, with
// `units` hidden units a block, 8 or 16, flag (true) or grid.sync (false) synchronization, and the
// blocks a thread-block cluster, 1, 2, 4 or 8 (more than 1 with flags only)) or "off".
void set_persistent(const std::string& mode, int units, bool flag_sync, int cluster);

// Records fastcells/dispatch.py's choice for one call shape (cell "lstm", "gru" or "rnn"; dtype
// "float16", "bfloat16" or "float32"): a variant, or units 0 for the per-step path.
void record_persistent_choice(const std::string& cell, const std::string& dtype, int64_t batch, int64_t H,
                              bool training, int units, bool flag_sync, int cluster);

// How many layer forwards ran the persistent kernel since fastcells._C loaded (tests and benchmarks
// say with it which path ran).
int64_t persistent_launches();
// How many of those ran in thread-block clusters.
int64_t persistent_cluster_launches();

}  // namespace fastcells::cuda
