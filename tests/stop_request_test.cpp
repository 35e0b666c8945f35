// launch/stop_request.h's signal handling, in child processes (death tests): a stop signal
// is noted for the training loop to act on (a checkpoint, exit 75), and a second Ctrl-C
// half a second or more after the first ends the process at once (exit 130); a second
// SIGTERM does not (a batch system may send several, and the checkpoint must not be cut
// short).
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "launch/stop_request.h"
#include "tests/thread_communicator.h"

namespace par {
namespace {

// Rank 0's flag (--checkpoint-minutes' clock) travels with the stop check: every rank
// learns rank 0's, and no other rank's counts, so all take the same decision.
TEST(StopRequest, EveryRankLearnsRankZerosFlagAlone) {
  for (int flagged : {0, 1}) {
    testing_util::ThreadGroup group(3);
    std::vector<int> learned(3, -1), reasons(3, -1);
    const StopRequest stop;  // one per process, as in par (no signal, no time limit)
    std::vector<std::thread> ranks;
    for (int r = 0; r < 3; ++r)
      ranks.emplace_back([&, r] {
        testing_util::ThreadCommunicator world(group, r);
        const StopRequest::Agreement a = stop.agreed(world, r == flagged);
        learned[size_t(r)] = a.rank0_flag;
        reasons[size_t(r)] = a.reason;
      });
    for (auto& t : ranks) t.join();
    SCOPED_TRACE(cat("rank ", flagged, " flagged"));
    EXPECT_EQ(learned, std::vector<int>(3, flagged == 0));
    EXPECT_EQ(reasons, std::vector<int>(3, StopRequest::kNone));
  }
}

TEST(StopRequestDeathTest, ASecondCtrlCStopsAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        StopRequest stop;
        std::raise(SIGINT);
        // The first is only noted, and named.
        const std::string said = StopRequest::describe(StopRequest::kSignal);
        if (said.find("SIGINT") == std::string::npos) std::_Exit(3);
        std::raise(SIGINT);  // at once: the same key press reaching it twice, ignored
        std::fputs("one press\n", stderr);
        std::this_thread::sleep_for(std::chrono::milliseconds(600));
        std::raise(SIGINT);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(130),
      "one press\n.*par: second interrupt: stopping now, without a checkpoint");
  EXPECT_EXIT(
      {
        StopRequest stop;
        std::raise(SIGTERM);
        std::raise(SIGTERM);
        std::raise(SIGINT);  // after another signal, a first Ctrl-C is only noted
        std::fputs("still running", stderr);
        std::_Exit(7);
      },
      ::testing::ExitedWithCode(7), "still running");
}

}  // namespace
}  // namespace par
