// What the CUDA glue (layers_cuda.cpp) offers besides its ops, for fastcells._C (../ops.cpp).
#pragma once

namespace fastcells::cuda {

// Whether an LSTM layer in inference runs the opt-in persistent kernel where it fits (persistent.h);
// the default comes from FASTCELLS_CUDA_PERSISTENT=1 when fastcells._C loads.
void set_persistent(bool enabled);

}  // namespace fastcells::cuda
