// The CPU kernels compiled for any x86-64 CPU (SSE2): the fallback (see isa.h).
#define FASTCELLS_ISA baseline
#define FASTCELLS_ISA_AVX512 0
#define FASTCELLS_ISA_AVX2 0
#include "isa_prelude.h"

#include "kernels.inc"
