// The CPU's choice of a token for a uniform number (core/token_choice.h): the definition
// that other backends' Ops::sample_tokens are tested against.
#include "core/token_choice.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace par {

void SamplingOptions::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail_user("--temperature must be a finite number >= 0 (0: greedy), not ", temperature);
  if (top_k < 0) fail_user("--top-k must be >= 0 (0: no limit)");
  if (!(top_p > 0 && top_p <= 1)) fail_user("--top-p must be in (0, 1] (1: no limit)");
}

namespace {

// An unsigned integer whose order is the reverse of the logits' order: the float's bits
// made monotonic (negative values flipped whole, positive ones given the top bit), then
// complemented. -0 is made +0 first, so that the two compare equal.
template <typename T, typename Bits>
Bits descending_key(T logit) {
  const T x = logit + T(0);
  Bits b;
  std::memcpy(&b, &x, sizeof b);
  constexpr Bits top = Bits(1) << (8 * sizeof(Bits) - 1);
  return ~((b & top) ? ~b : (b | top));
}

// Ids from most to least likely; equal logits by id, so the order is deterministic. A
// least-significant-digit radix sort on the keys, stable from id order, so equal logits
// stay in id order: no comparison branches, which a comparison sort of fresh logits
// mispredicts about every other time (sampling's share of a decoding step was several
// times the sort's arithmetic).
template <typename T>
std::vector<int32_t> likeliest_first(const T* logits, int64_t vocab) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const size_t n = size_t(vocab);
  std::vector<Bits> key(n), key2(n);
  std::vector<int32_t> order(n), order2(n);
  for (size_t i = 0; i < n; ++i) {
    key[i] = descending_key<T, Bits>(logits[i]);
    order[i] = int32_t(i);
  }
  if (n == 0) return order;
  for (int shift = 0; shift < int(8 * sizeof(Bits)); shift += 8) {
    size_t start[257] = {};
    for (size_t i = 0; i < n; ++i) ++start[((key[i] >> shift) & 0xFF) + 1];
    if (start[((key[0] >> shift) & 0xFF) + 1] == n) continue;  // one digit everywhere
    for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t at = start[(key[i] >> shift) & 0xFF]++;
      key2[at] = key[i];
      order2[at] = order[i];
    }
    key.swap(key2);
    order.swap(order2);
  }
  return order;
}

// The number of leading weights whose running sum first reaches `target` (all of them
// when rounding keeps the sum below it), and at least 1.
int64_t nucleus_size(const std::vector<double>& weights, double target) {
  const int64_t keep = int64_t(weights.size());
  double reached = 0;
  int64_t n = 0;
  while (n < keep && reached < target) reached += weights[size_t(n++)];
  return std::max<int64_t>(1, n);
}

}  // namespace

template <typename T>
int32_t choose_token(const T* logits, int64_t vocab, const SamplingOptions& o, double u) {
  if (o.temperature == 0) return int32_t(std::max_element(logits, logits + vocab) - logits);
  const std::vector<int32_t> order = likeliest_first(logits, vocab);
  const int64_t top_k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  const double top = double(logits[order[0]]) / o.temperature;
  if (!std::isfinite(top)) return order[0];  // the weights would be NaN (step 3)
  std::vector<double> weights(static_cast<size_t>(top_k));
  double total = 0;
  for (int64_t i = 0; i < top_k; ++i) {
    weights[size_t(i)] = std::exp(double(logits[order[size_t(i)]]) / o.temperature - top);
    total += weights[size_t(i)];
  }
  if (o.top_p < 1) {
    weights.resize(size_t(nucleus_size(weights, o.top_p * total)));
    total = std::accumulate(weights.begin(), weights.end(), 0.0);
  }
  const double target = u * total;
  double running = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    running += weights[i];
    if (target < running) return order[i];
  }
  return order[weights.size() - 1];
}

template int32_t choose_token(const float*, int64_t, const SamplingOptions&, double);
template int32_t choose_token(const double*, int64_t, const SamplingOptions&, double);

}  // namespace par
