// Ops::token_attention_forward against attention over the materialized keys: every key a
// table row rotated at its position, every value a table row, PAD keys and keys before the
// first visible position invisible; and the grouping of core/token_groups.h itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/constants.h"
#include "core/rotary.h"
#include "core/token_groups.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::random_vector;

struct Case {
  int64_t heads = 8, head_dim = 8, nq = 1;
  double rotary_fraction = 0.5;
  int64_t first_visible = 0;  // keys before the window's start (relative to the first key)
  bool all_pad = false;
  double q_scale = 1.0;  // of the queries' random values
};

template <typename T>
void check(const Case& c, double tol) {
  const int64_t V = 11, n = 5000, width = c.heads * c.head_dim, first = 130000;
  cpu::CpuOps<T> ops;
  const RotarySpec spec = make_rotary_spec(c.head_dim, c.rotary_fraction, 4096);
  const auto key_table = random_vector<T>(V * width, 1, 1.0);
  const auto value_table = random_vector<T>(V * width, 2, 1.0);
  const auto q = random_vector<T>(c.nq * width, 3, c.q_scale);
  std::mt19937_64 rng(4);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  std::vector<int64_t> pos(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    // Token 4 is rare (a group shorter than a vector), token 7 common (several work items).
    const uint64_t x = rng() % 64;
    tokens[size_t(j)] = c.all_pad ? kPadToken : x < 1 ? 4 : x < 30 ? 7 : int32_t(x % V);
    if (tokens[size_t(j)] == 4 && x >= 1) tokens[size_t(j)] = 5;
    keep[size_t(j)] = tokens[size_t(j)] != kPadToken && j >= c.first_visible;
    pos[size_t(j)] = first + j;
  }
  // Reference: the keys and values themselves, the queries after every key, in double from
  // the same inputs, so that a float kernel is measured by its own rounding alone (a float
  // reference's is as large, and moves with the compiler's flags).
  std::vector<double> k(size_t(n * width)), v(size_t(n * width));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < width; ++i) {
      k[size_t(j * width + i)] = double(key_table[size_t(tokens[size_t(j)] * width + i)]);
      v[size_t(j * width + i)] = double(value_table[size_t(tokens[size_t(j)] * width + i)]);
    }
  cpu::CpuOps<double> exact;
  std::vector<double> cos64, sin64;
  make_rotary_tables(spec, first, n, cos64, sin64);
  exact.rotary(k.data(), 1, n, c.heads, c.head_dim, spec.bands, cos64.data(), sin64.data(), false);
  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  const std::vector<int64_t> q_pos(static_cast<size_t>(c.nq), first + n);
  const std::vector<double> q64(q.begin(), q.end());
  std::vector<double> expected(size_t(c.nq * width)), expected_lse(size_t(c.nq * c.heads));
  AttentionShape a{1, c.nq, n, c.heads, c.head_dim, q_pos.data(), pos.data(), keep.data(), scale};
  exact.attention_forward(a, q64.data(), k.data(), v.data(), expected.data(), expected_lse.data());

  const TokenGroups<T> g = group_tokens<T>(tokens.data(), n, first, V, spec);
  std::vector<T> got(expected.size(), T(99)), lse(expected_lse.size(), T(99));
  TokenAttentionShape s{c.nq,      c.heads, c.head_dim, spec.bands,
                        V,         g.group.data(), g.pos.data(), g.stride,
                        first + c.first_visible, scale};
  ASSERT_TRUE(ops.token_attention_forward(s, q.data(), key_table.data(), value_table.data(),
                                          g.cos.data(), g.sin.data(), got.data(), lse.data()));
  if (c.all_pad) {
    for (T x : got) EXPECT_EQ(x, T(0)) << "a query that sees no key gets 0";
    for (T x : lse) EXPECT_EQ(x, -std::numeric_limits<T>::infinity());
    return;
  }
  EXPECT_TRUE(testing_util::close(got, expected, tol))
      << c.heads << " heads of " << c.head_dim << ", " << c.nq << " queries";
  for (size_t i = 0; i < lse.size(); ++i)
    EXPECT_NEAR(double(lse[i]), double(expected_lse[i]), tol * 10) << "lse " << i;
}

TEST(TokenAttention, MatchesMaterializedKeysDouble) {
  for (int64_t heads : {1, 2, 3, 8, 16}) check<double>(Case{heads, 8}, 1e-12);
  check<double>(Case{4, 16, 1, 1.0}, 1e-12);   // every dimension rotated
  check<double>(Case{4, 16, 1, 0.0}, 1e-12);   // none
}

// Against the double reference the float kernels' error is at most 4.4e-6 of the largest
// output (queries 40 times larger, below), about 1e-7 elsewhere. A float reference was no
// yardstick: its one-query kernel sums the terms of a key repeated 2,000 times, unrotated,
// one by one, which reached 1.9e-5 (and 2.3e-5 in a -O2 build).
TEST(TokenAttention, MatchesMaterializedKeysFloat) {
  // 32 wide heads with half rotated: 8 bands, the register-held kernel; 16 wide: 4 bands;
  // 64 wide: 16 bands, the general one.
  for (int64_t heads : {1, 3, 8}) check<float>(Case{heads, 32}, 2e-5);
  check<float>(Case{8, 16}, 2e-5);
  check<float>(Case{4, 64}, 2e-5);
  check<float>(Case{2, 48}, 2e-5);  // 12 bands: 8 and then 4 in the coefficients' vectors
  // Odd band counts (the chains' last band alone), one band, and none.
  check<float>(Case{4, 12}, 2e-5);
  check<float>(Case{4, 4}, 2e-5);
  check<float>(Case{4, 16, 1, 0.0}, 2e-5);
}

// The float kernels scan a token's keys against a bound of its scores
// (the sum of the bands' amplitudes) where every query-head's bound lies within 48 (base 2)
// of its unrotated term, and track each lane's maximum otherwise. Queries 8 times larger
// put the amplitudes near that limit (30-50); 40 times larger, past it (up to 280). With
// only the last key or the last few visible, a token's scores can lie that far below its
// bound: scanned against the bound, their terms would vanish below float's range.
TEST(TokenAttention, WideAndHugeScoreRangesInFloat) {
  for (double q_scale : {8.0, 40.0})
    for (int64_t first_visible : {0, 4990, 4999}) {
      check<float>(Case{8, 32, 2, 0.5, first_visible, false, q_scale}, 2e-5);
      check<float>(Case{8, 16, 2, 0.5, first_visible, false, q_scale}, 2e-5);
      check<float>(Case{4, 64, 2, 0.5, first_visible, false, q_scale}, 2e-5);  // 16 bands
      check<float>(Case{4, 12, 2, 0.5, first_visible, false, q_scale}, 2e-5);  // 3 bands
    }
}

TEST(TokenAttention, SeveralQueriesAndTiles) {
  // 40 queries of 8 heads: 320 query-heads, three tiles of the kernel.
  check<double>(Case{8, 8, 40}, 1e-12);
  check<float>(Case{8, 32, 40}, 2e-5);
}

TEST(TokenAttention, KeysBeforeTheWindowAreInvisible) {
  check<double>(Case{8, 8, 2, 0.5, 3333}, 1e-12);
  check<float>(Case{8, 32, 2, 0.5, 3333}, 2e-5);
}

TEST(TokenAttention, NoVisibleKeyGivesZero) {
  check<double>(Case{8, 8, 2, 0.5, 0, true}, 0);
  check<float>(Case{8, 32, 2, 0.5, 0, true}, 0);
}

// batch > 1: examples over keys of their own (decoding's samples over their generated
// keys), each with its own token groups, in one call. Equal to a call per example: bit for
// bit while an example's query-heads fit one pass (kernels/cpu/token_attention.cpp), as a
// step's do, and within rounding past that (a refill's many latents). Examples with no
// visible key, a single key, and many.
template <typename T>
void check_batch(int64_t nq, double tol) {
  const int64_t V = 13, heads = 8, D = 32, width = heads * D, batch = 4, first = 500;
  const RotarySpec spec = make_rotary_spec(D, 0.5, 4096);
  const int64_t B = spec.bands, counts[batch] = {3000, 1, 0, 700};
  const auto key_table = random_vector<T>(V * width, 1, 1.0);
  const auto value_table = random_vector<T>(V * width, 2, 1.0);
  const auto q = random_vector<T>(batch * nq * width, 3, 1.0);
  const int64_t stride = token_groups_stride(3000);
  std::vector<int64_t> group(size_t(batch * (V + 1))), pos(size_t(batch * stride));
  std::vector<T> cos(size_t(batch * B * stride)), sin(cos.size());
  std::vector<TokenGroups<T>> each;
  TokenGroups<T> reused;
  std::mt19937_64 rng(7);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> tokens(static_cast<size_t>(counts[b]));
    for (int32_t& t : tokens) t = int32_t(rng() % V);
    std::vector<T> c, sn;
    make_rotary_tables(spec, first, counts[b], c, sn);
    // Into groups that held another example's before: nothing of those may stay.
    group_tokens<T>(tokens.data(), counts[b], first, V, B, c.data(), sn.data(), stride, reused);
    each.push_back(reused);
    const TokenGroups<T>& g = each.back();
    std::copy(g.group.begin(), g.group.end(), group.begin() + b * (V + 1));
    std::copy(g.pos.begin(), g.pos.end(), pos.begin() + b * stride);
    std::copy(g.cos.begin(), g.cos.end(), cos.begin() + b * B * stride);
    std::copy(g.sin.begin(), g.sin.end(), sin.begin() + b * B * stride);
  }
  cpu::CpuOps<T> ops;
  const double scale = 1.0 / std::sqrt(double(D));
  TokenAttentionShape s{nq, heads, D, B, V, group.data(), pos.data(), stride, first + 2, scale};
  s.batch = batch;
  std::vector<T> o(size_t(batch * nq * width), T(99)), lse(size_t(batch * heads * nq), T(99));
  ASSERT_TRUE(ops.token_attention_forward(s, q.data(), key_table.data(), value_table.data(),
                                          cos.data(), sin.data(), o.data(), lse.data()));
  for (int64_t b = 0; b < batch; ++b) {
    const TokenGroups<T>& g = each[size_t(b)];
    TokenAttentionShape one{nq,           heads,    D,         B,    V, g.group.data(),
                            g.pos.data(), stride, first + 2, scale};
    std::vector<T> o1(size_t(nq * width)), lse1(size_t(heads * nq));
    ASSERT_TRUE(ops.token_attention_forward(one, q.data() + b * nq * width, key_table.data(),
                                            value_table.data(), g.cos.data(), g.sin.data(),
                                            o1.data(), lse1.data()));
    const std::vector<T> ob(o.begin() + b * nq * width, o.begin() + (b + 1) * nq * width);
    const std::vector<T> lb(lse.begin() + b * heads * nq, lse.begin() + (b + 1) * heads * nq);
    if (tol == 0) {
      EXPECT_EQ(ob, o1) << "example " << b;
      EXPECT_EQ(lb, lse1) << "example " << b;
    } else {
      EXPECT_TRUE(testing_util::close(ob, o1, tol)) << "example " << b;
      for (size_t i = 0; i < lb.size(); ++i)
        if (lse1[i] == -std::numeric_limits<T>::infinity())
          EXPECT_EQ(lb[i], lse1[i]);
        else
          EXPECT_NEAR(double(lb[i]), double(lse1[i]), tol * 10);
    }
    if (counts[b] <= 2) {  // the first visible position is first + 2: no key
      for (size_t i = 0; i < lb.size(); ++i) EXPECT_EQ(lb[i], -std::numeric_limits<T>::infinity());
    }
  }
}

TEST(TokenAttention, BatchOfExamplesWithKeysOfTheirOwn) {
  check_batch<float>(1, 0);       // 8 query-heads an example: 4 examples in one pass
  check_batch<double>(1, 0);
  check_batch<float>(20, 2e-5);  // 160 query-heads an example: passes split them
  check_batch<double>(20, 1e-12);
}

// SlidingRotaryTables: the rows of make_rotary_tables, bit for bit, as the range slides
// forward (kept rows reused), grows, shrinks, jumps back and jumps past what it holds.
TEST(TokenGroups, SlidingRotaryTablesEqualTheTablesAsTheRangeSlides) {
  const RotarySpec spec = make_rotary_spec(32, 0.5, 131072);
  // Rows for 2,048 positions held from the start; the 2,600 and 9,000 grow them, the last
  // two are made in chunks.
  SlidingRotaryTables<float> rows(spec, 2048);
  const std::pair<int64_t, int64_t> ranges[] = {{130000, 2000}, {130500, 2000}, {130500, 2600},
                                                {131000, 100},  {129000, 50},   {200000, 300},
                                                {300000, 9000}, {301000, 9500}};
  for (const auto& [first, count] : ranges) {
    const float *c = nullptr, *s = nullptr;
    rows.rows(first, count, &c, &s);
    std::vector<float> ec, es;
    make_rotary_tables(spec, first, count, ec, es);
    EXPECT_EQ(std::vector<float>(c, c + ec.size()), ec) << first << " + " << count;
    EXPECT_EQ(std::vector<float>(s, s + es.size()), es) << first << " + " << count;
  }
}

// Decoder::memory counts the host's rotary rows and groups at the size they are given up
// front: sliding over the window and regrouping must not take more.
TEST(TokenGroups, SlidingTablesAndGroupsStayInTheMemoryHeldFromTheStart) {
  const RotarySpec spec = make_rotary_spec(32, 0.5, 131072);
  const int64_t window = 10000, V = 7;
  SlidingRotaryTables<float> rows(spec, window);
  TokenGroups<float> g;
  reserve_token_groups(g, V, spec.bands, window);
  const float* held_rows = nullptr;
  const void* held[4] = {};
  std::vector<int32_t> tokens(static_cast<size_t>(window + 3000));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i * 7 % 11 % V);
  // From a few keys to the whole window, then sliding.
  const std::pair<int64_t, int64_t> ranges[] = {{0, 100}, {0, window}, {1, window},
                                                {2500, window}, {3000, window}};
  for (const auto& [first, count] : ranges) {
    const float *c = nullptr, *s = nullptr;
    rows.rows(first, count, &c, &s);
    group_tokens<float>(tokens.data() + first, count, first, V, spec.bands, c, s, 0, g);
    if (!held_rows) {
      held_rows = c;
      held[0] = g.group.data();
      held[1] = g.pos.data();
      held[2] = g.cos.data();
      held[3] = g.sin.data();
    }
    EXPECT_EQ(c, held_rows) << "the rows moved at " << first;
    EXPECT_EQ(g.group.data(), held[0]) << first;
    EXPECT_EQ(g.pos.data(), held[1]) << first;
    EXPECT_EQ(g.cos.data(), held[2]) << first;
    EXPECT_EQ(g.sin.data(), held[3]) << first;
  }
}

TEST(TokenGroups, GroupsKeysByTokenInPositionOrderWithoutPad) {
  const RotarySpec spec = make_rotary_spec(8, 0.5, 64);
  const std::vector<int32_t> tokens = {3, kPadToken, 5, 3, 4, 3, 5};
  const TokenGroups<double> g = group_tokens<double>(tokens.data(), 7, 100, 6, spec);
  EXPECT_EQ(g.group, (std::vector<int64_t>{0, 0, 0, 0, 3, 4, 6}));
  EXPECT_EQ(g.pos, (std::vector<int64_t>{100, 103, 105, 104, 102, 106}));
  EXPECT_GE(g.stride, g.keys() + 16);
  EXPECT_EQ(g.stride % 16, 0);
  std::vector<double> c, s;
  make_rotary_tables(spec, 104, 1, c, s);
  for (int64_t b = 0; b < spec.bands; ++b) {
    EXPECT_EQ(g.cos[size_t(b * g.stride + 3)], c[size_t(b)]) << "key 3 is position 104";
    EXPECT_EQ(g.sin[size_t(b * g.stride + 3)], s[size_t(b)]);
    EXPECT_EQ(g.cos[size_t(b * g.stride + 6)], 0.0) << "pads are numbers";
  }
}

TEST(TokenGroups, BlocksHoldEachSequencesGroupsAtTheLongestStride) {
  const RotarySpec spec = make_rotary_spec(8, 0.5, 64);
  const std::vector<std::vector<int32_t>> tokens = {
      {3, kPadToken, 5, 3}, {}, {4, 4, 1, 5, 2, 3, 0, 5, 5, 1, 1, 2, 3, 4, 5, 2, 3}};
  const TokenGroupBlocks<float> blocks = group_tokens_in_blocks<float>(tokens, 40, 6, spec);
  const int64_t stride = token_groups_stride(17), B = spec.bands;
  ASSERT_EQ(blocks.stride, stride);
  ASSERT_EQ(blocks.group.size(), size_t(3 * 7));
  ASSERT_EQ(blocks.pos.size(), size_t(3 * stride));
  ASSERT_EQ(blocks.cos.size(), size_t(3 * B * stride));
  for (int64_t k = 0; k < 3; ++k) {
    const auto& t = tokens[size_t(k)];
    const TokenGroups<float> g = group_tokens<float>(t.data(), int64_t(t.size()), 40, 6, spec);
    EXPECT_EQ(std::vector<int64_t>(blocks.group.begin() + k * 7, blocks.group.begin() + k * 7 + 7),
              g.group);
    for (int64_t j = 0; j < stride; ++j) {
      EXPECT_EQ(blocks.pos[size_t(k * stride + j)], j < g.keys() ? g.pos[size_t(j)] : 0)
          << k << " " << j;
      for (int64_t b = 0; b < B; ++b) {
        const float c = j < g.keys() ? g.cos[size_t(b * g.stride + j)] : 0.0f;
        const float s = j < g.keys() ? g.sin[size_t(b * g.stride + j)] : 0.0f;
        EXPECT_EQ(blocks.cos[size_t((k * B + b) * stride + j)], c) << k << " " << b << " " << j;
        EXPECT_EQ(blocks.sin[size_t((k * B + b) * stride + j)], s) << k << " " << b << " " << j;
      }
    }
  }
}

}  // namespace
}  // namespace par
