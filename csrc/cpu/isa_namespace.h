// The kernel headers and sources open namespace fastcells::cpu::FASTCELLS_ISA: one copy per instruction
// set, each compiled through its isa_<isa>.cpp, which defines FASTCELLS_ISA (see isa.h).
#pragma once

#ifndef FASTCELLS_ISA
#error "the CPU kernels are compiled through isa_<isa>.cpp only (see isa.h)"
#endif
