// The CPU kernels compiled for CPUs with AVX-512 (F, BW, DQ, VL) (see isa.h).
#define FASTCELLS_ISA avx512
#define FASTCELLS_ISA_AVX512 1
#define FASTCELLS_ISA_AVX2 1
#include "isa_prelude.h"

// For the code below only: the headers above stay baseline.
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")
#include "kernels.inc"
