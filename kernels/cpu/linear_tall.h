// The linear layer on tall inputs: the k/v projections of every input position (N rows
// of width d, N up to 131072 and beyond, against a d x d weight).
#pragma once

#include <cstdint>

#include "kernels/cpu/workspace.h"

namespace par::cpu {

// Whether a [rows, in] x [in, out] linear layer is tall enough for the row-chunked kernels.
// Sizes in double, so that the memory plan can ask about configs far past int64.
bool is_tall_linear(double rows, double in, double out);

// Bytes of Workspace (the calling thread's kTallLinear slot) that tall_linear_backward takes
// for this shape with `threads` threads: every thread's partial sums. 0 when not tall.
template <typename T>
double tall_linear_scratch_bytes(double rows, double in, double out, int threads);

// y = x w^T + b (b may be null), for tall shapes.
template <typename T>
void tall_linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                         int64_t out);

// dx (= or +=) dy w, dw += dy^T x, db += column sums of dy; any of dx, dw, db may be null.
template <typename T>
void tall_linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                          const T* w, int64_t rows, int64_t in, int64_t out, Workspace& ws);

}  // namespace par::cpu
