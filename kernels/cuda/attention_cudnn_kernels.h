// The small kernels around cuDNN's flash attention (attention_cudnn.cu): the model's
// float32 tensors to and from cuDNN's bfloat16 operands, the gathering of the keys a mask
// leaves visible into a dense prefix (so that dropped keys cost nothing), and the merge of
// the prefix and diagonal pieces (attention_segments.h). Row blocks: a tensor
// [batch, total, width] and its rows [row0, row0 + rows) of every example.
//
// Deterministic: no atomics; the scan is CUB's, whose results do not depend on timing.
// bfloat16 values travel as uint16_t, so that host code needs no CUDA header for them.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace par::cuda::kern {

// dst[b, r, :] = bf16(src[b, row0 + r, :]) for r < rows; dst is [batch, rows, width].
void rows_to_bf16(cudaStream_t st, uint16_t* dst, const float* src, int64_t batch,
                  int64_t total, int64_t row0, int64_t rows, int64_t width);

// x[b] = value for b < n.
void fill_int32(cudaStream_t st, int32_t* x, int64_t n, int32_t value);

// The keys of [0, prefix) of each example that keep (uint8 [batch, nk], or null: all)
// leaves visible, gathered densely: flags[b*prefix + j] = visible, pos = their exclusive
// scan over the whole [batch, prefix] array, count[b] = visible keys of example b. The key
// j of example b goes to row pos[b*prefix + j] - pos[b*prefix] of the dense prefix.
size_t key_scan_scratch_bytes(int64_t n);
void scan_visible_keys(cudaStream_t st, int32_t* flags, int32_t* pos, int32_t* count,
                       const uint8_t* keep, int64_t batch, int64_t nk, int64_t prefix,
                       void* scratch, size_t scratch_bytes);
// kd, vd [batch, prefix, width] bf16: the visible keys and values of k, v [batch, nk,
// width] in order, then zero rows up to prefix (cuDNN may read a tile past the last key;
// zeros keep 0 * garbage out of its sums). S: float, or uint16_t for bfloat16-stored keys
// and values (copied as they are).
template <typename S>
void gather_keys(cudaStream_t st, uint16_t* kd, uint16_t* vd, const S* k, const S* v,
                 const int32_t* flags, const int32_t* pos, const int32_t* count,
                 int64_t batch, int64_t nk, int64_t prefix, int64_t width);
// The inverse for the gradients: dk[b, j] = float(dkd[b, dense row of j]) for visible
// keys j < prefix, 0 for masked ones; rows >= prefix are left alone. S as for gather_keys.
template <typename S>
void scatter_key_grads(cudaStream_t st, S* dk, S* dv, const uint16_t* dkd,
                       const uint16_t* dvd, const int32_t* flags, const int32_t* pos,
                       int64_t batch, int64_t nk, int64_t prefix, int64_t width);

// The forward's results: rows [0, row0) of o [batch, nq, heads*head_dim] and lse
// [batch, heads, nq] are empty (o = 0, lse = -inf); rows [row0, nq) come from cuDNN's ob
// [batch, nq - row0, heads*head_dim] and stats [batch, heads, nq - row0], except in
// examples whose count (may be null) is 0, whose rows saw no key: empty too.
void attention_results(cudaStream_t st, float* o, float* lse, const uint16_t* ob,
                       const float* stats, const int32_t* count, int64_t batch, int64_t nq,
                       int64_t row0, int64_t heads, int64_t head_dim);
// The forward's results of a call whose keys ran in `splits` chunks (cudnn_key_splits.h):
// ob [batch * splits, rows, heads*head_dim] and stats [batch * splits, heads, rows] hold
// chunk c of example b at batch element b * splits + c, rows = nq - row0; rows [row0, nq)
// of o and lse are their log-sum-exp merge (chunks with lse = -inf weigh 0; a NaN in any
// chunk's statistics makes the row NaN, as it would be unsplit), rows [0, row0) are empty
// (o = 0, lse = -inf).
void merge_key_splits(cudaStream_t st, float* o, float* lse, const uint16_t* ob,
                      const float* stats, int64_t batch, int64_t splits, int64_t nq,
                      int64_t row0, int64_t heads, int64_t head_dim);
// counts[b * splits + c] = the keys of chunk c (of `chunk` rows) among an example's first
// `keys`: min(chunk, keys - c * chunk), at least 0.
void key_split_counts(cudaStream_t st, int32_t* counts, int64_t batch, int64_t splits,
                      int64_t chunk, int64_t keys);
// The same for the query gradient: dq rows [0, row0) and rows of examples with count 0
// are 0, the rest float(dqb).
void query_grads(cudaStream_t st, float* dq, const uint16_t* dqb, const int32_t* count,
                 int64_t batch, int64_t nq, int64_t row0, int64_t width);

// The statistics a backward over rows [row0, row0 + rows) takes: lse rows, with -inf (a
// row that saw no key) made the largest float, so that exp(score - stats) is 0 and the row
// adds no gradient (cuDNN computes exp(s - stats), which -inf would make infinite).
void backward_stats(cudaStream_t st, float* stats, const float* lse, int64_t batch,
                    int64_t heads, int64_t nq, int64_t row0, int64_t rows);

// Merges a second piece of attention (o2 [batch, rows, heads*head_dim], lse2 [batch,
// heads, rows]) into rows [row0, row0 + rows) of (o, lse): weights exp(lse - max) with
// empty pieces (lse = -inf) weighing 0; a row empty in both stays o = 0, lse = -inf.
void merge_attention_rows(cudaStream_t st, float* o, float* lse, const float* o2,
                          const float* lse2, int64_t batch, int64_t nq, int64_t row0,
                          int64_t rows, int64_t heads, int64_t head_dim);

// dst[b, r, :] = float(src[b, r, :]) for [batch, rows, width] (r < rows), written into
// rows [row0, row0 + rows) of dst [batch, total, width].
void rows_from_bf16(cudaStream_t st, float* dst, const uint16_t* src, int64_t batch,
                    int64_t total, int64_t row0, int64_t rows, int64_t width);

}  // namespace par::cuda::kern
