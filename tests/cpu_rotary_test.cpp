// The CPU backend's float rotary embedding (8 pairs per AVX-512 vector where the build has
// it, with masks for a last partial group) against the definition evaluated in double:
// band counts below, at and past a vector, heads wider than their rotated part (whose
// tail must not change), several rows per table row, both directions, 1 to 3 threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

struct RotaryCase {
  int64_t batch, n, heads, head_dim, bands;
};

void check(const RotaryCase& c, bool inverse) {
  const int64_t rows = c.batch * c.n, width = c.heads * c.head_dim;
  std::vector<float> cs(size_t(c.n * c.bands)), sn(cs.size());
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t k = 0; k < c.bands; ++k) {
      const double angle = double(i + 3) * std::pow(100.0, -double(k) / double(c.bands));
      cs[size_t(i * c.bands + k)] = float(std::cos(angle));
      sn[size_t(i * c.bands + k)] = float(std::sin(angle));
    }
  const auto xd = testing_util::random_vector<double>(rows * width, 31);
  const std::vector<float> x(xd.begin(), xd.end());
  // The definition, in double from the same float inputs.
  std::vector<double> want(x.begin(), x.end());
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t k = 0; k < c.bands; ++k) {
        const size_t e = size_t(r * width + h * c.head_dim + 2 * k);
        const double co = cs[size_t((r % c.n) * c.bands + k)];
        const double si = sign * sn[size_t((r % c.n) * c.bands + k)];
        want[e] = double(x[e]) * co - double(x[e + 1]) * si;
        want[e + 1] = double(x[e + 1]) * co + double(x[e]) * si;
      }
  cpu::CpuOps<float> ops;
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<float> y = x;
    ops.rotary(y.data(), c.batch, c.n, c.heads, c.head_dim, c.bands, cs.data(), sn.data(),
               inverse);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < c.heads; ++h)
        for (int64_t d = 0; d < c.head_dim; ++d) {
          const size_t e = size_t(r * width + h * c.head_dim + d);
          if (d < 2 * c.bands)  // two products and a sum of O(1) values in float
            ASSERT_NEAR(y[e], want[e], 1e-6) << "row " << r << " head " << h << " dim " << d
                                             << ", " << threads << " threads";
          else
            ASSERT_EQ(y[e], x[e]) << "unrotated dim " << d << " changed";
        }
  }
  omp_set_num_threads(saved);
}

TEST(CpuRotary, MatchesTheDefinition) {
  // batch n heads head_dim bands
  const RotaryCase cases[] = {
      {2, 300, 8, 32, 8},   // cpu-131k's heads: 8 bands, one whole vector
      {1, 5000, 8, 32, 8},  // enough elements to split rows across threads
      {2, 7, 3, 6, 2},      // fewer bands than a vector
      {1, 9, 2, 40, 17},    // two whole vectors and one band more
      {3, 4, 4, 16, 8},     // the whole head rotated
      {1, 11, 1, 34, 13},   // a partial second vector
  };
  for (const RotaryCase& c : cases)
    for (bool inverse : {false, true}) {
      SCOPED_TRACE(testing::Message() << "heads " << c.heads << " x " << c.head_dim << ", bands "
                                      << c.bands << (inverse ? ", inverse" : ""));
      check(c, inverse);
    }
}

}  // namespace
}  // namespace par
