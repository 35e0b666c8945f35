// The threads each rank runs by default, the thread limit, and the warning for
// oversubscribed nodes.
#include <gtest/gtest.h>

#include "launch/threads.h"
#include "tests/par_cli.h"

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

// OMP_THREAD_LIMIT caps the threads OpenMP starts whatever it is asked; OpenBLAS, told
// of more, waited for ever for the rest (`OMP_THREAD_LIMIT=1 par eval --threads 2` hung).
TEST(Threads, TheThreadLimitCapsThem) {
  CpuBudget b = budget(32, 32, 1);
  b.thread_limit = 3;
  EXPECT_EQ(threads_for(0, b), 3);
  EXPECT_EQ(threads_for(8, b), 3);
  EXPECT_EQ(threads_for(2, b), 2);
  EXPECT_EQ(thread_limit_warning(2, b), "");
  EXPECT_NE(thread_limit_warning(8, b).find("OMP_THREAD_LIMIT is 3: running 3"),
            std::string::npos) << thread_limit_warning(8, b);

  testing_util::TempDir dir;
  testing_util::write_small_model(dir.file("model.h5"));
  const std::string data = testing_util::copy_task_data(dir, 65, 8);
  const testing_util::ParRun r = testing_util::run_shell(
      dir, cat("OMP_THREAD_LIMIT=1 timeout 120 '", PAR_BINARY, "' eval --checkpoint ",
               testing_util::quote(dir.file("model.h5")), " --data ", testing_util::quote(data),
               " --threads 2"));
  EXPECT_EQ(r.rc, 0) << "124: it hung\n" << r.err;
  EXPECT_NE(r.err.find("OMP_THREAD_LIMIT is 1: running 1"), std::string::npos) << r.err;
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
