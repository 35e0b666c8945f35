// Which calls may have a cuDNN plan of their own under --attention auto
// (kernels/cuda/cudnn_key_counts.h): a kind of call takes its first few key counts to cuDNN
// and every later call with one of them; a new count after those goes to the blocked path,
// said once per kind, unless it comes again while a held count has come only once. No GPU
// needed.
#include <gtest/gtest.h>

#include "kernels/cuda/cudnn_key_counts.h"

namespace par {
namespace {

using cuda::KeyCountBudget;

TEST(KeyCountBudget, AKindOfCallTakesItsFirstCountsOnly) {
  KeyCountBudget budget(2);
  const KeyCountBudget::Family refill{false, 1, 16, 512, 64, false};
  bool first = true;
  EXPECT_TRUE(budget.admit(refill, 130049, &first));
  EXPECT_FALSE(first);
  EXPECT_TRUE(budget.admit(refill, 130049));  // the same count again, as training's
  EXPECT_TRUE(budget.admit(refill, 129000));
  EXPECT_FALSE(budget.admit(refill, 128000, &first));
  EXPECT_TRUE(first);  // said the first time
  EXPECT_FALSE(budget.admit(refill, 127000, &first));
  EXPECT_FALSE(first);  // and not again
  // The counts it took stay admitted.
  EXPECT_TRUE(budget.admit(refill, 130049));
  EXPECT_TRUE(budget.admit(refill, 129000));
  // Each kind counts apart: the backward, another batch, queries or head size.
  for (const KeyCountBudget::Family& other :
       {KeyCountBudget::Family{true, 1, 16, 512, 64, false},
        KeyCountBudget::Family{false, 2, 16, 512, 64, false},
        KeyCountBudget::Family{false, 1, 16, 1024, 64, false},
        KeyCountBudget::Family{false, 1, 16, 512, 128, false},
        KeyCountBudget::Family{false, 1, 16, 512, 64, true}}) {
    EXPECT_TRUE(budget.admit(other, 128000));
    EXPECT_TRUE(budget.admit(other, 127000));
    EXPECT_FALSE(budget.admit(other, 126000));
  }
}

// Two prompts' passes take the two places; the refills' count, coming again and again,
// takes one of theirs on its second call; a count that has come twice keeps its place.
TEST(KeyCountBudget, ACountThatComesAgainTakesAPlaceOfOneThatCameOnce) {
  KeyCountBudget budget(2);
  const KeyCountBudget::Family f{false, 1, 16, 512, 64, false};
  EXPECT_TRUE(budget.admit(f, 1000));   // the first prompt's pass
  EXPECT_TRUE(budget.admit(f, 2000));   // the second's
  EXPECT_FALSE(budget.admit(f, 5000));  // a refill: new
  EXPECT_TRUE(budget.admit(f, 5000));   // and again: in place of a prompt's count
  EXPECT_TRUE(budget.admit(f, 5000));
  EXPECT_FALSE(budget.admit(f, 6000));
  EXPECT_TRUE(budget.admit(f, 6000));   // the other prompt's place
  EXPECT_FALSE(budget.admit(f, 1000));  // both prompts' counts are out now
  EXPECT_FALSE(budget.admit(f, 2000));
  // No place left that a count came to once: 5000 (three calls) and 6000 (two) stay.
  EXPECT_FALSE(budget.admit(f, 7000));
  EXPECT_FALSE(budget.admit(f, 7000));
  EXPECT_TRUE(budget.admit(f, 5000));
  EXPECT_TRUE(budget.admit(f, 6000));
}

TEST(KeyCountBudget, DefaultsToTwoCounts) {
  KeyCountBudget budget;
  EXPECT_EQ(budget.max_counts(), 2u);
  const KeyCountBudget::Family f{false, 1, 2, 8, 32, false};
  EXPECT_TRUE(budget.admit(f, 1));
  EXPECT_TRUE(budget.admit(f, 2));
  EXPECT_FALSE(budget.admit(f, 3));
}

}  // namespace
}  // namespace par
