// The CPU kernels compiled for CPUs with AVX2, FMA and F16C (see isa.h).
#define FASTCELLS_ISA avx2
#define FASTCELLS_ISA_AVX512 0
#define FASTCELLS_ISA_AVX2 1
#include "isa_prelude.h"

// For the code below only: the headers above stay baseline.
#pragma GCC target("avx2,fma,f16c")
#include "kernels.inc"
