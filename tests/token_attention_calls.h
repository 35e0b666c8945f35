// A backend that counts the calls of Ops::token_attention_forward the decoder makes, and
// declines those with more than `max_queries` queries or `max_batch` examples, or with own
// keys (as a GPU kernel declines shapes it is not sized for): the tests see which calls went through the
// token tables, and that the decoder falls back for a declined call without giving the
// tables up.
#pragma once

#include <cstdint>
#include <limits>

#include "core/ops_decorator.h"

namespace par::testing_util {

template <typename T>
class TokenAttentionCalls final : public ForwardingOps<T> {
 public:
  explicit TokenAttentionCalls(Ops<T>& inner,
                               int64_t max_queries = std::numeric_limits<int64_t>::max())
      : ForwardingOps<T>(inner), max_queries_(max_queries) {}

  bool token_attention_forward(const TokenAttentionShape& s, const T* q, const T* key_table,
                               const T* value_table, const T* cos, const T* sin, T* o,
                               T* lse) override {
    if (s.batch > 1) ++batched;
    if (s.own_group) ++with_own;
    const bool through = s.nq <= max_queries_ && s.batch <= max_batch &&
                         !(s.own_group && decline_own) &&
                       ForwardingOps<T>::token_attention_forward(s, q, key_table, value_table,
                                                                 cos, sin, o, lse);
    if (!through) {
      ++declined;
    } else {
      ++taken;
      queries += s.nq;
      if (declined > 0) ++taken_after_decline;
    }
    return through;
  }

  bool token_attention_takes_own_keys() override {
    ++asked_takes_own;
    return says_takes_own && ForwardingOps<T>::token_attention_takes_own_keys();
  }

  int64_t max_batch = std::numeric_limits<int64_t>::max();  // declines batch > this
  bool decline_own = false;  // declines calls with own keys (TokenAttentionShape::own_group)
  bool says_takes_own = true;  // its answer to token_attention_takes_own_keys (and the inner's)
  int64_t asked_takes_own = 0;
  int64_t taken = 0, declined = 0, taken_after_decline = 0;
  int64_t batched = 0;  // calls with batch > 1 (several samples' own keys), taken or not
  int64_t with_own = 0;  // calls with own keys besides the shared ones, taken or not
  int64_t queries = 0;  // of the calls taken

 private:
  int64_t max_queries_;
};

}  // namespace par::testing_util
