#include "launch/stop_request.h"

#include <glog/logging.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <ctime>

#include "core/error.h"
#include "data/checked_file.h"

namespace par {

namespace {

// A signal handler can only talk through a global flag; this is the one place par keeps
// process-wide state, and only the handler writes it.
volatile std::sig_atomic_t g_signal = 0;

// When the first SIGINT came (CLOCK_MONOTONIC); only the handler touches it, and SIGINT is
// blocked while its handler runs.
struct timespec g_first_interrupt {};

extern "C" void on_stop_signal(int sig) {
  // A second Ctrl-C ends the process at once: the user does not want to wait for the
  // checkpoint (the last complete one stays; a half-written one is a .tmp directory that
  // the next start removes). Only SIGINT: a batch system's repeated SIGTERM must not cut
  // the checkpoint short. Not within half a second of the first: one key press can reach
  // a process twice (its own, and a wrapper's that forwards it).
  struct timespec now {};
  clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe
  const double since = double(now.tv_sec - g_first_interrupt.tv_sec) +
                       1e-9 * double(now.tv_nsec - g_first_interrupt.tv_nsec);
  if (sig == SIGINT && g_signal != SIGINT) g_first_interrupt = now;
  if (sig == SIGINT && g_signal == SIGINT && since >= 0.5) {
    static const char kMessage[] =
        "par: second interrupt: stopping now, without a checkpoint (the last complete one "
        "stays)\n";
    const ssize_t ignored = write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    (void)ignored;
    _exit(130);
  }
  g_signal = sig;
}

constexpr int kStopSignals[] = {SIGUSR1, SIGTERM, SIGINT};
struct sigaction g_previous[3];

}  // namespace

StopRequest::StopRequest() : start_(std::chrono::steady_clock::now()) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // slow system calls continue; the loop polls the flag
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &sa, &g_previous[i]);
}

StopRequest::~StopRequest() {
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &g_previous[i], nullptr);
}

StopRequest::Agreement StopRequest::agreed(Communicator& world, bool flag) const {
  const bool root = world.rank() == 0;
  int64_t said[2] = {g_signal ? kSignal : kNone, root && flag};
  if (root && max_seconds_ > 0 &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() >=
          max_seconds_)
    said[0] = std::max<int64_t>(said[0], kTimeLimit);
  world.all_reduce(said, 2, ReduceOp::kMax);
  return {Reason(said[0]), said[1] != 0};
}

const char* StopRequest::describe(Reason r) {
  switch (r) {
    case kSignal:
      // The signal this process got, where it got one (under mpirun another rank may have).
      switch (g_signal) {
        case SIGINT:
          return "a stop signal (SIGINT; a second one stops at once, without a checkpoint)";
        case SIGTERM: return "a stop signal (SIGTERM)";
        case SIGUSR1: return "a stop signal (SIGUSR1)";
        default: return "a stop signal (SIGUSR1/SIGTERM/SIGINT) on another rank";
      }
    case kTimeLimit: return "the --max-minutes limit";
    default: return "nothing";
  }
}

void StopRequest::record_stop(int64_t step) {
  const char* path = std::getenv(kStopFileVariable);
  if (!path || !*path) return;
  try {
    write_file(path, cat(kExitRequeue, " step ", step, "\n"));
  } catch (const UserError& e) {
    LOG(WARNING) << "$" << kStopFileVariable << ": " << e.what()
                 << " (the launcher may not learn that this run stopped with a checkpoint)";
  }
}

}  // namespace par
