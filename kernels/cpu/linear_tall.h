// The linear layer on tall inputs: the k/v projections of every input position (N rows
// of width d, N up to 131072 and beyond, against a d x d weight).
#pragma once

#include <cstdint>

namespace par::cpu {

// Whether a [rows, in] x [in, out] linear layer is tall enough for the row-chunked kernels.
bool is_tall_linear(int64_t rows, int64_t in, int64_t out);

// Bytes of per-thread partial sums that tall_linear_backward keeps (grow-only, per calling
// thread) for this shape with `threads` threads; 0 when the shape is not tall.
int64_t tall_linear_scratch_bytes(int64_t rows, int64_t in, int64_t out, int threads,
                                  int64_t element_bytes);

// y = x w^T + b (b may be null), for tall shapes.
template <typename T>
void tall_linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                         int64_t out);

// dx (= or +=) dy w, dw += dy^T x, db += column sums of dy; any of dx, dw, db may be null.
template <typename T>
void tall_linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                          const T* w, int64_t rows, int64_t in, int64_t out);

}  // namespace par::cpu
