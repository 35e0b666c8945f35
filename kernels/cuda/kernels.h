// Launchers of the CUDA backend's kernels (the .cu files of this directory), callable from
// host code compiled by the host compiler. Each enqueues its work on `stream` and returns;
// the semantics are those of the matching op in core/ops.h unless said otherwise.
//
// Determinism: no kernel here uses floating-point atomics, and every reduction has a fixed
// shape (chunk sizes and thread counts depend on the problem size only), so results are
// the same bits on every run. Internal to kernels/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/ops.h"
#include "core/philox.h"
#include "kernels/cuda/reduction_sizes.h"

namespace par::cuda::kern {

// ---- element-wise (elementwise.cu) ----
void fill(cudaStream_t st, float* x, int64_t n, float value);
void add(cudaStream_t st, float* y, const float* x, int64_t n);
void scale(cudaStream_t st, float* x, int64_t n, float s);
void copy_blocks(cudaStream_t st, float* dst, int64_t dst_stride, const float* src,
                 int64_t src_stride, int64_t batch, int64_t count, bool accumulate);
// copy_blocks into row row[0] (device memory) of dst, rows of row_width elements.
void copy_blocks_to_row(cudaStream_t st, float* dst, int64_t dst_stride, const int64_t* row,
                        int64_t row_width, const float* src, int64_t src_stride, int64_t batch,
                        int64_t count);
// C = beta * C for `batch` row-major [rows, cols] matrices (ld, stride); beta 0 writes 0.
void scale_matrices(cudaStream_t st, float* c, int64_t rows, int64_t cols, int64_t ld,
                    int64_t stride, int64_t batch, float beta);
// y[r, c] = bias[c] for r < rows.
void broadcast_rows(cudaStream_t st, float* y, const float* bias, int64_t rows, int64_t cols);
void embedding_forward(cudaStream_t st, float* h, const int32_t* ids, const float* table,
                       int64_t rows, int64_t d);
// dst[r * cols + c] = bf16(src[r * ld + c]) for r < rows, c < cols, rounded to nearest
// even: the compact bfloat16 copy of a row-major matrix (convert_bf16.cu; bfloat16 values
// as uint16_t, so that host code needs no CUDA bfloat16 header).
void matrix_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t rows,
                    int64_t cols, int64_t ld);
// dst[i] = the float that the bfloat16 src[i] holds (exact).
void bf16_to_float(cudaStream_t st, float* dst, const uint16_t* src, int64_t n);
void rotary(cudaStream_t st, float* x, int64_t batch, int64_t n, int64_t heads,
            int64_t head_dim, int64_t bands, const float* cos_table, const float* sin_table,
            bool inverse);
// dst = bf16(rotary(src)), src left alone: each value as rotary computes it, rounded.
void rotary_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t batch, int64_t n,
                    int64_t heads, int64_t head_dim, int64_t bands, const float* cos_table,
                    const float* sin_table);
// rotary on bfloat16 values: each pair computed in float and rounded once.
void rotary_bf16(cudaStream_t st, uint16_t* x, int64_t batch, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t bands, const float* cos_table,
                 const float* sin_table, bool inverse);
void sqrelu_forward(cudaStream_t st, float* y, const float* x, int64_t n);
void sqrelu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, int64_t n);
// p_threshold = float(p), keep_scale = float(1 / (1 - p)), as the CPU backend rounds them.
void dropout(cudaStream_t st, float* y, const float* x, int64_t batch, int64_t per_example,
             float p_threshold, float keep_scale, const DropoutKey& key,
             uint64_t example_base);
void key_keep_mask(cudaStream_t st, uint8_t* keep, const int32_t* tokens, int64_t batch,
                   int64_t n, int64_t token_stride, bool use_p, float p_threshold,
                   const DropoutKey& key, uint64_t example_base, int64_t position_base);
void attention_merge_scale(cudaStream_t st, float* o, float* lse, const float* lse_max,
                           int64_t batch, int64_t nq, int64_t heads, int64_t head_dim);
void attention_merge_finish(cudaStream_t st, float* o, float* lse, const float* lse_max,
                            int64_t batch, int64_t nq, int64_t heads, int64_t head_dim);
// Ops::attention_merge_pair; b's rows are batch * nq / nq2 examples of nq2.
void attention_merge_pair(cudaStream_t st, float* o, float* lse, int64_t batch, int64_t nq,
                          const float* o2, const float* lse2, int64_t nq2, int64_t heads,
                          int64_t head_dim);

// The Adam constants, computed on the host exactly as the CPU backend does.
struct AdamConstants {
  float b1, b2, grad_scale, step_size, inv_sqrt_bc2, eps, decay;
};
void adam_update(cudaStream_t st, float* param, float* m, float* v, const float* grad,
                 int64_t n, const AdamConstants& c);
// The update over spans [begin[k], end[k]) of the buffers in as few launches as the span
// table allows (kAdamSpansPerLaunch each); decay[k] replaces c.decay in span k.
constexpr int kAdamSpansPerLaunch = 128;
void adam_update_spans(cudaStream_t st, float* param, float* m, float* v, const float* grad,
                       const int64_t* begin, const int64_t* end, const float* decay,
                       int64_t count, const AdamConstants& c);

// ---- reductions (reduce.cu) ----
// out[c] += sum over rows of x[r, c]; `partial` holds column_sums_partial_floats() floats
// (reduction_sizes.h, as layernorm_backward_partial_floats).
void column_sums(cudaStream_t st, float* out, const float* x, int64_t rows, int64_t cols,
                 float* partial);
// The same over bfloat16 values (summed in float as column_sums does).
void column_sums_bf16(cudaStream_t st, float* out, const uint16_t* x, int64_t rows,
                      int64_t cols, float* partial);
void layernorm_forward(cudaStream_t st, float* y, float* mean, float* rstd, const float* x,
                       const float* w, const float* b, int64_t rows, int64_t d, float eps);
// LN of the embedding rows table[ids[b * id_stride + j]] (row b * n + j), y rounded to
// bfloat16, and its backward (dx written): the kernels above, reading the rows by id.
void embedding_layernorm_forward_bf16(cudaStream_t st, uint16_t* y, float* mean, float* rstd,
                                      const int32_t* ids, int64_t batch, int64_t n,
                                      int64_t id_stride, const float* table, const float* w,
                                      const float* b, int64_t d, float eps);
void embedding_layernorm_backward(cudaStream_t st, float* dx, float* dw, float* db,
                                  const float* dy, const int32_t* ids, int64_t batch, int64_t n,
                                  int64_t id_stride, const float* table, const float* mean,
                                  const float* rstd, const float* w, int64_t d, float* partial);
// The same with y rounded to bfloat16 (each value computed as layernorm_forward's).
void layernorm_forward_bf16(cudaStream_t st, uint16_t* y, float* mean, float* rstd,
                            const float* x, const float* w, const float* b, int64_t rows,
                            int64_t d, float eps);
void layernorm_backward(cudaStream_t st, float* dx, bool accumulate_dx, float* dw, float* db,
                        const float* dy, const float* x, const float* mean, const float* rstd,
                        const float* w, int64_t rows, int64_t d, float* partial);
void cross_entropy_forward(cudaStream_t st, float* ce, float* lse, const float* logits,
                           const int32_t* targets, int64_t rows, int64_t vocab);
void cross_entropy_backward(cudaStream_t st, float* dlogits, const float* logits,
                            const float* lse, const int32_t* targets, int64_t rows,
                            int64_t vocab, double scale, double z_loss);
// *result (device) = sum of x[i]^2 in double; `partial` holds sum_squares_partial_doubles().
int64_t sum_squares_partial_doubles(int64_t n);
void sum_squares(cudaStream_t st, double* result, const float* x, int64_t n, double* partial);

// ---- embedding backward (embedding.cu) ----
// dtable[ids[r]] += dh[r], rows with the same id added in increasing r within fixed-size
// pieces and the pieces in order: a stable sort by id, then segmented sums.
size_t embedding_backward_scratch_bytes(int64_t rows, int64_t d);
void embedding_backward(cudaStream_t st, float* dtable, const int32_t* ids, const float* dh,
                        int64_t rows, int64_t d, void* scratch, size_t scratch_bytes);

// ---- attention steps (attention.cu); see kernels/cuda/attention_plan.h ----
struct ScoreBlockArgs {
  float* s;
  int64_t ld, heads, nq, keys;
  const int64_t* q_pos;
  const int64_t* k_pos;
  const uint8_t* k_keep;
};
void attn_fwd_init(cudaStream_t st, float* run_max, float* run_sum, int64_t n);
void attn_fwd_block(cudaStream_t st, const ScoreBlockArgs& blk, float* run_max,
                    float* run_sum, float* acc, int64_t ld_acc, int64_t head_dim);
void attn_fwd_finish(cudaStream_t st, float* o, int64_t ld_o, float* lse,
                     const float* run_max, const float* run_sum, int64_t heads, int64_t nq,
                     int64_t head_dim);
void attn_bwd_delta(cudaStream_t st, float* delta, const float* o, const float* d_o,
                    int64_t batch, int64_t nq, int64_t heads, int64_t head_dim);
void attn_bwd_probs(cudaStream_t st, const ScoreBlockArgs& blk, const float* lse);
void attn_bwd_dscores(cudaStream_t st, float* dp, int64_t ld, const float* p, int64_t heads,
                      int64_t nq, int64_t keys, const float* delta);

// ---- fused attention forward (attention_fused.cu), tf32 or bf16 products ----
// Whether the fused kernel has an instance for this head size (16, 32, 64, 128).
bool fused_attention_covers(int64_t head_dim);
// attention_forward of core/ops.h in one kernel per tile of 64 queries; head_dim covered.
void attention_forward_fused(cudaStream_t st, const AttentionShape& s, const float* q,
                             const float* k, const float* v, float* o, float* lse, bool bf16);

// ---- fused attention backward (attention_fused_bwd.cu), tf32 or bf16 products ----
// Head sizes with an instance (16, 32, 64: larger ones exceed the shared memory).
bool fused_attention_backward_covers(int64_t head_dim);
// attention_backward of core/ops.h given delta[(b*heads + h)*nq + i] = o . d_o of each row
// (attn_bwd_delta); batch, nq and heads positive, head_dim covered.
void attention_backward_fused(cudaStream_t st, const AttentionShape& s, const float* q,
                              const float* k, const float* v, const float* d_o,
                              const float* lse, const float* delta, float* dq, float* dk,
                              float* dv, bool bf16);

// ---- attention of one query over many keys (attention_decode.cu) ----
// attention_forward of core/ops.h for nq == 1: the keys split into pieces of kDecodeKeys
// (one block per piece, head and example) and merged by log-sum-exp. `rounding`: 0 float32
// products, 1 tf32 inputs, 2 bf16 inputs. `scratch` holds
// decode_attention_scratch_floats(s) floats.
constexpr int64_t kDecodeKeys = 256;
int64_t decode_attention_splits(int64_t nk);
size_t decode_attention_scratch_floats(const AttentionShape& s);
void attention_forward_decode(cudaStream_t st, const AttentionShape& s, const float* q,
                              const float* k, const float* v, float* o, float* lse,
                              int rounding, float* scratch);
// A few queries per example over the same keys (several samples' newest latents over their
// shared cache, a short refill), each key read once for all of them: where
// decode_queries_cover(s) (2 to kDecodeMaxQueries queries, at least kDecodeQueriesMinKeys
// keys: below that the blocked path's few blocks are as quick), with
// decode_attention_scratch_floats(s) floats of scratch. Over float32 or bfloat16 keys and
// values, as the one-query calls.
constexpr int64_t kDecodeMaxQueries = 16;
constexpr int64_t kDecodeQueriesMinKeys = 1024;
bool decode_queries_cover(const AttentionShape& s);
void attention_forward_decode_queries(cudaStream_t st, const AttentionShape& s, const float* q,
                                      const float* k, const float* v, float* o, float* lse,
                                      int rounding, float* scratch);
void attention_forward_decode_queries_bf16_kv(cudaStream_t st, const AttentionShape& s,
                                              const float* q, const uint16_t* k,
                                              const uint16_t* v, float* o, float* lse,
                                              int rounding, float* scratch);
// The same over bfloat16 keys and values: the float32 call on the widened keys and values,
// bit for bit (bfloat16 values are exact in tf32 and float32, so no rounding changes them).
void attention_forward_decode_bf16_kv(cudaStream_t st, const AttentionShape& s, const float* q,
                                      const uint16_t* k, const uint16_t* v, float* o,
                                      float* lse, int rounding, float* scratch);

// ---- attention through per-token tables (token_attention.cu) ----
// Ops::token_attention_forward in float32: a plan kernel numbers the work items (up to
// kTokenItemKeys visible keys of one token), one block per (item, kTokenTile query-heads)
// sums each item's softmax weights, one block per query-head merges them per token and
// applies the values. Shapes beyond kTokenMaxQueryHeads query-heads (nq * heads) or
// kTokenMaxHeadDim are not covered, nor batch > 1: the op declines them.
constexpr int64_t kTokenItemKeys = 1024;
constexpr int64_t kTokenTile = 16;
constexpr int64_t kTokenMaxQueryHeads = 4096;
constexpr int64_t kTokenMaxHeadDim = 256;
struct TokenAttentionPlan {
  bool covered = false;
  int64_t items = 0;  // an upper bound on the work items (vocab + stride / kTokenItemKeys + 1)
  int64_t tiles = 0;  // of kTokenTile query-heads
  size_t shared_bytes = 0;  // the scan's coefficients
  size_t prefix_offset = 0, items_offset = 0, partials_offset = 0;
  size_t bytes = 0;  // of scratch
};
TokenAttentionPlan token_attention_plan(const TokenAttentionShape& s);
// `plan` = token_attention_plan(s), covered; `scratch` holds plan.bytes.
void token_attention_forward(cudaStream_t st, const TokenAttentionShape& s,
                             const TokenAttentionPlan& plan, const float* q,
                             const float* key_table, const float* value_table,
                             const float* cos, const float* sin, float* o, float* lse,
                             void* scratch);

// ---- sampling (sampling.cu) ----
// Ops::sample_tokens with ids and u in device memory; `scratch` holds
// sample_tokens_scratch_bytes(rows, vocab) bytes (rows * vocab < 2^31).
size_t sample_tokens_scratch_bytes(int64_t rows, int64_t vocab);
void sample_tokens(cudaStream_t st, int32_t* ids, const float* logits, int64_t rows,
                   int64_t vocab, const SamplingOptions& opts, const double* u, void* scratch);

}  // namespace par::cuda::kern
