// Ops::token_attention_forward with keys of each query's own (TokenAttentionShape::own_group,
// decoding's samples over their generated keys) against attention over the materialized
// keys: query i sees the shared keys and its own, nothing of another query's. The CPU
// kernel scans a token's own keys with the coefficients of its shared keys.
#include <gtest/gtest.h>
#include <omp.h>

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
  int64_t heads = 8, head_dim = 32, nq = 3;
  double q_scale = 1.0;       // of the queries' random values (40: unbounded scores)
  int64_t first_visible = 0;  // the window's start, relative to the first shared key
  int64_t own_keys = 700;     // each query's
};

// The keys: n shared ones from `first` on, then m own ones per query. Token 9 only the own
// keys have (an item of no shared key), about a quarter of them (with m = 12,000, more than
// the 2,048 keys of a work item); query 1's own keys are all PAD.
template <typename T>
struct Keys {
  static constexpr int64_t V = 11, n = 3000, first = 130000;
  int64_t m;
  std::vector<int32_t> shared;
  std::vector<std::vector<int32_t>> own;  // [nq][m]
  Keys(int64_t nq, int64_t own_keys) : m(own_keys) {
    std::mt19937_64 rng(5);
    for (int64_t j = 0; j < n; ++j) shared.push_back(int32_t(rng() % 9));
    for (int64_t i = 0; i < nq; ++i) {
      std::vector<int32_t> t;
      for (int64_t j = 0; j < m; ++j)
        t.push_back(i == 1 ? kPadToken : rng() % 5 == 0 ? 9 : int32_t(rng() % (V - 1)));
      own.push_back(t);
    }
  }
};

template <typename T>
std::pair<std::vector<T>, std::vector<T>> attend_with_own_keys(const Case& c, const Keys<T>& keys,
                                                               const std::vector<T>& q,
                                                               const std::vector<T>& key_table,
                                                               const std::vector<T>& value_table) {
  constexpr int64_t V = Keys<T>::V, n = Keys<T>::n, first = Keys<T>::first;
  const RotarySpec spec = make_rotary_spec(c.head_dim, 0.5, 4096);
  const TokenGroups<T> g = group_tokens<T>(keys.shared.data(), n, first, V, spec);
  // Every query's own groups in one block each.
  const int64_t B = spec.bands;
  const TokenGroupBlocks<T> own = group_tokens_in_blocks<T>(keys.own, first + n, V, spec);
  TokenAttentionShape s{c.nq, c.heads, c.head_dim, B, V, g.group.data(), g.pos.data(), g.stride,
                        first + c.first_visible, 1.0 / std::sqrt(double(c.head_dim))};
  s.own_group = own.group.data();
  s.own_pos = own.pos.data();
  s.own_stride = own.stride;
  s.own_cos = own.cos.data();
  s.own_sin = own.sin.data();
  const int64_t width = c.heads * c.head_dim;
  std::vector<T> o(size_t(c.nq * width), T(99)), lse(size_t(c.nq * c.heads), T(99));
  cpu::CpuOps<T> ops;
  EXPECT_TRUE(ops.token_attention_forward(s, q.data(), key_table.data(), value_table.data(),
                                          g.cos.data(), g.sin.data(), o.data(), lse.data()));
  return {o, lse};
}

template <typename T>
void check(const Case& c, double tol) {
  constexpr int64_t V = Keys<T>::V, n = Keys<T>::n, first = Keys<T>::first;
  const int64_t width = c.heads * c.head_dim, m = c.own_keys;
  const Keys<T> keys(c.nq, m);
  const auto key_table = random_vector<T>(V * width, 1, 1.0);
  const auto value_table = random_vector<T>(V * width, 2, 1.0);
  const auto q = random_vector<T>(c.nq * width, 3, c.q_scale);
  const auto [got, got_lse] = attend_with_own_keys(c, keys, q, key_table, value_table);

  // Reference, per query in double: its n + m keys materialized, rotated at their positions.
  const RotarySpec spec = make_rotary_spec(c.head_dim, 0.5, 4096);
  std::vector<double> cos64, sin64;
  make_rotary_tables(spec, first, n + m, cos64, sin64);
  cpu::CpuOps<double> exact;
  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  std::vector<int64_t> pos(static_cast<size_t>(n + m));
  for (int64_t j = 0; j < n + m; ++j) pos[size_t(j)] = first + j;
  const std::vector<int64_t> q_pos{first + n + m};
  for (int64_t i = 0; i < c.nq; ++i) {
    std::vector<double> k(size_t((n + m) * width)), v(k.size());
    std::vector<uint8_t> keep(static_cast<size_t>(n + m));
    for (int64_t j = 0; j < n + m; ++j) {
      const int32_t t = j < n ? keys.shared[size_t(j)] : keys.own[size_t(i)][size_t(j - n)];
      keep[size_t(j)] = t != kPadToken && j >= c.first_visible;
      for (int64_t x = 0; x < width && t != kPadToken; ++x) {
        k[size_t(j * width + x)] = double(key_table[size_t(t * width + x)]);
        v[size_t(j * width + x)] = double(value_table[size_t(t * width + x)]);
      }
    }
    exact.rotary(k.data(), 1, n + m, c.heads, c.head_dim, spec.bands, cos64.data(),
                 sin64.data(), false);
    std::vector<double> want(static_cast<size_t>(width)), want_lse(static_cast<size_t>(c.heads));
    const std::vector<double> qi(q.begin() + i * width, q.begin() + (i + 1) * width);
    AttentionShape a{1, 1, n + m, c.heads, c.head_dim, q_pos.data(), pos.data(), keep.data(), scale};
    exact.attention_forward(a, qi.data(), k.data(), v.data(), want.data(), want_lse.data());
    const std::vector<T> oi(got.begin() + i * width, got.begin() + (i + 1) * width);
    EXPECT_TRUE(testing_util::close(oi, want, tol)) << "query " << i << ", q x " << c.q_scale;
    for (int64_t h = 0; h < c.heads; ++h) {  // lse is [heads, nq]; -inf where no key is seen
      const double l = double(got_lse[size_t(h * c.nq + i)]), want_l = want_lse[size_t(h)];
      if (std::isinf(want_l))
        EXPECT_EQ(l, want_l) << "query " << i << ", head " << h;
      else
        EXPECT_NEAR(l, want_l, tol * 10) << "query " << i << ", head " << h;
    }
  }
}

TEST(TokenAttentionOwnKeys, MatchMaterializedKeysDouble) {
  check<double>(Case{}, 1e-12);
  check<double>(Case{4, 16, 2}, 1e-12);
}

// Bounded references (queries of scale 1) and each lane's running maximum (40: the bound
// is declined), whose partials of shared and own keys are merged by their references.
// With the window starting 100 keys into the own ones, only own keys are visible.
TEST(TokenAttentionOwnKeys, MatchMaterializedKeysFloat) {
  for (double q_scale : {1.0, 40.0})
    for (int64_t first_visible : {int64_t(0), int64_t(2990), Keys<float>::n + 100})
      check<float>(Case{8, 32, 3, q_scale, first_visible}, 2e-5);
  check<float>(Case{4, 16, 4}, 2e-5);  // 4 bands
  check<float>(Case{4, 12, 2}, 2e-5);  // 3 bands, the general scans
}

// A token with more own keys of a query than a work item holds: the first 2,048 go with the
// token's first item, the rest in items of that query's own keys alone.
TEST(TokenAttentionOwnKeys, ManyOwnKeysOfOneToken) {
  for (double q_scale : {1.0, 40.0}) check<float>(Case{8, 32, 2, q_scale, 0, 12000}, 2e-5);
  check<double>(Case{4, 16, 2, 1.0, 0, 12000}, 1e-12);
}

// A tile holds at most 128 query-heads: 40 queries of 8 heads take three, each query's
// heads spread over them (query-head h * nq + i), so the own keys of a query are scanned
// with the part of its heads each tile holds. Same bits at any thread count.
TEST(TokenAttentionOwnKeys, QueriesAcrossTilesAndThreads) {
  const Case c{8, 32, 40};
  check<float>(c, 2e-5);
  const Keys<float> keys(c.nq, c.own_keys);
  const int64_t width = c.heads * c.head_dim;
  const auto key_table = random_vector<float>(Keys<float>::V * width, 1, 1.0);
  const auto value_table = random_vector<float>(Keys<float>::V * width, 2, 1.0);
  const auto q = random_vector<float>(c.nq * width, 3, 1.0);
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = attend_with_own_keys(c, keys, q, key_table, value_table);
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    const auto got = attend_with_own_keys(c, keys, q, key_table, value_table);
    EXPECT_EQ(got.first, one.first) << threads << " threads";
    EXPECT_EQ(got.second, one.second) << threads << " threads";
  }
  omp_set_num_threads(before);
}

}  // namespace
}  // namespace par
