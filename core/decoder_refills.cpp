// Decoder: refilling the latent caches (MODEL.md section 12) -- a full pass over the
// window with M/2 latents, whose cross-attention, within the context, the steps since the
// last refill have already computed and kept.
#include <algorithm>
#include <vector>

#include "core/decoder_buffers.h"

namespace par {

// A refill of cached decoding: the same as full_pass(L) for every sample, with the window's
// keys and values taken from the cross caches instead of computed again.
template <typename T>
void Decoder<T>::refill_from_cache(int64_t L) {
  const int64_t T_ = length();
  // With one sample the newest keys are not in the groups yet: they are attended from the
  // cross cache, which costs more per key. Group them when they are many; the groups end
  // before the latents, so that every grouped key precedes every query. Several samples'
  // own keys the same way, in groups of their own (decoder_own_groups.cpp).
  const int64_t ungrouped = T_ - L - groups_end_, window = std::min(T_, cfg_.context_length);
  if (token_tables_ && samples() == 1 &&
      ungrouped >= std::max(cfg_.num_latents, cfg_.context_length / 32))
    group_window(T_ - window, window - L);
  // A refill from the steps attends with its newest latent alone, as a step does (at the
  // newest position): the own groups may then take every own key so far.
  const bool from_steps = T_ == saved_for_length_ && saved_rows_ == L - 1;
  const int64_t own_end = from_steps ? T_ : T_ - L;
  if (own_regroup_due(own_end)) group_own(own_end);
  if (refill_from_steps(L)) return;
  std::vector<int32_t> tokens, doc_pos;
  gather(T_ - L, L, tokens, doc_pos);
  embed(b_->zin, tokens.data(), doc_pos.data(), samples() * L, b_->tmp);
  cross_attend_latents(samples(), L);
  latent_stack(samples(), L, T_ - L, true, false);
}

// The row of the next refill's latents that this step's latent will be, when the refill
// comes within the context and may take this step's cross-attention; else -1. Host only.
template <typename T>
int64_t Decoder<T>::refill_row(int64_t position) {
  const int64_t M = cfg_.num_latents, N = cfg_.context_length;
  // This step takes the cache to latents_ + 1 latents; M - latents_ - 1 more steps fill
  // it, and the append after them refills with the last L inputs (append()).
  const int64_t refill_length = position + 1 + M - latents_;
  if (refill_length > N) return -1;
  const int64_t L = std::min(refill_latents(), refill_length);
  const int64_t row = position - (refill_length - L);
  if (row < 0 || row >= L - 1) return -1;  // not among that refill's latents, or its newest
  if (saved_for_length_ != refill_length) {
    saved_for_length_ = refill_length;
    saved_rows_ = 0;
  }
  // Rows are kept in order; after a gap the refill computes them all.
  return row == saved_rows_ ? row : -1;
}

// The last step's cross-attention (b.step_att, b.step_z0) into row `row` of every
// sample's block (both kinds in one copy: 2K blocks each).
template <typename T>
void Decoder<T>::save_for_refill(int64_t row) {
  const int64_t d = cfg_.d_model, K = samples(), cap = refill_latents();
  Buffers& b = *b_;
  ops_.copy_blocks(b.saved_att + row * d, cap * d, b.step_att, d, 2 * K, d, false);
}

// A refill of L latents from the steps' saved cross-attention and its newest latent's,
// when the steps saved all L - 1 (false: nothing done).
template <typename T>
bool Decoder<T>::refill_from_steps(int64_t L) {
  const int64_t T_ = length(), d = cfg_.d_model, K = samples(), cap = refill_latents();
  if (T_ != saved_for_length_ || saved_rows_ != L - 1) return false;
  saved_for_length_ = -1;
  // The newest latent as a step's, then into the last row of every sample's block.
  cross_attend_newest();
  save_for_refill(L - 1);
  Buffers& b = *b_;
  ops_.copy_blocks(b.att, L * d, b.saved_att, cap * d, K, L * d, false);
  ops_.copy_blocks(b.z0, L * d, b.saved_z0, cap * d, K, L * d, false);
  latents_ = L;
  ++refills_;
  latent_stack(K, L, T_ - L, true, false);
  return true;
}

// The members defined here, for the element types decoder.cpp instantiates the class with.
#define PAR_INSTANTIATE(T)                                                                  \
  template void Decoder<T>::refill_from_cache(int64_t);                                     \
  template int64_t Decoder<T>::refill_row(int64_t);                                         \
  template void Decoder<T>::save_for_refill(int64_t);                                       \
  template bool Decoder<T>::refill_from_steps(int64_t);
PAR_INSTANTIATE(float)
PAR_INSTANTIATE(double)
#undef PAR_INSTANTIATE

}  // namespace par
