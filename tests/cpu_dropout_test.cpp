// The CPU backend's float dropout (16 Philox calls per AVX-512 vector, or 8 per AVX2 one,
// where the build has them) against the scalar definition in core/philox.h, element by element and bitwise: the
// masks must be the ones every other backend and layout draws. Spans that start and end
// off the vector kernel's 64-element blocks, 1 to 3 threads, several examples.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "core/philox.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

TEST(CpuDropout, MatchesTheScalarDefinitionBitwise) {
  // 40013 elements per example: above the threaded threshold, not a multiple of 64.
  const int64_t batch = 3, per = 40013;
  const double p = 0.3;
  const DropoutKey key{0x123456789abcULL, 7, DropSite::layer_mlp(2)};
  const uint64_t example_base = 5;
  const auto xd = testing_util::random_vector<double>(batch * per, 21);
  const std::vector<float> x(xd.begin(), xd.end());
  const float keep_scale = float(1.0 / (1.0 - p));
  std::vector<float> want(x.size());
  int64_t dropped = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t e = 0; e < per; ++e) {
      const bool keep = dropout_keep(key, example_base + uint64_t(b), uint64_t(e), float(p));
      want[b * per + e] = keep ? x[b * per + e] * keep_scale : 0.0f;
      dropped += !keep;
    }
  // The mask is a real one: about p of the elements go.
  EXPECT_NEAR(double(dropped) / double(x.size()), p, 0.01);

  cpu::CpuOps<float> ops;
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<float> y(x.size(), -1.0f);
    ops.dropout(y.data(), x.data(), batch, per, p, key, example_base);
    int64_t mismatches = 0, first = -1;
    for (size_t i = 0; i < y.size(); ++i)
      if (std::memcmp(&y[i], &want[i], sizeof(float)) != 0) {
        if (first < 0) first = int64_t(i);
        ++mismatches;
      }
    EXPECT_EQ(mismatches, 0) << threads << " threads, first at element " << first;
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace par
