// launch/collective_watch.h: a collective that waits longer than the timeout ends the
// process with a message naming it; collectives that finish in time, however many, do not.
#include "launch/collective_watch.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace par {
namespace {

// A group whose collectives take `delay` each.
class SlowCommunicator final : public Communicator {
 public:
  explicit SlowCommunicator(double delay) : delay_(delay) {}
  int rank() const override { return 0; }
  int size() const override { return 4; }
  void all_reduce(const void*, void*, int64_t, DataType, ReduceOp) override { pause(); }
  void reduce_scatter(const void*, void*, int64_t, DataType, ReduceOp) override { pause(); }
  void all_gather(const void*, void*, int64_t, DataType) override { pause(); }
  void broadcast(void*, int64_t, DataType, int) override { pause(); }
  void barrier() override { pause(); }

 private:
  void pause() { std::this_thread::sleep_for(std::chrono::duration<double>(delay_)); }
  double delay_;
};

TEST(CollectiveWatch, CollectivesThatFinishInTimeGoOn) {
  auto watch = std::make_shared<CollectiveWatch>(0.5, "rank 0 on host test");
  auto c = CollectiveWatch::wrap(watch, std::make_unique<SlowCommunicator>(0.01), "dp");
  float x[3] = {};
  // About 1.2 s in all, more than twice the timeout, each collective far inside it.
  for (int i = 0; i < 120; ++i) c->all_reduce(x, x, 3, DataType::kFloat32, ReduceOp::kSum);
  EXPECT_EQ(c->size(), 4);
}

TEST(CollectiveWatchDeathTest, AStuckCollectiveEndsTheRankSayingWhatItWaitedFor) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto watch = std::make_shared<CollectiveWatch>(0.3, "rank 2 on host node7");
        auto c = CollectiveWatch::wrap(watch, std::make_unique<SlowCommunicator>(30), "sp");
        double x[5] = {};
        c->all_reduce(x, x, 5, DataType::kFloat64, ReduceOp::kMax);
      },
      testing::ExitedWithCode(1),
      "par: rank 2 on host node7: all_reduce of 5 float64 over the sp group \\(4 ranks\\) has "
      "waited [0-9.]+ s for the other ranks, longer than --collective-timeout 0.3");
}

TEST(CollectiveWatch, WatchesEveryGroupOfAGridOfSeveralRanksOnly) {
  ProcessGrid one;  // one process: nothing to watch, the groups stay as they are
  Communicator* before = &*one.world();
  watch_groups(one, std::make_shared<CollectiveWatch>(0.1, ""));
  EXPECT_EQ(&*one.world(), before);
}

}  // namespace
}  // namespace par
