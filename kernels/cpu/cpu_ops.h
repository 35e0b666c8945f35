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

  void* allocate(size_t bytes) override;
  void deallocate(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;

  void fill(T* x, int64_t n, T value) override;
  void copy(T* dst, const T* src, int64_t n) override;
  void add(T* y, const T* x, int64_t n) override;
  void scale(T* x, int64_t n, double s) override;
  void copy_blocks(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t batch,
                   int64_t count, bool accumulate) override;

  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
            int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) override;
  void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t rows, int64_t in,
                      int64_t out) override;
  void linear_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                       const T* w, int64_t rows, int64_t in, int64_t out) override;

  void embedding_forward(T* h, const int32_t* ids, const T* table, int64_t rows,
                         int64_t d) override;
  void embedding_backward(T* dtable, const int32_t* ids, const T* dh, int64_t rows,
                          int64_t d) override;

  void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b,
                         int64_t rows, int64_t d, double eps) override;
  void layernorm_backward(T* dx, bool accumulate_dx, T* dw, T* db, const T* dy, const T* x,
                          const T* mean, const T* rstd, const T* w, int64_t rows,
                          int64_t d) override;

  void rotary(T* x, int64_t batch, int64_t n, int64_t heads, int64_t head_dim, int64_t bands,
              const T* cos_table, const T* sin_table, bool inverse) override;

  void sqrelu_forward(T* y, const T* x, int64_t n) override;
  void sqrelu_backward(T* dx, const T* dy, const T* x, int64_t n) override;
  void dropout(T* y, const T* x, int64_t batch, int64_t per_example, double p,
               const DropoutKey& key, uint64_t example_base) override;
  void key_keep_mask(uint8_t* keep, const int32_t* tokens, int64_t batch, int64_t n,
                     int64_t token_stride, double p, const DropoutKey& key,
                     uint64_t example_base, int64_t position_base) override;

  void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                         T* lse) override;
  void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v,
                          const T* o, const T* d_o, const T* lse, T* dq, T* dk,
                          T* dv) override;
  bool token_attention_forward(const TokenAttentionShape& s, const T* q, const T* key_table,
                               const T* value_table, const T* cos, const T* sin,
                               T* o) override;

  void attention_merge_scale(T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq,
                             int64_t heads, int64_t head_dim) override;
  void attention_merge_finish(T* o, T* lse, const T* lse_max, int64_t batch, int64_t nq,
                              int64_t heads, int64_t head_dim) override;

  void cross_entropy_forward(T* ce, T* lse, const T* logits, const int32_t* targets,
                             int64_t rows, int64_t vocab) override;
  void cross_entropy_backward(T* dlogits, const T* logits, const T* lse,
                              const int32_t* targets, int64_t rows, int64_t vocab,
                              double scale, double z_loss) override;

  double sum_squares(const T* x, int64_t n) override;
  void adam_update(T* param, T* m, T* v, const T* grad, int64_t n,
                   const AdamStep& step) override;
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
