// The backward of linear layers too short for row chunks (the latents' [M, d] x [d, F]
// layers): the input gradient and the weight gradient side by side, on two halves of the
// threads.
#pragma once

#include <cstdint>

#include "kernels/cpu/workspace.h"

namespace par::cpu {

// dx (= or +=) dy w on the first half of the threads (rows split among them), dw += dy^T x
// and db += column sums of dy on the other half (output columns split among them); needs
// dx and dw, db may be null. With one thread, the two run one after the other.
template <typename T>
void paired_linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                            const T* w, int64_t rows, int64_t in, int64_t out, Workspace& ws);

// Bytes of Workspace (kPairedLinear) each thread that sums bias gradients takes.
inline double paired_linear_scratch_bytes(double out) { return out * sizeof(double); }

}  // namespace par::cpu
