// The CPU token-table attention of decoding (kernels/cpu/token_attention.cpp) beyond the
// op cases' agreement with the double reference: its bits do not depend on the threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "core/token_groups.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
using testing_util::random_vector;
namespace {

// The items of a token are scanned on whichever thread takes them and combined in their
// order: 1, 2, 3 or 5 threads give the same bits. One token holds 7,000 of the keys (four
// items of at most 2,048), so that a token's items are merged too, and 2 samples' queries
// make 16 query-heads. Queries this large leave the scores unbounded (bounded_references
// declines), so each item keeps its own maximum and the merge rescales.
TEST(CpuTokenAttention, SameBitsAtAnyThreadCount) {
  const int64_t n = 12000, V = 50, heads = 8, D = 32, nq = 2, width = heads * D, first = 500;
  const RotarySpec spec = make_rotary_spec(D, 0.5, 4096.0);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) tokens[size_t(j)] = j % 12 < 7 ? 5 : int32_t((j * 7 + 1) % V);
  const TokenGroups<float> g = group_tokens<float>(tokens.data(), n, 0, V, spec);
  TokenAttentionShape s{nq, heads, D, spec.bands, V, g.group.data(), g.pos.data(), g.stride,
                        first, 1.0 / std::sqrt(double(D))};
  const auto q = random_vector<float>(nq * width, 1, 40.0);
  const auto keys = random_vector<float>(V * width, 2, 1.5), values = random_vector<float>(V * width, 3);
  auto attend = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> o(size_t(nq * width), -1), lse(size_t(nq * heads), -1);
    cpu::CpuOps<float> ops;
    EXPECT_TRUE(ops.token_attention_forward(s, q.data(), keys.data(), values.data(), g.cos.data(),
                                            g.sin.data(), o.data(), lse.data()));
    return std::pair{o, lse};
  };
  const int before = omp_get_max_threads();
  const auto one = attend(1);
  for (int threads : {2, 3, 5}) {
    const auto got = attend(threads);
    EXPECT_EQ(got.first, one.first) << threads << " threads";
    EXPECT_EQ(got.second, one.second) << threads << " threads";
  }
  omp_set_num_threads(before);
  // Not a trivial output: every query-head saw keys.
  for (float l : one.second) EXPECT_TRUE(std::isfinite(l));
}

}  // namespace
}  // namespace par
