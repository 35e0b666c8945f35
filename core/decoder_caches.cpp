// Decoder: the cross caches -- each new input into the shared cache or the samples' own
// blocks, the window grouped by token, and moving the live entries to the front when a
// cache is full (MODEL.md section 12).
#include <algorithm>
#include <vector>

#include "core/blocks.h"
#include "core/decoder_buffers.h"
#include "core/error.h"

namespace par {

using decoder_detail::kFarPosition;

// The newest input of every sample, at `position`, into the cross caches (the oldest leaves
// the window when it holds N): the shared cache with one sample, else the samples' own.
template <typename T>
void Decoder<T>::push_inputs(int64_t position) {
  const int64_t d = cfg_.d_model, N = cfg_.context_length, K = samples();
  const int64_t Hc = cfg_.cross_heads, Dc = cfg_.cross_head_dim();
  Buffers& b = *b_;
  const CrossRef<T>& cp = p_.cross;
  std::vector<int32_t> tokens, doc_pos;
  gather(position, 1, tokens, doc_pos);
  T *k = b.att, *v = b.tmp;
  int64_t slot = 0;
  if (K == 1) {
    if (cross_count_ == N) {
      ++cross_head_;
      --cross_count_;
    }
    if (cross_head_ + cross_count_ == N + cfg_.num_latents) compact_cross_cache(position);
    slot = cross_head_ + cross_count_;
    k = b.cross_k + slot * d;
    v = b.cross_v + slot * d;
  } else {
    if (cross_count_ + own_count_ == N) {
      if (cross_count_ > 0) {
        ++cross_head_;
        --cross_count_;
      } else {  // the oldest own entry leaves
        const uint8_t drop = 0;
        for (int64_t s = 0; s < K; ++s) ops_.upload(own_keep_ + s * own_cap_ + own_head_, &drop, 1);
        ++own_head_;
        --own_count_;
        ++own_first_;
      }
    }
    if (own_count_ == 0) own_first_ = position;
    if (own_head_ + own_count_ == own_cap_) reserve_own();
  }
  embed(b.h, tokens.data(), doc_pos.data(), K, b.kvn);
  cross_keys_values(ops_, cp, b.h, K, d, d, NormActs<T>{b.kvn, b.kv_mu, b.kv_rs}, k, v);
  rotary_at(k, K, 1, Hc, Dc, rot_cross_, position);
  const std::vector<uint8_t> keep = keep_of(tokens.data(), K);
  if (K == 1) {
    ops_.upload(b.cross_pos + slot, &position, sizeof(int64_t));
    ops_.upload(b.cross_keep + slot, keep.data(), 1);
    ++cross_count_;
  } else {
    slot = own_head_ + own_count_;
    ops_.copy_blocks(own_k_ + slot * d, own_cap_ * d, k, d, K, d, false);
    ops_.copy_blocks(own_v_ + slot * d, own_cap_ * d, v, d, K, d, false);
    ops_.upload(own_pos_ + slot, &position, sizeof(int64_t));
    for (int64_t s = 0; s < K; ++s) ops_.upload(own_keep_ + s * own_cap_ + slot, &keep[size_t(s)], 1);
    ++own_count_;
  }
}

// Room for one more own entry per sample: the entries move to the front of new blocks,
// twice as long as they need (at most N + M rows, as the shared cache).
template <typename T>
void Decoder<T>::reserve_own() {
  const int64_t K = samples(), d = cfg_.d_model, M = cfg_.num_latents;
  const int64_t cap = std::min(cfg_.context_length + M, std::max<int64_t>(M, 2 * (own_count_ + 1)));
  PAR_ASSERT(cap > own_count_);
  T *k = nullptr, *v = nullptr;
  int64_t* pos = nullptr;
  uint8_t* keep = nullptr;
  auto carve = [&](Carver& c) {
    k = c.take<T>(K * cap * d);
    v = c.take<T>(K * cap * d);
    pos = c.take<int64_t>(cap);
    keep = c.take<uint8_t>(K * cap);
  };
  Carver sizing;
  carve(sizing);
  void* memory = ops_.allocate(size_t(sizing.used));
  Carver real{static_cast<char*>(memory), 0};
  carve(real);
  const int64_t n = own_count_;
  ops_.fill(k, K * cap * d, T(0));  // rows read but not kept must be numbers (see above)
  ops_.fill(v, K * cap * d, T(0));
  if (n > 0) {
    ops_.copy_blocks(k, cap * d, own_k_ + own_head_ * d, own_cap_ * d, K, n * d, false);
    ops_.copy_blocks(v, cap * d, own_v_ + own_head_ * d, own_cap_ * d, K, n * d, false);
  }
  std::vector<int64_t> p(static_cast<size_t>(cap), kFarPosition);
  for (int64_t j = 0; j < n; ++j) p[size_t(j)] = own_first_ + j;
  std::vector<uint8_t> kp(static_cast<size_t>(K * cap), 0);
  for (int64_t s = 0; s < K; ++s) {
    const std::vector<uint8_t> ks = keep_of(seqs_[size_t(s)].tokens.data() + own_first_, n);
    std::copy(ks.begin(), ks.end(), kp.begin() + s * cap);
  }
  ops_.upload(pos, p.data(), p.size() * sizeof(int64_t));
  ops_.upload(keep, kp.data(), kp.size());
  if (own_memory_) ops_.deallocate(own_memory_);
  own_memory_ = memory;
  own_k_ = k;
  own_v_ = v;
  own_pos_ = pos;
  own_keep_ = keep;
  own_cap_ = cap;
  own_head_ = 0;
}

// The window's positions [first, first + count) of sample 0 (the prompt, or with one sample
// everything up to there) grouped by token for Ops::token_attention_forward.
template <typename T>
void Decoder<T>::group_window(int64_t first, int64_t count) {
  Buffers& b = *b_;
  const TokenGroups<T> g = group_tokens<T>(seqs_[0].tokens.data() + first, count, first,
                                           cfg_.vocab_size, rot_cross_);
  ops_.upload(b.group, g.group.data(), g.group.size() * sizeof(int64_t));
  ops_.upload(b.group_pos, g.pos.data(), g.pos.size() * sizeof(int64_t));
  ops_.upload(b.group_cos, g.cos.data(), g.cos.size() * sizeof(T));
  ops_.upload(b.group_sin, g.sin.data(), g.sin.size() * sizeof(T));
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
  const int64_t d = cfg_.d_model, h0 = cross_head_, n = cross_count_;
  Buffers& b = *b_;
  move_to_front(b.cross_k, h0, n, d);
  move_to_front(b.cross_v, h0, n, d);
  const int64_t first = next_position - n;  // consecutive positions
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

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::push_inputs(int64_t);                                           \
  template void Decoder<T>::reserve_own();                                                  \
  template void Decoder<T>::group_window(int64_t, int64_t);                                 \
  template void Decoder<T>::move_to_front(T*, int64_t, int64_t, int64_t);                   \
  template void Decoder<T>::compact_cross_cache(int64_t);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
