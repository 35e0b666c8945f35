// The softmax's row max (kernels/cpu/attention_blocks.h), whose float version runs vector
// chains four vectors at a time plus a masked tail: every length from 1 to 200, with the
// maximum at every position, on all-negative rows (a tail that padded with zeros would
// win) and on mixed rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/attention_blocks.h"
#include "tests/test_util.h"

namespace par {
namespace {

using cpu::attention_detail::row_max;

TEST(CpuRowMax, FindsTheMaximumAtEveryLengthAndPosition) {
  const auto noise = testing_util::random_vector<double>(200, 5);
  for (int64_t n = 1; n <= 200; ++n) {
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> negative(size_t(n) + 16), mixed(size_t(n) + 16);
      for (int64_t j = 0; j < n; ++j) {
        negative[size_t(j)] = float(-10.0 - std::abs(noise[size_t(j)]));
        mixed[size_t(j)] = float(noise[size_t(j)]);
      }
      // Past the row: larger values a read beyond n would pick up.
      std::fill(negative.begin() + n, negative.end(), 100.0f);
      std::fill(mixed.begin() + n, mixed.end(), 100.0f);
      negative[size_t(at)] = -1.5f;
      mixed[size_t(at)] = 7.25f;
      ASSERT_EQ(row_max(negative.data(), n), -1.5f) << "n " << n << " at " << at;
      ASSERT_EQ(row_max(mixed.data(), n), 7.25f) << "n " << n << " at " << at;
    }
  }
}

}  // namespace
}  // namespace par
