// Decoder: the cross caches -- each new input into the shared cache or the samples' own
// blocks, the window grouped by token, moving the live entries to the front when a cache
// is full (MODEL.md section 12), and the caches in bfloat16: filled, and attended.
#include <algorithm>
#include <vector>

#include "core/blocks.h"
#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

using decoder_detail::kFarPosition;

// The newest input of every sample, at `position`, into the cross caches (the oldest leaves
// the window when it holds N): the shared cache with one sample, else the samples' own.
// This is the host's part: room in the caches, the inputs' ids, positions and keep bytes
// uploaded, and the row they go to (input_row_, which upload_step_inputs uploads);
// push_inputs_device computes their keys and values into that row, as part of the step.
template <typename T>
void Decoder<T>::push_inputs(int64_t position) {
  const int64_t N = cfg_.context_length, K = samples();
  Buffers& b = *b_;
  std::vector<int32_t> tokens, doc_pos;
  gather(position, 1, tokens, doc_pos);
  int64_t row = 0;
  // A replayed step attends the shared cache from its first row (shared_rows): a row that
  // leaves the window is not kept.
  auto leave = [&] {
    if (replay_) {
      const uint8_t drop = 0;
      ops_.upload(b.cross_keep + cross_head_, &drop, 1);
    }
    ++cross_head_;
    --cross_count_;
    ++cross_first_;
  };
  if (K == 1) {
    if (cross_count_ == N) leave();
    if (cross_head_ + cross_count_ == N + cfg_.num_latents) compact_cross_cache(position);
    row = cross_head_ + cross_count_;
  } else {
    if (cross_count_ + own_count_ == N) {
      if (cross_count_ > 0) {
        leave();
      } else {  // the oldest own entry leaves
        const uint8_t drop = 0;  // from own_keep_ (and own_keep_tail_, where kept)
        for (int64_t s = 0; s < (own_tail_kept() ? 2 : 1) * K; ++s)
          ops_.upload(own_keep_ + s * own_cap_ + own_head_, &drop, 1);
        ++own_head_;
        --own_count_;
        ++own_first_;
      }
    }
    if (own_count_ == 0) own_first_ = position;
    if (own_head_ + own_count_ == own_cap_) reserve_own();
    row = own_head_ + own_count_;
  }
  ops_.upload(b.tokens, tokens.data(), tokens.size() * sizeof(int32_t));
  if (positions_) positions_->upload_ids(doc_pos.data(), K, b.pos_ids);
  input_row_ = row;  // uploaded with the step's other inputs
  const std::vector<uint8_t> keep = keep_of(tokens.data(), K);
  if (K == 1) {
    ops_.upload(b.cross_pos + row, &position, sizeof(int64_t));
    ops_.upload(b.cross_keep + row, keep.data(), 1);
    ++cross_count_;
  } else {
    ops_.upload(own_pos_ + row, &position, sizeof(int64_t));
    // Into own_keep_, and own_keep_tail_ where kept: the newest entry is after the groups.
    for (int64_t s = 0; s < (own_tail_kept() ? 2 : 1) * K; ++s)
      ops_.upload(own_keep_ + s * own_cap_ + row, &keep[size_t(s % K)], 1);
    ++own_count_;
  }
}

// The device's part of push_inputs: the newest inputs' embeddings (b.h, which the step's
// latent starts from), and their keys and values, rotated at the step's position
// (upload_step_inputs), into row b.input_row of the shared cache or of each sample's own.
template <typename T>
void Decoder<T>::push_inputs_device() {
  const int64_t d = cfg_.d_model, K = samples();
  Buffers& b = *b_;
  ops_.embedding_forward(b.h, b.tokens, p_.embed, K, d);
  if (positions_) positions_->add_uploaded(b.h, K, b.pos_ids, b.kvn);
  T *k = b.att, *v = b.tmp;
  cross_keys_values(ops_, p_.cross, b.h, K, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, k, v);
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim(), w = cache_width_;
  if (bf16_cache_) {  // rotated and rounded into b.x (scratch until the latent stack)
    T *k16 = b.x, *v16 = b.x + K * w;
    if (rot_cross_.bands > 0)
      ops_.rotary_to_bf16(reinterpret_cast<uint16_t*>(k16), k, K, 1, Hc, Dc, rot_cross_.bands,
                          b.step_cos, b.step_sin);
    else
      ops_.round_to_bf16(reinterpret_cast<uint16_t*>(k16), k, K * d);
    ops_.round_to_bf16(reinterpret_cast<uint16_t*>(v16), v, K * d);
    k = k16;
    v = v16;
  } else if (rot_cross_.bands > 0) {
    ops_.rotary(k, K, 1, Hc, Dc, rot_cross_.bands, b.step_cos, b.step_sin, false);
  }
  T* cache_k = K == 1 ? b.cross_k : own_k_;
  T* cache_v = K == 1 ? b.cross_v : own_v_;
  const int64_t stride = K == 1 ? 0 : own_cap_ * w;
  ops_.copy_blocks_to_row(cache_k, stride, b.input_row, w, k, w, K, w);
  ops_.copy_blocks_to_row(cache_v, stride, b.input_row, w, v, w, K, w);
}

// Room for one more own entry per sample: the entries move to the front of new blocks,
// twice as long as they need (at most N + M rows, as the shared cache).
template <typename T>
void Decoder<T>::reserve_own() {
  const int64_t K = samples(), d = cache_width_;  // d: a row, in T
  const int64_t cap = own_capacity(cfg_, own_count_);
  PAR_ASSERT(cap > own_count_);
  decoder_detail::OwnCacheBlock<T> block;
  void* memory =
      decoder_detail::allocate_carved(ops_, [&](Carver& c) { block.carve(c, K, cap, d); });
  T *k = block.k, *v = block.v;
  int64_t* pos = block.pos;
  uint8_t* keep = block.keep;
  const int64_t n = own_count_;
  // Rows read but not kept must be numbers (see above): those past the entries copied in
  // below, in each sample's block.
  for (int64_t s = 0; s < K; ++s) {
    ops_.fill(k + (s * cap + n) * d, (cap - n) * d, T(0));
    ops_.fill(v + (s * cap + n) * d, (cap - n) * d, T(0));
  }
  if (n > 0) {
    ops_.copy_blocks(k, cap * d, own_k_ + own_head_ * d, own_cap_ * d, K, n * d, false);
    ops_.copy_blocks(v, cap * d, own_v_ + own_head_ * d, own_cap_ * d, K, n * d, false);
  }
  std::vector<int64_t> p(static_cast<size_t>(cap), kFarPosition);
  for (int64_t j = 0; j < n; ++j) p[size_t(j)] = own_first_ + j;
  ops_.upload(pos, p.data(), p.size() * sizeof(int64_t));
  if (own_memory_) ops_.deallocate(own_memory_);
  own_memory_ = memory;
  own_k_ = k;
  own_v_ = v;
  own_pos_ = pos;
  own_keep_ = keep;
  own_keep_tail_ = keep + K * cap;
  own_cap_ = cap;
  own_head_ = 0;
  upload_own_keeps();
}

// The window's positions [first, first + count) of sample 0 (the prompt, or with one sample
// everything up to there) grouped by token for Ops::token_attention_forward. The rotary
// rows and the host buffers are kept from one grouping to the next (SlidingRotaryTables,
// Buffers::host_groups): a refill of one sample regroups its whole window, and on
// cpu-131k that took 69 ms made afresh, 27 ms kept.
template <typename T>
void Decoder<T>::group_window(int64_t first, int64_t count) {
  Buffers& b = *b_;
  const T *c = nullptr, *s = nullptr;
  window_tables_->rows(first, count, &c, &s);
  TokenGroups<T>& g = b.host_groups;
  group_tokens<T>(seqs_[0].tokens.data() + first, count, first, cfg_.vocab_size,
                  rot_cross_.bands, c, s, 0, g);
  decoder_detail::upload_groups(ops_, g, b.group, b.group_pos, b.group_cos, b.group_sin);
  groups_end_ = first + count;
  group_stride_ = g.stride;
}

// Moves `count` rows of `width` from row `from` to row 0. Copies are not defined for
// overlapping ranges, so it goes in pieces of `from` rows, each clear of the next.
template <typename T>
void Decoder<T>::move_to_front(T* base, int64_t from, int64_t count, int64_t width) {
  for (int64_t r = 0; r < count; r += from)
    ops_.copy(base + r * width, base + (from + r) * width, std::min(from, count - r) * width);
}

// Moves the live entries of the shared cross cache (the inputs before `next_position`) to
// the front.
template <typename T>
void Decoder<T>::compact_cross_cache(int64_t next_position) {
  const int64_t h0 = cross_head_, n = cross_count_;
  Buffers& b = *b_;
  move_to_front(b.cross_k, h0, n, cache_width_);
  move_to_front(b.cross_v, h0, n, cache_width_);
  const int64_t first = next_position - n;  // consecutive positions
  PAR_ASSERT(first == cross_first_, "compact_cross_cache: entries from ", cross_first_,
             ", not ", first);
  // Replayed steps attend past the entries (Decoder::shared_rows): the rows there, which
  // held entries before, must be far again.
  const int64_t rows = replay_ ? cfg_.context_length + cfg_.num_latents : n;
  std::vector<int64_t> pos(static_cast<size_t>(rows), kFarPosition);
  for (int64_t j = 0; j < n; ++j) pos[size_t(j)] = first + j;
  const std::vector<uint8_t> keep = keep_of(seqs_[0].tokens.data() + first, n);
  ops_.upload(b.cross_pos, pos.data(), pos.size() * sizeof(int64_t));
  ops_.upload(b.cross_keep, keep.data(), keep.size());
  cross_head_ = 0;
}

// The keys and values of the window's `rows` inputs (embeddings in b.h, from
// first_position) into the bfloat16 cross cache from row 0: computed in T a block of rows
// at a time (in b.fc1 and b.act, free until the latents' MLPs), rotated, rounded.
template <typename T>
void Decoder<T>::keys_values_into_cache(int64_t rows, int64_t first_position) {
  const int64_t d = cfg_.d_model, block = samples() * cfg_.num_latents * cfg_.mlp_width() / d;
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t n = std::min(block, rows - r0);
    cross_keys_values(ops_, p_.cross, b.h + r0 * d, n, d, d,
                      NormActs<T>{b.kvn + r0 * d, b.kv_mu + r0, b.kv_rs + r0}, b.fc1, b.act);
    auto* k16 = reinterpret_cast<uint16_t*>(b.cross_k + r0 * cache_width_);
    auto* v16 = reinterpret_cast<uint16_t*>(b.cross_v + r0 * cache_width_);
    if (rot_cross_.bands > 0) {
      upload_rotary_tables(rot_cross_, first_position + r0, n);
      ops_.rotary_to_bf16(k16, b.fc1, 1, n, Hc, Dc, rot_cross_.bands, b.cos, b.sin);
    } else {
      ops_.round_to_bf16(k16, b.fc1, n * d);
    }
    ops_.round_to_bf16(v16, b.act, n * d);
  }
}

template <typename T>
void Decoder<T>::attend_cache(const AttentionShape& s, const T* q, const T* k, const T* v, T* o,
                              T* lse) {
  if (bf16_cache_)
    ops_.attention_forward_bf16_kv(s, q, reinterpret_cast<const uint16_t*>(k),
                                   reinterpret_cast<const uint16_t*>(v), o, lse);
  else
    ops_.attention_forward(s, q, k, v, o, lse);
}

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::push_inputs(int64_t);                                           \
  template void Decoder<T>::push_inputs_device();                                           \
  template void Decoder<T>::reserve_own();                                                  \
  template void Decoder<T>::group_window(int64_t, int64_t);                                 \
  template void Decoder<T>::move_to_front(T*, int64_t, int64_t, int64_t);                   \
  template void Decoder<T>::compact_cross_cache(int64_t);                                   \
  template void Decoder<T>::keys_values_into_cache(int64_t, int64_t);                       \
  template void Decoder<T>::attend_cache(const AttentionShape&, const T*, const T*, const T*, \
                                         T*, T*);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
