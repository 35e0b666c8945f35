// The CPU's choice of a token for a uniform number (core/token_choice.h): the definition
// that other backends' Ops::sample_tokens are tested against.
#include "core/token_choice.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace par {

void SamplingOptions::validate() const {
  if (!(temperature >= 0)) fail_user("--temperature must be >= 0 (0: greedy)");
  if (top_k < 0) fail_user("--top-k must be >= 0 (0: no limit)");
  if (!(top_p > 0 && top_p <= 1)) fail_user("--top-p must be in (0, 1] (1: no limit)");
}

namespace {

// Ids from most to least likely; equal logits by id, so the order is deterministic.
template <typename T>
std::vector<int32_t> likeliest_first(const T* logits, int64_t vocab) {
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
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
