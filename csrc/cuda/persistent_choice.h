// Which layer calls run the persistent kernels (persistent.h), and with which variant. Three modes:
//   - on: every call where the kernel fits, with one variant (FASTCELLS_CUDA_PERSISTENT=1 when
//     fastcells._C loads, or backends.cuda.use_persistent(True, ...));
//   - off: never (FASTCELLS_CUDA_PERSISTENT=0, or use_persistent(False));
//   - table (the default): fastcells/dispatch.py resolves each (cell, dtype, batch, H, training) it meets
//     against the table measured on the GPU and records its choice here; calls nobody recorded run the
//     per-step path.
// Framework-free; thread-safe (the table is read under a shared lock, written rarely).
#pragma once

#include <cstdint>
#include <optional>

#include "persistent.h"

namespace fastcells::cuda {

enum class PersistentMode { kTable, kOn, kOff };

// The mode, and the variant `on` runs.
void set_persistent_mode(PersistentMode mode, PersistentConfig on_config);

// Records the table's choice for one call shape: a variant, or none (the per-step path).
void record_persistent_choice(Cell cell, DType dtype, int64_t batch, int64_t H, bool training,
                              std::optional<PersistentConfig> choice);

// The variant a call of this shape runs, or none.
std::optional<PersistentConfig> persistent_choice(Cell cell, DType dtype, int64_t batch, int64_t H,
                                                  bool training);

}  // namespace fastcells::cuda
