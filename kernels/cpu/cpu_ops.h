// The CPU backend: the reference implementation of every op of core/ops.h, and the
// fallback when no GPU is present. Matrix products go to BLAS; the rest are OpenMP loops
// with fixed (static) work partitions, so results are bit-identical from run to run
// for a given thread count (what exact resume relies on).
// Instantiated for float (training) and double (gradient checks against finite
// differences and golden vectors).
#pragma once

#include "core/ops.h"
#include "kernels/cpu/workspace.h"

namespace par::cpu {

template <typename T>
class CpuOps final : public Ops<T> {
 public:
  const char* name() const override { return "cpu"; }
  PAR_OPS_METHODS(PAR_OPS_OVERRIDE)

  // Bytes of scratch the kernels hold now (kernels/cpu/workspace.h): what the memory plan
  // calls the kernel scratch.
  int64_t scratch_bytes() const { return ws_.bytes(); }

 private:
  // The embedding rows of ids ([batch * n, d]) in the widening scratch, with room for
  // `parts` such blocks (cpu_ops_bf16.cpp).
  T* embedding_rows(const int32_t* ids, int64_t batch, int64_t n, int64_t id_stride,
                    const T* table, int64_t d, int parts);
  // rotary on w (T scratch), rounded to bfloat16 into dst (cpu_ops_bf16.cpp).
  void rotary_rounded(uint16_t* dst, T* w, int64_t batch, int64_t n, int64_t heads,
                      int64_t head_dim, int64_t bands, const T* cos_table, const T* sin_table,
                      bool inverse);
  Workspace ws_;
};

// Blocked attention (kernels/cpu/attention.cpp). Block sizes are parameters so tests
// can force many small blocks.
struct AttentionBlocking {
  int64_t q_block = 256;
  int64_t k_block = 256;
  // Float32 shapes the fused AVX-512 kernels support go through them; off forces sgemm.
  bool fused = true;
  // Forwards of one query per example over few keys (kernels/cpu/attention_one_query.h)
  // go through their own kernel; off forces the paths above.
  bool one_query = true;
};
template <typename T>
void attention_forward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                               T* o, T* lse, const AttentionBlocking& blocking, Workspace& ws);
template <typename T>
void attention_backward_blocked(const AttentionShape& s, const T* q, const T* k, const T* v,
                                const T* o, const T* d_o, const T* lse, T* dq, T* dk, T* dv,
                                const AttentionBlocking& blocking, Workspace& ws);

// The Workspace an attention call of this shape (its sizes and head dimension: no data is
// read) takes: the kept-key lists, and the buffers of each thread that works on it, the
// larger of forward and backward.
struct AttentionScratch {
  double kept = 0;
  double per_thread = 0;
};
template <typename T>
AttentionScratch attention_scratch_bytes(const AttentionShape& s,
                                         const AttentionBlocking& blocking = {});

// The Workspace of each thread in the LayerNorm backward over rows of d.
template <typename T>
double layernorm_backward_scratch_bytes(int64_t d);

}  // namespace par::cpu
