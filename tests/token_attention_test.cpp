// Ops::token_attention_forward against attention over the materialized keys: every key a
// table row rotated at its position, every value a table row, PAD keys invisible.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/rotary.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;

template <typename T>
void check(int64_t heads, int64_t head_dim, double rotary_fraction, double tol,
           bool all_invisible = false) {
  const int64_t V = 11, n = 5000, width = heads * head_dim, first = 130000;
  cpu::CpuOps<T> ops;
  const RotarySpec spec = make_rotary_spec(head_dim, rotary_fraction, 4096);
  const auto key_table = random_vector<T>(V * width, 1, 1.0);
  const auto value_table = random_vector<T>(V * width, 2, 1.0);
  const auto q = random_vector<T>(width, 3, 1.0);
  std::mt19937_64 rng(4);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  std::vector<int64_t> pos(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    tokens[size_t(j)] = int32_t(rng() % V);
    keep[size_t(j)] = !all_invisible && tokens[size_t(j)] != 0;
    pos[size_t(j)] = first + j;
  }
  std::vector<T> cos, sin;
  make_rotary_tables(spec, first, n, cos, sin);

  // n spans several of the kernel's chunks per thread, so later chunks raise the running
  // maximum and rescale what was summed before.
  // Reference: the keys and values themselves.
  std::vector<T> k(size_t(n * width)), v(size_t(n * width));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < width; ++i) {
      k[size_t(j * width + i)] = key_table[size_t(tokens[size_t(j)] * width + i)];
      v[size_t(j * width + i)] = value_table[size_t(tokens[size_t(j)] * width + i)];
    }
  ops.rotary(k.data(), 1, n, heads, head_dim, spec.bands, cos.data(), sin.data(), false);
  const double scale = 1.0 / std::sqrt(double(head_dim));
  const int64_t q_pos = first + n - 1;
  std::vector<T> expected(static_cast<size_t>(width)), lse(static_cast<size_t>(heads));
  AttentionShape a{1, 1, n, heads, head_dim, &q_pos, pos.data(), keep.data(), scale};
  ops.attention_forward(a, q.data(), k.data(), v.data(), expected.data(), lse.data());

  std::vector<T> got(static_cast<size_t>(width), T(99));
  TokenAttentionShape s{n, heads, head_dim, spec.bands, V, tokens.data(), keep.data(), scale};
  ASSERT_TRUE(ops.token_attention_forward(s, q.data(), key_table.data(), value_table.data(),
                                          cos.data(), sin.data(), got.data()));
  double err = 0, ref = 0;
  for (int64_t i = 0; i < width; ++i) {
    err = std::max(err, std::abs(double(got[size_t(i)]) - double(expected[size_t(i)])));
    ref = std::max(ref, std::abs(double(expected[size_t(i)])));
  }
  if (all_invisible) {
    EXPECT_EQ(ref, 0.0);
    EXPECT_EQ(err, 0.0) << "a query that sees no key gets 0";
  } else {
    EXPECT_GT(ref, 0.05);
    EXPECT_LE(err / ref, tol) << heads << " heads of " << head_dim;
  }
}

TEST(TokenAttention, MatchesMaterializedKeysDouble) {
  for (int64_t heads : {1, 2, 3, 8, 16}) check<double>(heads, 8, 0.5, 1e-12);
  check<double>(4, 16, 1.0, 1e-12);   // every dimension rotated
  check<double>(4, 16, 0.0, 1e-12);   // none
}

TEST(TokenAttention, MatchesMaterializedKeysFloat) {
  for (int64_t heads : {1, 3, 8}) check<float>(heads, 32, 0.5, 2e-5);
}

TEST(TokenAttention, NoVisibleKeyGivesZero) { check<double>(8, 8, 0.5, 0, true); }

}  // namespace
}  // namespace par
