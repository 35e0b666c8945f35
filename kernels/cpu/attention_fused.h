// Fused float32 attention on AVX-512 (attention_avx512.cpp): the same contract and
// numerics (up to rounding) as the sgemm path of attention.cpp, for head dimensions that
// are whole vectors. attention_forward_blocked / attention_backward_blocked call it for
// the shapes it supports unless AttentionBlocking::fused is off.
#pragma once

#include "core/ops.h"
#include "kernels/cpu/cpu_ops.h"

namespace par::cpu {

// False where the build has no AVX-512, the head dimension is not a multiple of 16 up to
// 128, or there are fewer than 8 queries.
bool fused_attention_supported(const AttentionShape& s);

void attention_forward_fused(const AttentionShape& s, const float* q, const float* k,
                             const float* v, float* o, float* lse,
                             const AttentionBlocking& blocking, Workspace& ws);
void attention_backward_fused(const AttentionShape& s, const float* q, const float* k,
                              const float* v, const float* o, const float* d_o,
                              const float* lse, float* dq, float* dk, float* dv,
                              const AttentionBlocking& blocking, Workspace& ws);
// Bytes of each working thread's Workspace (kAttention), the larger of the two directions.
double fused_attention_scratch_bytes(const AttentionShape& s, const AttentionBlocking& blocking);

}  // namespace par::cpu
