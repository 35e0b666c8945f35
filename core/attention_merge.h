// Combining two attentions of the same queries over disjoint sets of keys into the
// attention over their union. Decoding (core/decoder.h) attends over the keys grouped by
// token, the shared cross cache and each sample's own keys in separate calls, whose lse
// arrays may be laid out differently (one call of K queries over shared keys against K
// examples of one query each), then merges them on the backend
// (Ops::attention_merge_pair), so that a decoding step never waits for the device.
#pragma once

#include <cstdint>

#include "core/error.h"
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
// other part, laid out as `b`, the same rows) are left alone. A part where a query saw no
// key (lse -infinity) adds nothing.
template <typename T>
void merge_attention(Ops<T>& ops, int64_t rows, int64_t heads, int64_t head_dim, T* o, T* lse,
                     LseLayout a, const T* o2, const T* lse2, LseLayout b);

}  // namespace par
