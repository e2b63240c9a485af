// Every header the CPU kernels take from outside csrc/cpu/, for isa_<isa>.cpp to include before its
// `#pragma GCC target`: code from these headers must be compiled for the baseline instruction set
// in every copy, or the linker could keep an AVX-512 copy of an inline function for all callers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../checks.h"
#include "../layers.h"
#include "../schedule.h"
#include "bf16_backward_gemm.h"
#include "bf16_products.h"
#include "row_tiles.h"
#include "fastcells/gate_math.h"
#include "isa.h"
#include "ops_cpu.h"
