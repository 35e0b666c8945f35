// Decoder: several samples' own keys grouped by token (with token tables).
//
// The samples' own keys, the generated ones, differ between samples, so the shared groups
// (the prompt's) cannot hold them. Attended as cache rows, they cost each sample about as
// much per key as a materialized attention does: over a long generation that came to
// most of a 4-sample step (8,000 tokens: 0.62-0.73 ms of it on a 2-core Zen 5). So a
// refill also groups each sample's own keys, as one sample's refills group its newest
// keys: one block of groups per sample. A step whose samples ask distinct questions attends
// them in its call over the shared groups (TokenAttentionShape::own_group), which scans a
// token's own keys with the coefficients it found for the shared ones; only the own keys
// after the groups are then read as rows (own_keep_tail_). Elsewhere (a refill, equal
// questions, a backend that does not take such calls, Ops::token_attention_takes_own_keys,
// or declines one) they are attended in one call of their own (TokenAttentionShape::batch),
// merged with the other parts by their log-sum-exps, where that pays
// (own_groups_pay_alone), with the keys after them as rows; else every own key is read as
// a row (own_keep_).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/arena.h"
#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

// own_keep_ and own_keep_tail_ from the entries and the samples' tokens: an entry is kept
// unless its token is PAD, and in the tail unless it is in the own groups too.
template <typename T>
void Decoder<T>::upload_own_keeps() {
  const int64_t K = samples(), cap = own_cap_;
  std::vector<uint8_t> keep(static_cast<size_t>(2 * K * cap), 0);
  for (int64_t s = 0; s < K; ++s) {
    const std::vector<uint8_t> kept =
        keep_of(seqs_[size_t(s)].tokens.data() + own_first_, own_count_);
    for (int64_t e = 0; e < own_count_; ++e) {
      const int64_t row = own_head_ + e;
      keep[size_t(s * cap + row)] = kept[size_t(e)];
      keep[size_t((K + s) * cap + row)] = kept[size_t(e)] && own_first_ + e >= own_groups_end_;
    }
  }
  ops_.upload(own_keep_, keep.data(), keep.size());
}

// Whether a refill whose latents start at `end` should group the own keys before it
// (measured on cpu-131k, 4 samples, a 2-core Zen 5):
//   - the first time: at once where the steps attend them in their call over the shared
//     groups (own_groups_merge), where they cost only their scan. In a call of their own,
//     when the samples' own keys cost more as rows than through the call, whose fixed part
//     works through every token that has keys: with about 256 tokens of the 259 among
//     them, 4 samples of 1,000 keys took 250 us in the call and 144 us as rows, 4 of 4,000
//     took 280-330 us against 576. So from 8 V own keys on (own_groups_pay_alone);
//   - then when the steps until the next refill would spend more on the keys after the
//     groups than grouping them all again costs. Grouping G keys costs about 28 ns a key
//     and sample (host and upload; 0.8 ms for 4 samples of 7,483), a row 36 ns a step, so
//     regrouping every R tokens costs 28 G / R + 36 R / 2 ns a step and sample, least at
//     R = 1.25 sqrt(G): 110 tokens at 8,000 own keys, 450 at 131,072. Refills come every
//     M/2 tokens, so this regroups at most that often.
template <typename T>
bool Decoder<T>::own_regroup_due(int64_t end) const {
  if (!token_tables_ || samples() == 1 || own_count_ == 0 || own_groups_declined_) return false;
  const int64_t own = end - own_first_, ungrouped = end - std::max(own_first_, own_groups_end_);
  if (ungrouped <= 0) return false;
  if (!own_groups_merge() && !own_groups_pay_alone()) return own >= 8 * cfg_.vocab_size;
  if (own_groups_end_ <= own_first_) return true;
  return 2 * ungrouped * ungrouped >= 3 * own;
}

// Groups each sample's own keys at positions [own_first_, end) (those in the window), end
// at most the earliest position a later query can have, so that the groups need no causal
// mask.
template <typename T>
void Decoder<T>::group_own(int64_t end) {
  const int64_t K = samples(), V = cfg_.vocab_size, B = rot_cross_.bands;
  const int64_t first = own_first_, count = end - first;
  PAR_ASSERT(count > 0 && end <= own_first_ + own_count_);
  const int64_t stride = token_groups_stride(count);
  if (stride > own_groups_stride_) {  // room for twice as many, up to a window's
    const int64_t most = token_groups_stride(cfg_.context_length);
    const int64_t rows = std::max(stride, std::min(2 * own_groups_stride_, most));
    decoder_detail::OwnGroupsBlock<T> block;
    if (own_groups_memory_) ops_.deallocate(own_groups_memory_);
    own_groups_memory_ = decoder_detail::allocate_carved(
        ops_, [&](Carver& c) { block.carve(c, K, V, B, rows); });
    own_group_ = block.group;
    own_group_pos_ = block.pos;
    own_group_cos_ = block.cos;
    own_group_sin_ = block.sin;
    own_groups_stride_ = rows;
  }
  // The samples' keys are at the same positions: one set of rotary rows for all.
  const T *c = nullptr, *s = nullptr;
  window_tables_->rows(first, count, &c, &s);
  const int64_t rows = own_groups_stride_;
  TokenGroups<T>& g = b_->host_groups;
  for (int64_t k = 0; k < K; ++k) {
    group_tokens<T>(seqs_[size_t(k)].tokens.data() + first, count, first, V, B, c, s, rows, g);
    decoder_detail::upload_groups(ops_, g, own_group_ + k * (V + 1), own_group_pos_ + k * rows,
                                  own_group_cos_ + k * B * rows, own_group_sin_ + k * B * rows);
  }
  own_groups_end_ = end;
  upload_own_keeps();
}

// The attention of each sample's nq queries (b.q, [batch, nq, d]) over its own groups, one
// call for all samples, into o ([batch, nq, d]) and lse ([batch, heads, nq]); false where
// the backend declines it. A backend that declines it for a step's queries is not asked
// again (own_groups_declined_): the refills stop grouping, the own keys are read as rows.
template <typename T>
bool Decoder<T>::attend_own_groups(int64_t batch, int64_t nq, T* o, T* lse) {
  const int64_t Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  TokenAttentionShape s{nq, cfg_.cross_heads, Dc, rot_cross_.bands, cfg_.vocab_size,
                        own_group_, own_group_pos_, own_groups_stride_,
                        std::max<int64_t>(0, length() - cfg_.context_length),
                        1.0 / std::sqrt(double(Dc))};
  s.batch = batch;
  if (replay_) s.first_position_at = b.first_position;
  if (ops_.token_attention_forward(s, b.q, b.key_table, b.value_table, own_group_cos_,
                                   own_group_sin_, o, lse))
    return true;
  if (nq == 1) own_groups_declined_ = true;
  return false;
}

// Frees the own cache and groups (a new start, or the end).
template <typename T>
void Decoder<T>::release_own() {
  if (own_memory_) ops_.deallocate(own_memory_);
  if (own_groups_memory_) ops_.deallocate(own_groups_memory_);
  own_memory_ = own_groups_memory_ = nullptr;
  own_cap_ = own_head_ = own_count_ = 0;
  own_groups_stride_ = own_groups_end_ = 0;
  own_groups_declined_ = false;
  own_merge_declined_ = !ops_.token_attention_takes_own_keys();
}

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::upload_own_keeps();                                             \
  template bool Decoder<T>::own_regroup_due(int64_t) const;                                 \
  template void Decoder<T>::group_own(int64_t);                                             \
  template bool Decoder<T>::attend_own_groups(int64_t, int64_t, T*, T*);                    \
  template void Decoder<T>::release_own();
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
