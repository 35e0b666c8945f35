// Choosing the next token from one row of logits for a given uniform number u in [0, 1):
// temperature, top-k and top-p, as a pure function of (logits, options, u). Drawing u
// (train/sampling.h: the top 53 bits of one mt19937_64 call) is kept apart from the choice
// so that a backend can make the choice where the logits are (Ops::sample_tokens: on a GPU,
// only the chosen id comes back to the host) and still choose what the CPU would.
#pragma once

#include <cstdint>

namespace par {

struct SamplingOptions {
  double temperature = 1.0;  // 0: the most likely token
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // 1: no limit
  void validate() const;     // UserError naming the option
};

// u in [0, 1) from the top 53 bits of a 64-bit random number (exactly representable).
inline double uniform_from_bits(uint64_t bits) { return double(bits >> 11) * 0x1p-53; }

// The token for u, drawn from softmax(logits / temperature) restricted to the top_k most
// likely tokens and then to the smallest set of most likely ones whose probability reaches
// top_p. With temperature 0, the most likely token (u unused). Definition, step by step
// (Ops::sample_tokens on other backends follows it):
//   1. order the ids by logit, largest first; equal logits (+0 and -0 are equal) by id;
//   2. keep the first K = min(top_k, V) (all V when top_k is 0);
//   3. p_i = exp(double(logit_i) / T - double(logit_0) / T) in double, in that order;
//      where double(logit_0) / T is not finite (an infinite logit, every logit -inf, or a
//      temperature so small that the quotient overflows), the token is the first of the
//      order, as with temperature 0 but with ties by id;
//   4. top_p < 1: keep the first n of them, n the smallest count whose running sum
//      (summed in order) is >= top_p * (the sum of all K), at least 1 (K if none reaches);
//   5. S = the sum of the kept p (in order); the token is the first i whose running sum
//      exceeds u * S strictly (the last kept one if rounding leaves none).
// Logits must not be NaN.
template <typename T>
int32_t choose_token(const T* logits, int64_t vocab, const SamplingOptions& opts, double u);

}  // namespace par
