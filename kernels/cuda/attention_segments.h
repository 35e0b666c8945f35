// How an attention call with contiguous positions (query i at q_first + i, key j at
// k_first + j; query i sees key j iff j <= i + offset, offset = q_first - k_first) splits
// into the pieces cuDNN's flash attention runs: its masks are a padding mask (the first
// n keys of each example) and a causal one aligned at the top-left corner, not an
// arbitrary position test.
//
//   rows [0, empty_rows)          see no key at all: o = 0, lse = -inf
//   prefix: rows [empty_rows, nq) x keys [0, prefix_keys)
//                                 every such key is visible to every such row (the
//                                 Perceiver AR latents over the context before them);
//                                 masked keys (PAD, dropped) are gathered out
//   diagonal: rows [diag_first_row, nq) x keys [prefix_keys, diag_keys_end)
//                                 row diag_first_row + r sees key prefix_keys + c iff
//                                 c <= r: causal from the top-left corner
//   keys [diag_keys_end, nk)      seen by no row
//
// The prefix and the diagonal of a row are merged in log-sum-exp form, as the sequence-
// parallel ranks merge theirs. Host-only; tests/cuda/attention_segments_test.cpp checks
// the split against the definition for all small shapes.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/sdpa_graph.h"

namespace par::cuda {

struct AttentionSegments {
  int64_t nq = 0, nk = 0;
  int64_t empty_rows = 0;
  int64_t prefix_keys = 0;
  int64_t diag_first_row = 0;
  int64_t diag_keys_end = 0;

  int64_t prefix_rows() const { return nq - empty_rows; }
  int64_t diag_rows() const { return nq - diag_first_row; }
  int64_t diag_keys() const { return diag_keys_end - prefix_keys; }
  bool has_prefix() const { return prefix_rows() > 0 && prefix_keys > 0; }
  bool has_diag() const { return diag_rows() > 0 && diag_keys() > 0; }

  // Whether row i sees key j through the segments (the tests' check of the split).
  bool visible(int64_t i, int64_t j) const {
    if (i < empty_rows || j < 0 || j >= nk) return false;
    if (j < prefix_keys) return true;
    return i >= diag_first_row && j < diag_keys_end &&
           j - prefix_keys <= i - diag_first_row;
  }
};

inline AttentionSegments split_attention(int64_t nq, int64_t nk, int64_t q_first,
                                         int64_t k_first) {
  AttentionSegments s;
  s.nq = std::max<int64_t>(nq, 0);
  s.nk = std::max<int64_t>(nk, 0);
  const int64_t offset = q_first - k_first;
  // Row i sees keys [0, i + offset + 1) clipped to [0, nk).
  s.empty_rows = std::clamp<int64_t>(-offset, 0, s.nq);
  if (s.nk == 0) s.empty_rows = s.nq;
  const int64_t first = s.empty_rows;  // the first row that sees a key, if < nq
  s.prefix_keys = first < s.nq ? std::clamp<int64_t>(first + offset + 1, 0, s.nk) : 0;
  // Row first + 1 + r sees r + 1 keys past the prefix (capped at nk).
  s.diag_first_row = std::min(first + 1, s.nq);
  s.diag_keys_end = std::clamp<int64_t>(s.nq + offset, s.prefix_keys, s.nk);
  return s;
}

// The most scratch the cuDNN path (attention_cudnn.cpp) holds for a call of this shape,
// forward and backward, in bytes: its bf16 copies of the queries, the gathered keys and
// values and their gradients, the key scan, the statistics, and the float32 copies of the
// diagonal's rows and keys the blocked path takes (not cuDNN's own workspace, nor the
// blocked path's score blocks). For the memory plan; an upper bound (every key kept).
// key_splits: the chunks of keys the forward may run as (cudnn_key_splits.h), each with
// its own copy of the queries, output and statistics.
inline double cudnn_attention_scratch_bytes(int64_t batch, int64_t nq, int64_t nk,
                                            int64_t heads, int64_t head_dim,
                                            int64_t key_splits = 1) {
  const double B = double(batch), ld = double(heads * head_dim), q = double(nq);
  const double k = double(nk), stats = B * double(heads) * q, S = double(key_splits);
  const double bf16_rows = (2 * S + 2) * B * q * ld + 4 * B * k * ld;  // q o, do dq; k v dk dv
  const double diag_rows = 5 * B * q * ld + 4 * B * q * ld;  // q o do dq lse; k v dk dv (< nq keys)
  const double ints = 2 * B * k + 3 * B * S;                 // flags, positions, counts
  return 2 * bf16_rows + 4 * diag_rows + 4 * ((S + 2) * stats + ints);
}

// What cuDNN's backward of a call of this shape holds besides the scratch above: the
// deterministic kernels' workspace where they run, else the float32 accumulator of dQ
// (sdpa_graph.h, backward_is_deterministic). For the memory plan.
inline double cudnn_backward_workspace_bytes(int64_t batch, int64_t nq, int64_t nk,
                                             int64_t heads, int64_t head_dim) {
  const sdpa::Dims d{batch, heads, nq, nk, head_dim};
  if (sdpa::backward_is_deterministic(d)) return sdpa::deterministic_workspace_bytes(d);
  return 4.0 * double(batch) * double(heads) * double(nq) * double(head_dim);
}

// Whether the call is one causal attention from the top-left corner over keys
// [0, min(nq, nk)): queries and keys start at the same position (the latent
// self-attention). Keys past nq are seen by no query.
inline bool is_top_left_causal(int64_t q_first, int64_t k_first) { return q_first == k_first; }

}  // namespace par::cuda
