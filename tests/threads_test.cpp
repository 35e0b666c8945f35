// The threads each rank runs by default, and the warning for oversubscribed nodes.
#include <gtest/gtest.h>

#include "launch/threads.h"

namespace par {
namespace {

CpuBudget budget(int node, int mask, int ranks) {
  CpuBudget b;
  b.node_cpus = node;
  b.mask_cpus = mask;
  b.local_ranks = ranks;
  return b;
}

TEST(Threads, DefaultSharesTheNodeAmongItsRanks) {
  EXPECT_EQ(threads_for(0, budget(32, 32, 1)), 32);  // one process: every CPU
  EXPECT_EQ(threads_for(0, budget(32, 32, 8)), 4);   // unbound ranks share the node
  EXPECT_EQ(threads_for(0, budget(32, 16, 8)), 4);   // bound to a socket of 16
  EXPECT_EQ(threads_for(0, budget(32, 1, 8)), 1);    // bound to one core
  EXPECT_EQ(threads_for(0, budget(32, 32, 5)), 6);   // rounds down
  EXPECT_EQ(threads_for(0, budget(2, 2, 4)), 1);     // more ranks than CPUs: still one
  EXPECT_EQ(threads_for(3, budget(2, 2, 4)), 3);     // --threads is taken as given
}

TEST(Threads, WarnsOnlyWhenOversubscribed) {
  EXPECT_EQ(oversubscription_warning(4, budget(32, 32, 8)), "");
  EXPECT_EQ(oversubscription_warning(1, budget(32, 1, 8)), "");
  const std::string node = oversubscription_warning(8, budget(32, 32, 8));
  EXPECT_NE(node.find("8 thread(s) per rank x 8 rank(s)"), std::string::npos) << node;
  EXPECT_NE(node.find("exceed its 32 CPU(s)"), std::string::npos) << node;
  EXPECT_NE(node.find("--threads at most 4"), std::string::npos) << node;
  const std::string mask = oversubscription_warning(4, budget(32, 1, 8));
  EXPECT_NE(mask.find("only 1 CPU(s)"), std::string::npos) << mask;
  // 4 ranks on 2 CPUs with one thread each: fewer threads cannot help, fewer ranks can.
  const std::string ranks = oversubscription_warning(1, budget(2, 2, 4));
  EXPECT_NE(ranks.find("Start at most 2 rank(s) per node"), std::string::npos) << ranks;
  EXPECT_EQ(ranks.find("--threads at most"), std::string::npos) << ranks;
}

}  // namespace
}  // namespace par
