// What the CUDA glue (layers_cuda.cpp) offers besides its ops, for fastcells._C (../ops.cpp).
#pragma once

#include <cstdint>

namespace fastcells::cuda {

// Whether a layer's forward runs the opt-in persistent tensor-core kernel where it fits (persistent.h),
// with `units` hidden units a block (8 or 16) and flag (true) or grid.sync (false) synchronization;
// the default is on where FASTCELLS_CUDA_PERSISTENT=1 when fastcells._C loads, with 8 units and flags.
void set_persistent(bool enabled, int units, bool flag_sync);

// How many layer forwards ran the persistent kernel since fastcells._C loaded (tests and benchmarks
// say with it which path ran).
int64_t persistent_launches();

}  // namespace fastcells::cuda
