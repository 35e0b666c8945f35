// Parameter initialization (spec/MODEL.md section 8).
//
// Every element is a pure function of (seed, parameter name, element index) through the
// counter-based generator, so a tensor-parallel rank can draw just its slice and get the
// same numbers as a single process drawing the whole tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "core/param_layout.h"

namespace par {

// Standard normal truncated to [-2, 2], for element `e` of the stream named `name`.
double truncated_normal(uint64_t seed, const std::string& name, uint64_t e);

// Fills host (layout().total() elements, gaps zero) with the initial parameters. A
// tensor-parallel layout gets exactly its slices of the single-rank initialization.
template <typename T>
void init_parameters(const ParamLayout& layout, uint64_t seed, std::vector<T>& host);

}  // namespace par
