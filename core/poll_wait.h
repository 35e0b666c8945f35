// Waiting for work that may never finish: a collective whose peer has failed or hangs.
//
// A blocking wait (cudaStreamSynchronize on a stream behind an NCCL collective) never
// returns when a peer is gone: NCCL's kernels spin for ever, and NCCL reports the failure
// only to whoever asks (ncclCommGetAsyncError). So the CUDA backend waits by polling:
// whether the work is done, then, every so often, whether a communicator has failed, and
// gives up after a timeout. The policy is here, apart from CUDA, so that it is tested on
// machines without a GPU (tests/poll_wait_test.cpp).
#pragma once

#include <string>

namespace par {

enum class WaitEnd { kDone, kFailed, kTimedOut };

struct WaitOutcome {
  WaitEnd end = WaitEnd::kDone;
  std::string why;  // kFailed: the failure's description
  double waited = 0;  // seconds
};

// How often the wait looks: for the first kSpinSeconds without sleeping (pause(0): yield
// the core and look again, as cudaStreamSynchronize spins), since a training step's or a
// decoding step's wait ends within them and a sleep would add its length to the step;
// then sleeping longer and longer up to kMaxPause (a step that ends during a pause pays at
// most that), so a long wait costs a core little.
// Failures are asked for every kCheckEvery.
struct PollSchedule {
  static constexpr double kSpinSeconds = 0.2, kFirstPause = 1e-5, kMaxPause = 2e-4,
                          kCheckEvery = 0.01;
};

// Polls done() until it is true. failure() returns "" while every communicator is well,
// else why one is not; it is asked once first and then every kCheckEvery. timeout <= 0:
// no limit. Clock: double now() in seconds, void pause(double seconds) (0: yield).
template <typename Done, typename Failure, typename Clock>
WaitOutcome poll_wait(Done&& done, Failure&& failure, double timeout, Clock& clock) {
  using S = PollSchedule;
  const double start = clock.now();
  double next_check = start, pause = S::kFirstPause;
  for (;;) {
    if (done()) return WaitOutcome{WaitEnd::kDone, "", clock.now() - start};
    const double now = clock.now();
    if (now >= next_check) {
      std::string why = failure();
      if (!why.empty()) return WaitOutcome{WaitEnd::kFailed, std::move(why), now - start};
      next_check = now + S::kCheckEvery;
    }
    if (timeout > 0 && now - start >= timeout)
      return WaitOutcome{WaitEnd::kTimedOut, "", now - start};
    if (now - start < S::kSpinSeconds) {
      clock.pause(0);
    } else {
      clock.pause(pause);
      pause = pause * 2 < S::kMaxPause ? pause * 2 : S::kMaxPause;
    }
  }
}

}  // namespace par
