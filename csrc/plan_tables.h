// The persistent kernels' partition (fastcells/persistent_plan.h) as tables, for the kernels' CPU model
// (tests/persistent_model.py): fastcells._C.persistent_plan.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fastcells {

// Every index function of the plan for one shape, evaluated over its whole domain, as flat row-major
// tables named after the functions (shapes in plan_tables.cpp), plus the plan's sizes and constants as
// one-element tables. `sizes`: the steps' batch sizes of a packed sequence, or empty (the whole batch
// at every step); `tf32`: the float32 kernels' plan (tf32 fragments), else the 16-bit ones'.
std::map<std::string, std::vector<int64_t>> persistent_plan_tables(int gates, int units, int64_t H,
                                                                    int64_t batch, int64_t steps,
                                                                    bool reverse, bool backward,
                                                                    const std::vector<int64_t>& sizes,
                                                                    bool tf32);

}  // namespace fastcells
