// The choice of a token for a uniform number (core/token_choice.h): sample_token, now a
// draw followed by choose_token, gives bit for bit the tokens of the single function it
// replaced for the same seed; the rule's ties and top-p boundary; and the CPU backend's
// Ops::sample_tokens, row by row.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "kernels/cpu/cpu_ops.h"
#include "tests/sampling_cases.h"
#include "train/sampling.h"

namespace par {
namespace {

using testing_util::sampling_cases;
using testing_util::sampling_logits;

// sample_token before the draw and the choice were split, kept verbatim as the reference.
int32_t sample_token_before_split(const std::vector<float>& logits, const SamplingOptions& o,
                                  std::mt19937_64& rng) {
  const int64_t V = int64_t(logits.size());
  if (o.temperature == 0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
  });
  int64_t keep = o.top_k > 0 ? std::min(o.top_k, V) : V;
  const double top = double(logits[size_t(order[0])]) / o.temperature;
  std::vector<double> p(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    p[size_t(i)] = std::exp(double(logits[size_t(order[size_t(i)])]) / o.temperature - top);
    sum += p[size_t(i)];
  }
  if (o.top_p < 1) {
    double cum = 0;
    int64_t n = 0;
    while (n < keep && cum < o.top_p * sum) cum += p[size_t(n++)];
    keep = std::max<int64_t>(1, n);
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[size_t(i)];
  }
  const double u = double(rng() >> 11) * 0x1p-53 * sum;
  double cum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += p[size_t(i)];
    if (u < cum) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

TEST(TokenChoice, SampleTokenGivesTheTokensOfBeforeTheSplit) {
  std::mt19937_64 logits_rng(11);
  int64_t draws = 0;
  for (int kind : {0, 1, 2})
    for (int64_t vocab : {1, 3, 259, 4000})
      for (double temperature : {0.0, 0.2, 1.0, 3.0})
        for (int64_t top_k : {0, 1, 2, 50})
          for (double top_p : {1.0, 0.95, 0.5, 1e-3}) {
            const SamplingOptions o{temperature, top_k, top_p};
            std::mt19937_64 now(uint64_t(draws) + 1), before(uint64_t(draws) + 1);
            for (int i = 0; i < 20; ++i, ++draws) {
              const std::vector<float> logits = sampling_logits(kind, vocab, logits_rng);
              ASSERT_EQ(sample_token(logits, o, now), sample_token_before_split(logits, o, before))
                  << "kind " << kind << ", vocab " << vocab << ", T " << temperature << ", top-k "
                  << top_k << ", top-p " << top_p << ", draw " << i;
            }
            ASSERT_EQ(now(), before()) << "the generators drifted apart";  // greedy draws nothing
          }
  EXPECT_GT(draws, 5000);
}

TEST(TokenChoice, TiesGoToTheSmallerIdAndTopPStopsWhereItIsReached) {
  const std::vector<float> equal = {0.5f, 2.0f, 2.0f, 2.0f, 2.0f, -0.0f, 0.0f};
  SamplingOptions greedy{0.0, 0, 1.0};
  EXPECT_EQ(choose_token(equal.data(), 7, greedy, 0.9), 1);
  SamplingOptions o{1.0, 0, 1.0};
  EXPECT_EQ(choose_token(equal.data(), 7, o, 0.0), 1);  // u = 0: the likeliest, smallest id
  // -0 and +0 are equal: ids in order.
  const std::vector<float> zeros = {-0.0f, 0.0f, -0.0f};
  EXPECT_EQ(choose_token(zeros.data(), 3, o, 0.0), 0);
  EXPECT_EQ(choose_token(zeros.data(), 3, o, std::nextafter(1.0, 0.0)), 2);
  // Four equal weights of 1 among the top, top-p 0.5: the running sum reaches 2 = 0.5 * 4 at
  // the second, so ids 1 and 2 are kept and u just below 1 picks id 2, never 3.
  const SamplingOptions half{1.0, 4, 0.5};
  EXPECT_EQ(choose_token(equal.data(), 7, half, std::nextafter(1.0, 0.0)), 2);
  EXPECT_EQ(choose_token(equal.data(), 7, half, 0.5), 2);  // 0.5 * 2 = 1 is not < 1
  EXPECT_EQ(choose_token(equal.data(), 7, half, 0.4999), 1);
  // top-k 3 of four equal logits: ids 1, 2, 3.
  EXPECT_EQ(choose_token(equal.data(), 7, SamplingOptions{1.0, 3, 1.0}, 0.999), 3);
}

// The order of step 1, read back one place at a time: at a temperature so high that every
// kept weight rounds to 1, top-k k and u = (k - 1/2) / k choose the k-th likeliest id.
template <typename T>
void expect_likeliest_first_order(const std::vector<T>& logits) {
  const int64_t V = int64_t(logits.size());
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)];
  });
  for (int64_t k = 1; k <= V; ++k) {
    const SamplingOptions o{1e300, k, 1.0};
    ASSERT_EQ(choose_token(logits.data(), V, o, (double(k) - 0.5) / double(k)), order[size_t(k - 1)])
        << "place " << k << " of " << V;
  }
}

// Where the likeliest logit over the temperature is not finite, the weights would be NaN:
// the choice is the first of the order, whatever top-k, top-p and u (before, with top-p 1,
// the last kept token).
TEST(TokenChoice, ANonFiniteTopLogitChoosesTheFirstOfTheOrder) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> two_inf{1, inf, 2, inf}, all_minus_inf{-inf, -inf, -inf};
  const std::vector<float> finite{0.5f, 3, -1, 2.5f};
  for (double top_p : {1.0, 0.9})
    for (int64_t top_k : {int64_t(0), int64_t(3)})
      for (double u : {0.0, 0.5, 0.999}) {
        SCOPED_TRACE(cat("top_p ", top_p, " top_k ", top_k, " u ", u));
        EXPECT_EQ(choose_token(two_inf.data(), 4, SamplingOptions{1.0, top_k, top_p}, u), 1);
        EXPECT_EQ(choose_token(all_minus_inf.data(), 3, SamplingOptions{1.0, top_k, top_p}, u), 0);
        EXPECT_EQ(choose_token(finite.data(), 4, SamplingOptions{1e-310, top_k, top_p}, u), 1);
      }
}

TEST(TokenChoice, OrderIsByLogitThenIdForEveryKindOfValue) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 20; ++round) {
    // Few distinct values (many ties), both zeros, subnormals, and values that share high
    // bytes, so that every digit of the sort decides some places.
    const std::vector<float> pool = {0.0f, -0.0f, 1.0f, -1.0f, 1e-40f, -1e-40f, 3.5f, 3.5000002f,
                                     -3.5f, 1e30f, -1e30f, 0.1f, 0.10000001f};
    std::vector<float> f(size_t(1 + rng() % 300));
    std::vector<double> d(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
      f[i] = rng() % 2 ? pool[rng() % pool.size()] : float(int64_t(rng() % 2001) - 1000) / 64.0f;
      d[i] = rng() % 2 ? double(f[i]) : double(f[i]) + (rng() % 2 ? 1e-12 : -1e-300);
    }
    expect_likeliest_first_order(f);
    expect_likeliest_first_order(d);
  }
}

TEST(TokenChoice, CpuOpsSamplesEveryRowByTheRule) {
  cpu::CpuOps<float> ops;
  for (const auto& c : sampling_cases(1000)) {
    std::vector<int32_t> ids(static_cast<size_t>(c.rows), -1);
    ops.sample_tokens(ids.data(), c.logits.data(), c.rows, c.vocab, c.opts, c.u.data());
    for (int64_t r = 0; r < c.rows; ++r)
      ASSERT_EQ(ids[size_t(r)],
                choose_token(c.logits.data() + r * c.vocab, c.vocab, c.opts, c.u[size_t(r)]))
          << c.describe() << ", row " << r;
  }
}

}  // namespace
}  // namespace par
