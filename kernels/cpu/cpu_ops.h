// The CPU backend: the reference implementation of every op of core/ops.h, and the
// fallback when no GPU is present. Matrix products go to BLAS; the rest are OpenMP loops
// with fixed (static) work partitions, so results are bit-identical from run to run
// for a given thread count (what exact resume relies on).
// Instantiated for float (training) and double (gradient checks against finite
// differences and golden vectors).
#pragma once

#include "core/ops.h"

namespace par::cpu {

template <typename T>
class CpuOps final : public Ops<T> {
 public:
  const char* name() const override { return "cpu"; }
  PAR_OPS_METHODS(PAR_OPS_OVERRIDE)
};

// Blocked attention (kernels/cpu/attention.cpp). Block sizes are parameters so tests
// can force many small blocks.
struct AttentionBlocking {
  int64_t q_block = 256;
  int64_t k_block = 256;
  // Float32 shapes the fused AVX-512 kernels support go through them; off forces sgemm.
  bool fused = true;
};
template <typename T>
void attention_forward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                               T* o, T* lse, const AttentionBlocking& blocking);
template <typename T>
void attention_backward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                                const T* o, const T* d_o, const T* lse, T* dq, T* dk, T* dv,
                                const AttentionBlocking& blocking);

}  // namespace par::cpu
