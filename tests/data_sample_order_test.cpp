// window_of_sample: a reproducible permutation of the windows in every epoch, different
// between epochs and seeds.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "data/sample_order.h"

namespace par {
namespace {

std::vector<int64_t> epoch_order(uint64_t seed, int64_t epoch, int64_t w) {
  std::vector<int64_t> out(static_cast<size_t>(w));
  for (int64_t i = 0; i < w; ++i) out[static_cast<size_t>(i)] = window_of_sample(seed, epoch * w + i, w);
  return out;
}

TEST(SampleOrderTest, EachEpochIsAPermutation) {
  for (int64_t w : {1, 2, 3, 5, 7, 16, 17, 1000, 4097}) {
    std::vector<int64_t> all(static_cast<size_t>(w));
    std::iota(all.begin(), all.end(), 0);
    for (uint64_t seed : {0ull, 12345ull}) {
      for (int64_t epoch = 0; epoch < 3; ++epoch) {
        std::vector<int64_t> order = epoch_order(seed, epoch, w);
        std::sort(order.begin(), order.end());
        EXPECT_EQ(order, all) << "W=" << w << " seed=" << seed << " epoch=" << epoch;
      }
    }
  }
}

TEST(SampleOrderTest, DiffersBetweenEpochsAndSeedsAndIsReproducible) {
  const int64_t w = 1000;
  const std::vector<int64_t> e0 = epoch_order(7, 0, w);
  EXPECT_EQ(e0, epoch_order(7, 0, w));
  EXPECT_NE(e0, epoch_order(7, 1, w));
  EXPECT_NE(e0, epoch_order(8, 0, w));
  std::vector<int64_t> identity(static_cast<size_t>(w));
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(e0, identity);
  // Shuffled, not merely rotated or reversed: few fixed points, neighbours far apart.
  int64_t fixed = 0, adjacent = 0;
  for (int64_t i = 0; i < w; ++i) {
    fixed += e0[static_cast<size_t>(i)] == i;
    if (i > 0) adjacent += std::abs(e0[static_cast<size_t>(i)] - e0[static_cast<size_t>(i - 1)]) == 1;
  }
  EXPECT_LT(fixed, 10);
  EXPECT_LT(adjacent, 20);
  // Two windows: both orders occur over epochs.
  int64_t swapped = 0;
  for (int64_t e = 0; e < 64; ++e) swapped += window_of_sample(3, 2 * e, 2) == 1;
  EXPECT_GT(swapped, 10);
  EXPECT_LT(swapped, 54);
}

TEST(SampleOrderTest, HugeDataSetsNeedNoMemory) {
  const int64_t w = int64_t{1} << 40;
  for (int64_t g : {int64_t{0}, int64_t{1}, w - 1, w, 5 * w + 3}) {
    const int64_t x = window_of_sample(1, g, w);
    EXPECT_GE(x, 0);
    EXPECT_LT(x, w);
    EXPECT_EQ(x, window_of_sample(1, g, w));
  }
}

}  // namespace
}  // namespace par
