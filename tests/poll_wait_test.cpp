// The policy of a wait that polls (core/poll_wait.h), on a clock that only moves when the
// wait pauses: it returns when the work is done, as soon as a communicator reports a
// failure, or once the timeout has passed, and does not spin for ever between looks.
#include "core/poll_wait.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace par {
namespace {

// Time moves only when the wait pauses; a yield (pause(0)) takes a microsecond.
struct FakeClock {
  double t = 100;
  int yields = 0, sleeps = 0;
  double longest = 0;
  double now() const { return t; }
  void pause(double s) {
    if (s == 0) {
      t += 1e-6;
      ++yields;
      return;
    }
    t += s;
    ++sleeps;
    longest = std::max(longest, s);
  }
};

TEST(PollWait, ReturnsWhenTheWorkIsDone) {
  FakeClock clock;
  int checks = 0;
  const WaitOutcome out = poll_wait([&] { return clock.t >= 100.5; },
                                    [&] { ++checks; return std::string(); }, 5.0, clock);
  EXPECT_EQ(out.end, WaitEnd::kDone);
  EXPECT_NEAR(out.waited, clock.t - 100, 1e-12);
  EXPECT_LT(out.waited, 0.5 + PollSchedule::kMaxPause + 1e-9);  // seen within one pause
  // It yields for the first kSpinSeconds, then sleeps, never longer than kMaxPause.
  EXPECT_NEAR(clock.yields, PollSchedule::kSpinSeconds / 1e-6, 2);
  EXPECT_GT(clock.sleeps, 0);
  EXPECT_EQ(clock.longest, PollSchedule::kMaxPause);
  // Failures are asked for at the start and then every kCheckEvery, not at every poll.
  EXPECT_GE(checks, int(0.5 / PollSchedule::kCheckEvery) - 1);
  EXPECT_LE(checks, 2 + int(0.5 / PollSchedule::kCheckEvery));
}

TEST(PollWait, AShortWaitNeverSleeps) {
  FakeClock clock;
  const WaitOutcome out = poll_wait([&] { return clock.t >= 100.05; },
                                    [] { return std::string(); }, 5.0, clock);
  EXPECT_EQ(out.end, WaitEnd::kDone);
  EXPECT_EQ(clock.sleeps, 0);
  EXPECT_NEAR(out.waited, 0.05, 2e-6);
}

TEST(PollWait, ReturnsAtOnceWhenDone) {
  FakeClock clock;
  int checks = 0;
  const WaitOutcome out = poll_wait([] { return true; }, [&] { ++checks; return std::string("x"); },
                                    5.0, clock);
  EXPECT_EQ(out.end, WaitEnd::kDone);
  EXPECT_EQ(checks, 0);  // a finished wait never asks
  EXPECT_EQ(clock.yields + clock.sleeps, 0);
}

TEST(PollWait, AFailureEndsTheWaitWithItsReason) {
  FakeClock clock;
  const WaitOutcome out = poll_wait(
      [] { return false; },
      [&] { return clock.t >= 103 ? std::string("peer 3 is gone") : std::string(); }, 60.0, clock);
  EXPECT_EQ(out.end, WaitEnd::kFailed);
  EXPECT_EQ(out.why, "peer 3 is gone");
  // Seen within one check period (plus one pause) of happening.
  EXPECT_GE(out.waited, 3.0);
  EXPECT_LE(out.waited, 3.0 + PollSchedule::kCheckEvery + PollSchedule::kMaxPause + 1e-9);
}

TEST(PollWait, GivesUpAfterTheTimeout) {
  FakeClock clock;
  const WaitOutcome out = poll_wait([] { return false; }, [] { return std::string(); }, 2.5, clock);
  EXPECT_EQ(out.end, WaitEnd::kTimedOut);
  EXPECT_GE(out.waited, 2.5);
  EXPECT_LE(out.waited, 2.5 + PollSchedule::kMaxPause + 1e-9);
}

TEST(PollWait, NoTimeoutWaitsAsLongAsItTakes) {
  FakeClock clock;
  const WaitOutcome out = poll_wait([&] { return clock.t >= 100 + 3600; },
                                    [] { return std::string(); }, 0.0, clock);
  EXPECT_EQ(out.end, WaitEnd::kDone);
  EXPECT_GE(out.waited, 3600.0);
}

}  // namespace
}  // namespace par
