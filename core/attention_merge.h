// Combining two attentions of the same queries over disjoint sets of keys into the
// attention over their union. Decoding several samples at once (core/decoder.h) attends
// over the prompt's cross cache, shared by the samples, and over each sample's own keys in
// separate calls, then merges them: the log-sum-exp merge of Ops::attention_merge_scale and
// attention_merge_finish, with the maxima and the sum of the weights formed on the host,
// because the two calls may lay out their lse arrays differently (one call of K queries
// over shared keys against K calls of one query each).
#pragma once

#include <cstdint>

#include "core/ops.h"

namespace par {

// Where an attention call of `batch` examples of `nq` queries keeps the lse of output row r
// (r = b * nq + i of its [batch * nq, heads * head_dim] output) for head h.
struct LseLayout {
  int64_t batch = 1, nq = 1;
  int64_t at(int64_t r, int64_t h, int64_t heads) const {
    return ((r / nq) * heads + h) * nq + r % nq;
  }
};

// o and lse (laid out as `a`) become the attention over both key sets; o2 and lse2 (the
// other part, laid out as `b`, the same rows) are overwritten. A part where a query saw no
// key (lse -infinity) adds nothing. max_a, max_b: backend memory for rows * heads values.
template <typename T>
void merge_attention(Ops<T>& ops, int64_t rows, int64_t heads, int64_t head_dim, T* o, T* lse,
                     LseLayout a, T* o2, T* lse2, LseLayout b, T* max_a, T* max_b);

}  // namespace par
