// Decoder: the cross-attention of latents over their windows -- in up to three parts (the
// keys grouped by token, the shared cross cache, the samples' own keys) merged by their
// log-sum-exps -- for a refill's latents and for a step's newest latent, whose samples
// share one query per distinct token over the grouped keys.
#include <algorithm>
#include <cmath>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "core/attention_merge.h"
#include "core/blocks.h"
#include "core/constants.h"
#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

// L latents on the last L inputs of each of `batch` samples (embeddings in b.zin) through
// the cross-attention over their windows; leaves z0 and the attention output (b.att) for
// latent_stack.
template <typename T>
void Decoder<T>::cross_attend_latents(int64_t batch, int64_t L) {
  const int64_t T_ = length(), d = cfg_.d_model;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  // The latents' positions; one latent: once per sample (attend_windows).
  std::vector<int64_t> lpos(static_cast<size_t>(L == 1 ? batch : L));
  for (size_t i = 0; i < lpos.size(); ++i) lpos[i] = L == 1 ? T_ - 1 : T_ - L + int64_t(i);
  ops_.upload(b.latent_pos, lpos.data(), lpos.size() * sizeof(int64_t));
  cross_queries(ops_, cp, b.zin, batch * L, d, d, b.z0, NormActs<T>{b.qn, b.mu, b.rs}, b.q);
  rotary_at(b.q, batch, L, Hc, Dc, rot_cross_, T_ - L);
  attend_windows(batch, L);
  latents_ = L;
  ++refills_;
}

// The cross-attention of nq queries of each of `batch` samples (b.q, rotated; positions in
// b.latent_pos, the same for every sample, and with nq = 1 repeated for each) over the
// sample's window, in up to three parts merged by their log-sum-exps: the keys grouped by
// token (token tables), the shared cross cache (the keys after the groups with one sample;
// all of it without token tables), and the samples' own entries. Output in b.att.
template <typename T>
void Decoder<T>::attend_windows(int64_t batch, int64_t nq) {
  const int64_t d = cfg_.d_model, rows = batch * nq, T_ = length();
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  const double scale = 1.0 / std::sqrt(double(Dc));
  Buffers& b = *b_;
  bool first_part = true;
  LseLayout att_layout;  // of b.lse
  // Every part after the first is written to b.tmp and b.lse2 and merged into b.att. False
  // where the backend declined the part's call (a token-table call: no kernel, or a shape
  // it is not sized for, such as a refill's many latents); nothing is merged then, and the
  // caller attends the part's keys otherwise.
  auto part = [&](LseLayout layout, const std::function<bool(T*, T*)>& attend) {
    if (!attend(first_part ? b.att : b.tmp, first_part ? b.lse : b.lse2)) return false;
    if (!first_part)
      merge_attention(ops_, rows, Hc, Dc, b.att, b.lse, att_layout, b.tmp, b.lse2, layout);
    else
      att_layout = layout;
    first_part = false;
    return true;
  };
  int64_t shared_from = 0, shared_count = 0;
  std::tie(shared_from, shared_count) = shared_rows(nq, false);
  bool all_rows = true;  // of the shared cache, not only those after the groups
  bool own_attended = false;  // the own groups, with the keys grouped by token
  if (token_tables_ && groups_end_ > 0) {
    TokenAttentionShape s{rows, Hc, Dc, rot_cross_.bands, cfg_.vocab_size, b.group,
                          b.group_pos, group_stride_,
                          std::max<int64_t>(0, T_ - cfg_.context_length), scale};
    // A replayed step past N reads it where upload_step_inputs put it.
    if (replay_) s.first_position_at = b.first_position;
    // Samples with equal tokens share a query, which changes the work from step to step:
    // not in a replayed step.
    // The first part: written to b.att and b.lse.
    if (part(LseLayout{1, rows}, [&](T*, T*) {
          return nq == 1 && batch > 1 && !replay_
                     ? grouped_attention_of_distinct_tokens(s, own_attended)
                     : ops_.token_attention_forward(s, b.q, b.key_table, b.value_table,
                                                    b.group_cos, b.group_sin, b.att, b.lse);
        })) {
      std::tie(shared_from, shared_count) = shared_rows(nq, true);
      all_rows = false;
    }
    // Declined: this call attends over the shared cache, which holds the whole window with
    // one sample and the prompt with several; the next call offers the tables again.
  }
  const T *shared_k = b.cross_k + shared_from * cache_width_;
  const T *shared_v = b.cross_v + shared_from * cache_width_;
  auto cache_part = [&](const AttentionShape& s, const T* k, const T* v) {
    return [&, s, k, v](T* o, T* lse) {
      attend_cache(s, b.q, k, v, o, lse);
      return true;
    };
  };
  if (shared_count > 0) {
    AttentionShape s{1, nq, shared_count, Hc, Dc, b.latent_pos, b.cross_pos + shared_from,
                     b.cross_keep + shared_from, scale};
    if (nq > 1) {
      // The latents' positions (cross_attend_latents) and the entries' are consecutive:
      // said, so that a backend may plan the mask on the host (cuDNN's path needs it).
      s.q_pos_first = T_ - nq;
      s.k_pos_first = cross_first_ + (shared_from - cross_head_);
      // The entries' keep is their token's not being PAD (a sample's position p is its
      // tokens[p]): with none, a backend may read the keys where they lie instead of
      // gathering the kept ones (at N = 131072, d = 1024 a gathered copy is 512 MiB in
      // bfloat16).
      const int32_t* t = seqs_[size_t(cross_sample_)].tokens.data() + s.k_pos_first;
      s.keeps_every_key =
          std::none_of(t, t + shared_count, [](int32_t x) { return x == kPadToken; });
    }
    if (batch == 1) {
      part(LseLayout{1, nq}, cache_part(s, shared_k, shared_v));
    } else if (nq == 1) {  // the samples' queries (at one position) read the shared keys once
      s.nq = batch;
      part(LseLayout{1, batch}, cache_part(s, shared_k, shared_v));
    } else {  // a refill: each sample's latents over the shared keys
      part(LseLayout{batch, nq}, [&](T* o, T* lse) {
        for (int64_t k = 0; k < batch; ++k)
          attend_cache(s, b.q + k * nq * d, shared_k, shared_v, o + k * nq * d,
                       lse + k * Hc * nq);
        return true;
      });
    }
  }
  if (own_count_ > 0) {  // each sample's own entries: blocks of own_cap_ rows, empty rows not kept
    // The entries in the own groups through them (in the call above, or in one of their
    // own where that pays), and the rest as rows.
    const bool grouped = own_attended || (own_groups_in_use() && own_groups_pay_alone() &&
                                          part(LseLayout{batch, nq}, [&](T* o, T* lse) {
                                            return attend_own_groups(batch, nq, o, lse);
                                          }));
    const AttentionShape own{batch, nq, own_cap_, Hc, Dc, b.latent_pos, own_pos_,
                             grouped ? own_keep_tail_ : own_keep_, scale};
    part(LseLayout{batch, nq}, cache_part(own, own_k_, own_v_));
  }
  PAR_ASSERT(!first_part, "a window with no keys");
  if (all_rows) step_reads_all_rows_ = true;
}

// The rows of the shared cross cache that a call attends. After the groups: the rows after
// them with one sample (the prompt is all grouped with several). Else all of them. So that
// a replayed step's work (one query per sample) changes every M tokens, not every token:
// it attends from the cache's first row, the rows that left the window not kept
// (push_inputs), and with one sample in buckets of M rows, up to the end of the cache, the
// rows not filled yet at far positions (start(), compact_cross_cache).
template <typename T>
std::pair<int64_t, int64_t> Decoder<T>::shared_rows(int64_t nq, bool after_groups) const {
  const bool step = replay_ && nq == 1;
  int64_t from = cross_head_, count = cross_count_;
  if (after_groups) {
    count = samples() == 1 ? std::min(cross_count_, length() - groups_end_) : 0;
    from = cross_head_ + cross_count_ - count;
  } else if (step && cross_count_ > 0) {
    from = 0;
    count = cross_head_ + cross_count_;
  }
  const int64_t M = cfg_.num_latents;
  if (step && samples() == 1 && count > 0)
    count = std::min((count + M - 1) / M * M, cfg_.context_length + M - from);
  return {from, count};
}

// The attention of the samples' newest latents over the grouped keys (the shape `s`, K
// queries), into b.att and b.lse, as Ops::token_attention_forward; false when the backend
// declines. A latent's query depends on its input's token and position alone, so samples
// whose newest tokens are equal (often, when a model is sure of the next token) ask the
// same question of the same keys: only one query per distinct token is attended, and the
// answers are copied to every sample that asked (as rows are, with embedding_forward).
// Where every sample asks its own question, the own groups are attended in the same call
// (own_groups_merge), and own_attended says so.
template <typename T>
bool Decoder<T>::grouped_attention_of_distinct_tokens(const TokenAttentionShape& s,
                                                      bool& own_attended) {
  const int64_t K = samples(), d = cfg_.d_model, Hc = cfg_.cross_heads;
  Buffers& b = *b_;
  std::vector<int32_t> first_of;  // per distinct token: the first sample with it
  std::vector<int32_t> which(static_cast<size_t>(K));  // per sample: its distinct token
  for (int64_t k = 0; k < K; ++k) {
    const int32_t t = seqs_[size_t(k)].tokens.back();
    size_t u = 0;
    while (u < first_of.size() && seqs_[size_t(first_of[u])].tokens.back() != t) ++u;
    if (u == first_of.size()) first_of.push_back(int32_t(k));
    which[size_t(k)] = int32_t(u);
  }
  const int64_t D = int64_t(first_of.size());
  if (D == K && own_groups_in_use() && own_groups_merge()) {
    TokenAttentionShape with_own = s;
    with_own.own_group = own_group_;
    with_own.own_pos = own_group_pos_;
    with_own.own_stride = own_groups_stride_;
    with_own.own_cos = own_group_cos_;
    with_own.own_sin = own_group_sin_;
    own_attended = ops_.token_attention_forward(with_own, b.q, b.key_table, b.value_table,
                                                b.group_cos, b.group_sin, b.att, b.lse);
    if (own_attended) return true;
    // Declined for the own keys (not asked again) where the same call without them is
    // taken; else for its shape, as any step's may be.
    const bool taken = ops_.token_attention_forward(s, b.q, b.key_table, b.value_table,
                                                    b.group_cos, b.group_sin, b.att, b.lse);
    own_merge_declined_ = taken;
    return taken;
  }
  if (D == K)
    return ops_.token_attention_forward(s, b.q, b.key_table, b.value_table, b.group_cos,
                                        b.group_sin, b.att, b.lse);
  // The distinct queries into b.tmp, their attention into b.x and b.lse2 ([Hc, D]), then
  // every sample's rows of b.att and entries of b.lse ([Hc, K]) from them.
  std::vector<int32_t> lse_of(static_cast<size_t>(Hc * K));
  for (int64_t h = 0; h < Hc; ++h)
    for (int64_t k = 0; k < K; ++k) lse_of[size_t(h * K + k)] = int32_t(h * D) + which[size_t(k)];
  ops_.upload(b.dedup_ids, first_of.data(), size_t(D) * sizeof(int32_t));
  ops_.upload(b.dedup_ids + K, which.data(), size_t(K) * sizeof(int32_t));
  ops_.upload(b.dedup_ids + 2 * K, lse_of.data(), lse_of.size() * sizeof(int32_t));
  ops_.embedding_forward(b.tmp, b.dedup_ids, b.q, D, d);
  TokenAttentionShape distinct = s;
  distinct.nq = D;
  if (!ops_.token_attention_forward(distinct, b.tmp, b.key_table, b.value_table, b.group_cos,
                                    b.group_sin, b.x, b.lse2))
    return false;
  ops_.embedding_forward(b.att, b.dedup_ids + K, b.x, K, d);
  ops_.embedding_forward(b.lse, b.dedup_ids + 2 * K, b.lse2, Hc * K, 1);
  return true;
}

// The cross-attention of the latent on the newest input of every sample (embeddings in
// b.h; its position and rotary rows uploaded by upload_step_inputs): its residual input in
// b.z0 and its output in b.att, [K, d], both also in b.step_z0 and b.step_att for
// save_for_refill.
template <typename T>
void Decoder<T>::cross_attend_newest() {
  const int64_t d = cfg_.d_model, K = samples();
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  cross_queries(ops_, p_.cross, b.h, K, d, d, b.z0, NormActs<T>{b.qn, b.mu, b.rs}, b.q);
  if (rot_cross_.bands > 0)
    ops_.rotary(b.q, K, 1, Hc, Dc, rot_cross_.bands, b.step_cos, b.step_sin, false);
  attend_windows(K, 1);
  ops_.copy(b.step_att, b.att, K * d);
  ops_.copy(b.step_z0, b.z0, K * d);
}

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::cross_attend_latents(int64_t, int64_t);                         \
  template void Decoder<T>::attend_windows(int64_t, int64_t);                               \
  template bool Decoder<T>::grouped_attention_of_distinct_tokens(const TokenAttentionShape&, \
                                                                  bool&);                   \
  template void Decoder<T>::cross_attend_newest();                                        \
  template std::pair<int64_t, int64_t> Decoder<T>::shared_rows(int64_t, bool) const;
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
