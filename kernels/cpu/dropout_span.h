// Residual dropout of a span of one example's elements on the CPU.
#pragma once

#include <cstdint>

#include "core/philox.h"

namespace par::cpu {

// Threads that split an example's elements at multiples of this keep the vector kernel's
// blocks whole (16 Philox calls of 4 elements).
constexpr int64_t kDropoutBlock = 64;

// y[i] = x[i] * keep_scale where dropout_keep(key, example, i, p), else 0, for i in
// [begin, end); x and y point at the example's element 0. Bitwise the same as the scalar
// definition in core/philox.h (and so as the CUDA backend) for float and double.
template <typename T>
void dropout_span(T* y, const T* x, int64_t begin, int64_t end, const DropoutKey& key,
                  uint64_t example, float p, T keep_scale);

}  // namespace par::cpu
